"""Re-clustering on Ray: one Ray task per chunk of items, each running the ONE builder.

Serving (:class:`RayBackend`, ``ServeConfig.recluster_backend = "ray"``): the full cycle's
changed items are split into chunks of ``items_per_task`` items; each chunk is a Ray task
that runs :func:`ralm.serve.recluster.build_update` (read the chunk's seeds with one
``seeds_many`` call, embed them, :func:`ralm.lookalike.index_builder.index_items`), the
same function the single-process backend runs. What travels:

* the stage-2 weights (state dict + config, :class:`ModelSpec`) and the user embedder
  (the known-user table) are ``ray.put`` once per backend and shared by every task
  (workers cache what they fetched, keyed by the object id);
* each task gets its item ids, its items' previous centroids (warm start) and the store's
  *location* (the SQLite file path or the Redis URL); it opens the store itself and reads
  its items' seeds by id. No seed array is pickled by the driver.

The driver merges the chunks' updates (:meth:`IndexUpdate.concat`, in item order) and the
re-clustering job publishes them exactly as the local path does (same holder, same
``SeedIndex.updated``, same persistence). A task that raises is retried ``max_retries``
times (``retry_exceptions``; a dead worker is retried by Ray too); when retries run out the
cycle raises, nothing is published, no item is marked clustered, and the previous version
keeps serving (the job records ``last_error``).

Training / evaluation (:func:`ray_index_items`, :func:`ray_cluster_for_model`): drop-in
forms of ``index_items`` / ``cluster_for_model``; the seed embeddings, the item -> seed CSR
and the warm start are ``ray.put`` once and every task slices its item range out of the
object store (zero-copy numpy).

Equality with the single process: with either k-means backend (faiss, torch) every item's
k-means seed comes from (seed, item id) (``index_items``) or (seed, item position)
(``cluster_for_model``), so any chunking gives the same arrays; the "average" variant is
chunk-independent too.

Test hook: ``RALM_RAY_FAULT`` in the driver's environment makes tasks fail: ``once:DIR``
raises in the first attempt of every chunk (markers in DIR), ``crash-once:DIR`` kills the
worker process in the first attempt, ``always`` raises in every attempt, ``sleep:SECONDS``
makes every task hang that long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.errors import ConfigError, RalmError
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.index_builder import Prev, cluster_for_model, index_items
from ralm.lookalike.index_table import ROW_ARRAYS, IndexUpdate, SeedIndex
from ralm.lookalike.model import LookalikeModel
from ralm.serve.recluster import (
    MAX_SEEDS_PER_GROUP,
    BuildJob,
    build_update,
    seed_groups,
)
from ralm.serve.seed_store import SeedStore
from ralm.serve.store import SQLiteSeedStore

log = logging.getLogger(__name__)

RAY_FAULT_ENV = "RALM_RAY_FAULT"
DEFAULT_ITEMS_PER_TASK = 2048
_WORKER_CACHE_SIZE = 4


class RayTaskFailed(RalmError):
    """A Ray re-clustering task failed after its retries (the cycle publishes nothing)."""


class InjectedFault(RuntimeError):
    """Raised by the ``RALM_RAY_FAULT`` test hook."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is in the dev extra
        raise ConfigError("recluster backend 'ray' needs Ray: pip install 'ralm[ray]'") from e
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray (``address``) or start a local runtime, unless already connected.

    Returns True when this call started it (the caller then owns ``ray.shutdown``).
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    log.info("ray runtime: %s", ray.cluster_resources())
    return True


# ---- what every task shares ----------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The stage-2 weights as they travel to the workers (put once in the object store).

    Args:
        config: ``LookalikeConfig.model_dump()``.
        state: the state dict as numpy arrays (zero-copy out of the object store).
    """

    config: dict[str, Any]
    state: dict[str, np.ndarray]

    @classmethod
    def of(cls, model: LookalikeModel) -> ModelSpec:
        state = {n: t.detach().cpu().numpy().copy() for n, t in model.state_dict().items()}
        return cls(config=model.config.model_dump(mode="json"), state=state)

    def build(self) -> LookalikeModel:
        """The model these weights describe (eval mode)."""
        model = LookalikeModel(LookalikeConfig(**self.config))
        model.load_state_dict({n: torch.from_numpy(np.array(a)) for n, a in self.state.items()})
        return model.eval()


_cache: OrderedDict[str, Any] = OrderedDict()  # per worker process: object id -> value


def _fetch(ref: Any) -> Any:
    """``ray.get(ref)``; objects that cost work to rebuild (the model, the embedder, an
    index) are kept per worker process, keyed by the object id. Arrays are not kept: they
    are read zero-copy from the object store on every call, so nothing stays pinned."""
    key = ref.hex()
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    value = _ray().get(ref)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, ModelSpec):
        value = value.build()
    _cache[key] = value
    while len(_cache) > _WORKER_CACHE_SIZE:
        _cache.popitem(last=False)
    return value


def _fault(fault: str | None, key: str) -> None:
    """The ``RALM_RAY_FAULT`` hook (see the module docstring)."""
    if not fault:
        return
    if fault == "always":
        raise InjectedFault(f"injected failure of task {key}")
    mode, _, folder = fault.partition(":")
    if mode == "sleep":  # a task that hangs (the cycle's timeout must end it)
        time.sleep(float(folder))
        return
    if mode not in ("once", "crash-once") or not folder:
        raise ValueError(f"{RAY_FAULT_ENV}: expected always, once:DIR, crash-once:DIR or sleep:S")
    try:  # the first attempt of this task creates the marker and fails
        fd = os.open(Path(folder) / f"{key}.failed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if mode == "crash-once":
        os._exit(1)
    raise InjectedFault(f"injected first-attempt failure of task {key}")


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


# ---- the task bodies (plain functions; wrapped with ray.remote on first use) -------------
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
) -> tuple[IndexUpdate, int]:
    """One serving chunk: open the store, :func:`build_update` over ``item_ids``."""
    _fault(fault, key)
    model, embedder = _fetch(shared[0]), _fetch(shared[1])
    torch.set_num_threads(1)
    store = location.open()
    try:
        job = BuildJob(store, embedder, model, item_ids, [0] * len(item_ids), prev, seed,
                       min_seeds, limit)  # fmt: skip
        return build_update(job, clustered_at)
    finally:
        store.close()


def _index_chunk(
    shared: list[Any], lo: int, hi: int, prev: list[Any] | None, kw: dict[str, Any],
    fault: str | None, key: str,
) -> IndexUpdate:  # fmt: skip
    """One training chunk: ``index_items`` over items ``lo:hi`` of the shared arrays."""
    _fault(fault, key)
    model, seeds, offsets, rows, ids = (_fetch(r) for r in shared)
    torch.set_num_threads(1)
    o = np.asarray(offsets[lo : hi + 1], dtype=np.int64)
    csr = (o - o[0], np.asarray(rows[o[0] : o[-1]], dtype=np.int64))  # rows of the shared seeds
    p = None if prev is None else _fetch(prev[0])
    if p is not None and not isinstance(p, SeedIndex | IndexUpdate):  # positional
        p = _positional(p, lo, hi)
    return index_items(model, seeds, csr, p, item_ids=ids[lo:hi], **kw)


def _cluster_chunk(
    shared: list[Any], lo: int, hi: int, init: list[Any] | None, k: int | None, seed: int,
    fault: str | None, key: str,
) -> SeedClusters:  # fmt: skip
    """One between-epoch chunk: ``cluster_for_model`` over items ``lo:hi`` (item i keeps
    its k-means seed ``seed + i``)."""
    _fault(fault, key)
    model, emb, offsets = (_fetch(r) for r in shared)
    torch.set_num_threads(1)
    o = np.asarray(offsets[lo : hi + 1], dtype=np.int64)
    x = emb[o[0] : o[-1]]  # (S_chunk, h)
    start = None if init is None else _positional(_fetch(init[0]), lo, hi)
    seeds_of = seed + np.arange(lo, hi, dtype=np.int64)
    return cluster_for_model(model, x, o - o[0], k, start, seed, item_seeds=seeds_of)


def _positional(p: Any, lo: int, hi: int) -> Any:
    if isinstance(p, SeedClusters):
        return SeedClusters(
            p.centroids[lo:hi], p.mask[lo:hi], p.sizes[lo:hi], np.zeros(0, dtype=np.int64)
        )
    return np.asarray(p)[lo:hi]


_remote: dict[str, Any] = {}


def _task(name: str) -> Any:
    if name not in _remote:
        body = {"serve": _serve_chunk, "index": _index_chunk, "cluster": _cluster_chunk}[name]
        _remote[name] = _ray().remote(body)
    return _remote[name]


def _gather(refs: list[Any], timeout_s: float | None, what: str) -> list[Any]:
    """Results of every task, in order; on a failure or timeout the others are cancelled."""
    ray = _ray()
    try:
        return list(ray.get(refs, timeout=timeout_s))
    except Exception as e:
        for r in refs:
            with contextlib.suppress(Exception):  # already finished or gone
                ray.cancel(r)
        raise RayTaskFailed(f"{what}: a Ray task failed ({type(e).__name__}: {e})") from e


def _options(max_retries: int) -> dict[str, Any]:
    return {"max_retries": max_retries, "retry_exceptions": True, "num_cpus": 1}


# ---- serving ---------------------------------------------------------------------------
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
        _ray()  # fail at start-up, not at the first cycle, when Ray is not installed
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
        ray = _ray()
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
        task = _task("serve").options(**_options(self.max_retries))
        pending = [
            task.remote(refs, location, ids[c], prev_rows(job.prev, ids[c]),
                        job.seed, job.min_seeds, job.limit, when, fault, f"{token}-{n}")
            for n, c in enumerate(chunks)
        ]  # fmt: skip
        self.last_tasks = len(pending)
        got = _gather(pending, self.timeout_s, f"re-clustering {len(ids)} items")
        return IndexUpdate.concat([u for u, _ in got]), sum(n for _, n in got)

    def close(self) -> None:
        """Drop the shared refs; shut Ray down if this backend started it."""
        self._shared = None
        if self._started:
            _ray().shutdown()
            self._started = False


# ---- training / evaluation -------------------------------------------------------------
def _ranges(n_items: int, items_per_task: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + items_per_task, n_items)) for lo in range(0, n_items, items_per_task)]


def ray_index_items(
    model: LookalikeModel,
    seeds: np.ndarray,
    csr: tuple[np.ndarray, np.ndarray],
    prev: Prev = None,
    *,
    item_ids: Sequence[str] | np.ndarray | None = None,
    transformed: bool = False,
    k: int | None = None,
    seed: int = 0,
    min_seeds: int = 1,
    clustered_at: float | None = None,
    items_per_task: int = DEFAULT_ITEMS_PER_TASK,
    max_retries: int = 2,
    timeout_s: float | None = None,
) -> IndexUpdate:
    """:func:`ralm.lookalike.index_builder.index_items` with one Ray task per item range.

    The arguments are ``index_items``'s (same meaning, same result with either k-means
    backend or the "average" variant), plus ``items_per_task``, ``max_retries`` and ``timeout_s``.
    ``seeds``, the CSR, the ids and ``prev`` are put in the object store once.
    """
    ray = _ray()
    ensure_ray()
    offsets, rows = (np.asarray(a, dtype=np.int64) for a in csr)
    n_items = offsets.size - 1
    ids = np.asarray(
        [str(i) for i in range(n_items)] if item_ids is None else list(item_ids), dtype=str
    )
    if ids.size != n_items:
        raise ValueError(f"{ids.size} item ids for {n_items} items")
    shared = [ray.put(ModelSpec.of(model)), ray.put(np.ascontiguousarray(seeds)),
              ray.put(offsets), ray.put(rows), ray.put(ids)]  # fmt: skip
    prev_ref = None if prev is None else [ray.put(prev)]
    kw = {"transformed": transformed, "k": k, "seed": seed, "min_seeds": min_seeds,
          "clustered_at": time.time() if clustered_at is None else float(clustered_at)}  # fmt: skip
    fault, token = os.environ.get(RAY_FAULT_ENV), uuid.uuid4().hex
    task = _task("index").options(**_options(max_retries))
    pending = [
        task.remote(shared, lo, hi, prev_ref, kw, fault, f"{token}-{lo}")
        for lo, hi in _ranges(n_items, items_per_task)
    ]
    if not pending:
        return index_items(model, seeds, csr, prev, item_ids=ids, **kw)  # type: ignore[arg-type]
    parts = _gather(pending, timeout_s, f"indexing {n_items} items")
    return IndexUpdate.concat(parts)


def ray_cluster_for_model(
    model: LookalikeModel,
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int | None = None,
    init: SeedIndex | SeedClusters | np.ndarray | None = None,
    seed: int = 0,
    *,
    items_per_task: int = DEFAULT_ITEMS_PER_TASK,
    max_retries: int = 2,
    timeout_s: float | None = None,
) -> SeedClusters:
    """:func:`ralm.lookalike.index_builder.cluster_for_model` (training's between-epoch
    clustering) with one Ray task per item range; equal to it with either backend.

    ``seed_emb`` (S, h) transformed seeds, the offsets and the warm start are put in the
    object store once; each task clusters its items' rows.
    """
    ray = _ray()
    ensure_ray()
    offsets = np.asarray(item_offsets, dtype=np.int64)
    n_items = offsets.size - 1
    kk = model.config.k if k is None else k
    start: SeedClusters | np.ndarray | None
    if isinstance(init, SeedIndex):  # positional, as cluster_for_model reads it
        start = (
            SeedClusters(init.centroids, init.mask, init.sizes, np.zeros(0, dtype=np.int64))
            if init.k == kk
            else None
        )
    else:
        start = init
    shared = [ray.put(ModelSpec.of(model)), ray.put(np.ascontiguousarray(seed_emb)),
              ray.put(offsets)]  # fmt: skip
    init_ref = None if start is None else [ray.put(start)]
    fault, token = os.environ.get(RAY_FAULT_ENV), uuid.uuid4().hex
    task = _task("cluster").options(**_options(max_retries))
    t0 = time.perf_counter()
    pending = [
        task.remote(shared, lo, hi, init_ref, k, seed, fault, f"{token}-{lo}")
        for lo, hi in _ranges(n_items, items_per_task)
    ]
    if not pending:
        return cluster_for_model(model, seed_emb, offsets, k, init, seed)
    parts: list[SeedClusters] = _gather(pending, timeout_s, f"clustering {n_items} items")
    out = SeedClusters(
        centroids=np.concatenate([p.centroids for p in parts]),
        mask=np.concatenate([p.mask for p in parts]),
        sizes=np.concatenate([p.sizes for p in parts]),
        assign=np.concatenate([p.assign for p in parts]),
        inertia=sum(p.inertia for p in parts),
    )
    return replace(out, seconds=time.perf_counter() - t0)
