"""The serving re-clustering job's Ray backend: one Ray task per chunk of items.

:class:`RayBackend` (``ServeConfig.recluster_backend = "ray"``): the full cycle's changed
items are split into chunks of ``items_per_task`` items (:func:`item_chunks`); each chunk
is a Ray task that runs :func:`ralm.serve.recluster.build_update` (read the chunk's seeds
with one ``seeds_many`` call, embed them, :func:`ralm.lookalike.index_builder.index_items`),
the same function the single-process backend runs. What travels:

* the stage-2 weights (state dict + config, :class:`~ralm.distributed.ray_runtime.ModelSpec`)
  and the user embedder (the known-user table) are ``ray.put`` once per backend and shared
  by every task (workers cache what they fetched, keyed by the object id);
* each task gets its item ids, its items' previous centroids (warm start,
  :func:`prev_rows`) and the store's *location* (:class:`StoreLocation`: the SQLite file
  path or the Redis URL); it opens the store itself and reads its items' seeds by id. No
  seed array is pickled by the driver.

The driver merges the chunks' updates (:meth:`IndexUpdate.concat`, in item order) and the
re-clustering job publishes them exactly as the local path does (same holder, same
``SeedIndex.updated``, same persistence). A task that raises is retried ``max_retries``
times (``retry_exceptions``; a dead worker is retried by Ray too); when retries run out the
cycle raises, nothing is published, no item is marked clustered, and the previous version
keeps serving (the job records ``last_error``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.distributed.ray_runtime import (
    DEFAULT_ITEMS_PER_TASK,
    RAY_FAULT_ENV,
    ModelSpec,
    ensure_ray,
    fetch,
    gather,
    inject_fault,
    ray_module,
    remote,
    task_options,
)
from ralm.errors import ConfigError
from ralm.lookalike.index_table import ROW_ARRAYS, IndexUpdate, SeedIndex
from ralm.serve.recluster import (
    MAX_SEEDS_PER_GROUP,
    BuildJob,
    build_update,
    seed_groups,
)
from ralm.serve.seed_store import SeedStore
from ralm.serve.store import SQLiteSeedStore


def item_chunks(
    n_seeds: Sequence[int], items_per_task: int, max_seeds: int, seed_cap: int
) -> list[slice]:
    """Consecutive chunks of at most ``items_per_task`` items and about ``seed_cap`` seeds.

    Args:
        n_seeds: stored seeds of each item.
        items_per_task: items per chunk.
        max_seeds: the store's N (an item never yields more).
        seed_cap: seeds per chunk (bounds a task's memory).
    """
    out = []
    for g in seed_groups(n_seeds, max_seeds, seed_cap):
        starts = range(g.start, g.stop, items_per_task)
        out += [slice(lo, min(lo + items_per_task, g.stop)) for lo in starts]
    return out


def prev_rows(prev: SeedIndex | IndexUpdate | None, item_ids: Sequence[str]) -> IndexUpdate | None:
    """The rows of ``prev`` for these items (a task's warm start, matched by id), or None."""
    if prev is None or prev.n_items == 0:
        return None
    row_of = (
        prev.row_of
        if isinstance(prev, SeedIndex)
        else {str(i): r for r, i in enumerate(prev.item_ids.tolist())}
    )
    found = [(i, row_of[i]) for i in item_ids if i in row_of]
    if not found:
        return None
    rows = np.asarray([r for _, r in found], dtype=np.int64)
    ids = np.asarray([i for i, _ in found], dtype=str)
    if isinstance(prev, SeedIndex):
        got = prev.gather(rows)
    else:
        got = {n: getattr(prev, n)[rows] for n in ROW_ARRAYS}
    return IndexUpdate(item_ids=ids, **got)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StoreLocation:
    """How a task reopens the service's seed store.

    Args:
        kind: "sqlite" or "redis".
        location: the SQLite file (absolute) or the Redis URL.
        max_seeds: the store's N.
        prefix: Redis key prefix.
    """

    kind: str
    location: str
    max_seeds: int
    prefix: str = ""

    @classmethod
    def of(cls, store: SeedStore) -> StoreLocation:
        url, path = getattr(store, "url", None), getattr(store, "path", None)
        if isinstance(url, str):
            return cls("redis", url, store.max_seeds, str(getattr(store, "prefix", "ralm:")))
        if path is not None:
            return cls("sqlite", str(Path(path).resolve()), store.max_seeds)
        raise ConfigError(
            f"recluster backend 'ray': a {type(store).__name__} cannot be reopened by a Ray "
            "task (use the SQLite store or a redis:// store)"
        )

    def open(self) -> SeedStore:
        if self.kind == "redis":
            from ralm.serve.redis_store import RedisSeedStore

            return RedisSeedStore(self.location, max_seeds=self.max_seeds, prefix=self.prefix)
        return SQLiteSeedStore(self.location, max_seeds=self.max_seeds)


def _serve_chunk(
    shared: list[Any],
    location: StoreLocation,
    item_ids: list[str],
    prev: IndexUpdate | None,
    seed: int,
    min_seeds: int,
    limit: int | None,
    clustered_at: float,
    fault: str | None,
    key: str,
    first_seen: list[float] | None = None,
) -> tuple[IndexUpdate, int]:
    """One serving chunk: open the store, :func:`build_update` over ``item_ids``."""
    inject_fault(fault, key)
    model, embedder = fetch(shared[0]), fetch(shared[1])
    torch.set_num_threads(1)
    store = location.open()
    try:
        job = BuildJob(store, embedder, model, item_ids, [0] * len(item_ids), prev, seed,
                       min_seeds, limit, first_seen)  # fmt: skip
        return build_update(job, clustered_at)
    finally:
        store.close()


class RayBackend:
    """The re-clustering job's Ray backend (see the module docstring).

    Args:
        address: Ray cluster to join; None starts a local runtime on first use (unless
            this process is already connected, e.g. by ``ray.init`` of the caller).
        items_per_task: items per task.
        max_retries: retries of a failed task (exceptions and dead workers).
        timeout_s: a cycle taking longer fails (None = no limit).
        num_cpus: CPUs of a local runtime this backend starts (None = all).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        items_per_task: int = DEFAULT_ITEMS_PER_TASK,
        max_retries: int = 2,
        timeout_s: float | None = None,
        num_cpus: int | None = None,
    ) -> None:
        if items_per_task < 1:
            raise ValueError(f"items_per_task must be >= 1, got {items_per_task}")
        ray_module()  # fail at start-up, not at the first cycle, when Ray is not installed
        self.address = address
        self.items_per_task = int(items_per_task)
        self.max_retries = int(max_retries)
        self.timeout_s = timeout_s
        self.num_cpus = num_cpus
        self._started = False
        self._shared: tuple[Any, Any, list[Any]] | None = None  # (scorer, embedder, refs)
        self.last_tasks = 0

    def _refs(self, job: BuildJob) -> list[Any]:
        """Object refs of the weights and the embedder, put once per (scorer, embedder)."""
        if self._shared is not None:
            scorer, embedder, refs = self._shared
            if scorer is job.scorer and embedder is job.embedder:
                return refs
        ray = ray_module()
        try:
            refs = [ray.put(ModelSpec.of(job.scorer)), ray.put(job.embedder)]
        except Exception as e:
            raise ConfigError(
                f"recluster backend 'ray': the user embedder cannot be sent to Ray tasks ({e})"
            ) from e
        self._shared = (job.scorer, job.embedder, refs)
        return refs

    def build(self, job: BuildJob) -> tuple[IndexUpdate, int]:
        """The update of ``job.item_ids``: one task per chunk, merged in item order."""
        self._started |= ensure_ray(self.address, self.num_cpus)
        ids = list(job.item_ids)
        if not ids:
            return build_update(job)  # an empty update of the right shapes
        refs = self._refs(job)
        location = StoreLocation.of(job.store)
        chunks = item_chunks(
            job.n_seeds, self.items_per_task, job.store.max_seeds, MAX_SEEDS_PER_GROUP
        )
        fault, token, when = os.environ.get(RAY_FAULT_ENV), uuid.uuid4().hex, time.time()
        task = remote(_serve_chunk).options(**task_options(self.max_retries))
        first = None if job.first_seen is None else list(job.first_seen)
        pending = [
            task.remote(refs, location, ids[c], prev_rows(job.prev, ids[c]),
                        job.seed, job.min_seeds, job.limit, when, fault, f"{token}-{n}",
                        None if first is None else first[c])
            for n, c in enumerate(chunks)
        ]  # fmt: skip
        self.last_tasks = len(pending)
        got = gather(pending, self.timeout_s, f"re-clustering {len(ids)} items")
        return IndexUpdate.concat([u for u, _ in got]), sum(n for _, n in got)

    def close(self) -> None:
        """Drop the shared refs; shut Ray down if this backend started it."""
        self._shared = None
        if self._started:
            ray_module().shutdown()
            self._started = False
