"""Open a seed store by location: a ``redis://`` URL (shared by replicas) or a SQLite file."""

from __future__ import annotations

from pathlib import Path

from ralm.serve.seed_store import SeedStore


def open_seed_store(
    location: str | Path, max_seeds: int = 3_000_000, synchronous: str = "FULL"
) -> SeedStore:
    """Open the store at ``location``.

    Args:
        location: ``redis://host:port/db`` (Redis, shared by replicas) or a SQLite file.
        max_seeds: N, distinct clickers kept per item.
        synchronous: SQLite only: ``FULL``, ``NORMAL`` or ``EXTRA``.
    """
    loc = str(location)
    if loc.startswith(("redis://", "rediss://", "unix://")):
        from ralm.serve.redis_store import RedisSeedStore

        return RedisSeedStore(loc, max_seeds=max_seeds)
    from ralm.serve.store import SQLiteSeedStore

    return SQLiteSeedStore(Path(location), max_seeds=max_seeds, synchronous=synchronous)
