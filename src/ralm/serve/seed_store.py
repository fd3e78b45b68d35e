"""The seed-store interface: what the service and the re-clustering job need from storage.

Per item the store keeps its most recent ``max_seeds`` distinct clickers. Every stored
event gets a sequence number ``seq`` (one counter per store, increasing, never reused);
recency is event time ``ts``, then ``seq``. Rules shared by every implementation:

- a click newer than the user's stored seed on the item refreshes it (new ``ts`` and
  ``seq``); an older or equal one changes nothing, so re-sending the same
  ``(user, item, ts)`` is idempotent (no new seq, no ``changed_seq`` move);
- after a write, items over ``max_seeds`` lose their oldest seeds;
- an item *changed* in a write when one of the write's events survived the trim; its
  ``changed_seq`` is then the highest ``seq`` among its stored seeds. ``changed_seq >
  clustered_seq`` marks an item whose seeds changed since its last published clustering;
- ``clicks_since(w)`` returns the stored seeds with ``seq > w`` in seq order (a refreshed
  seed once, with its newest event; trimmed seeds not at all).

Two implementations satisfy it: :class:`ralm.serve.store.SQLiteSeedStore` (embedded, the
zero-set-up default) and :class:`ralm.serve.redis_store.RedisSeedStore` for several
replicas; :func:`open_seed_store` picks one from a location. One contract suite
(``tests/serve/test_store_contract.py``) runs against every implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Click:
    """One click event.

    Args:
        user_id: raw user id.
        item_id: raw item id (created on its first click).
        ts: event time, unix seconds.
    """

    user_id: str
    item_id: str
    ts: float


@dataclass(frozen=True)
class ItemState:
    """What the store knows about one item."""

    item_id: str
    n_seeds: int
    first_seen: float
    last_click: float
    changed_seq: int
    clustered_seq: int


@runtime_checkable
class SeedStore(Protocol):
    """Durable per-item seed sets (see the module docstring for the semantics)."""

    max_seeds: int

    # ---- writes ----------------------------------------------------------------------
    def add_clicks(self, clicks: Sequence[Click]) -> int:
        """Store clicks durably in one atomic step; returns the number of new seeds kept."""
        ...

    def bulk_import(self, clicks: Iterable[tuple[str, str, float]]) -> int:
        """Load historical (user_id, item_id, ts) clicks; returns seed rows afterwards."""
        ...

    def mark_clustered(self, covered: Mapping[str, int]) -> None:
        """Record, per item, the ``changed_seq`` that a published clustering covered."""
        ...

    def mark_all_changed(self) -> None:
        """Make every item pending for the next full cycle."""
        ...

    def put_user_features(self, user_id: str, features: Mapping[str, Any]) -> None:
        """Remember the raw features of a user first seen online."""
        ...

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` durably."""
        ...

    # ---- reads -----------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any: ...

    def item(self, item_id: str) -> ItemState | None:
        """State of one item, or None if it was never clicked."""
        ...

    def items(self, changed_only: bool = False) -> list[ItemState]:
        """Every item (or those whose seeds changed since their last clustering)."""
        ...

    def seeds(self, item_id: str, limit: int | None = None) -> list[str]:
        """User ids of one item's seeds, most recent first (at most ``limit``)."""
        ...

    def seeds_many(self, item_ids: Sequence[str], limit: int | None = None) -> dict[str, list[str]]:
        """Seeds of many items in one call (most recent first); unknown items map to []."""
        ...

    def clicks_since(self, watermark: int, limit: int = 100_000) -> tuple[list[Click], int]:
        """Seed events stored after ``watermark`` (a sequence number; 0 = from the start),
        oldest first, at most ``limit``; returns them with the new watermark."""
        ...

    def items_of_user(self, user_id: str, limit: int = 100_000) -> list[str]:
        """Items the user clicked (as stored seeds)."""
        ...

    def user_features(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Raw features stored for these users (absent users are left out)."""
        ...

    def n_items(self) -> int: ...

    def n_seed_rows(self) -> int: ...

    def close(self) -> None: ...


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
