"""The re-clustering job (paper Fig. 2: "clusters recomputed every 5 minutes").

A full cycle re-clusters only the items whose seeds changed since their last published
clustering: it reads their seeds with one batch call (``store.seeds_many``), embeds them,
and calls stage 2's builder :func:`ralm.lookalike.index_builder.index_items` (warm-started
from the current index by item id; the model's variant and k-means backend) over chunks
of at most ``MAX_SEEDS_PER_GROUP`` seeds, then publishes the update as a new index version
(:meth:`SeedIndex.updated`: changed chunks only). This module does I/O and scheduling only;
the unit of work, :func:`build_update` (``index_items`` over a chunk of items), is a pure
function of the store's seeds, the model and the previous centroids. Where the full cycle
runs it is a :class:`BuilderBackend`: :class:`LocalBackend` (this thread) or the Ray backend
(:class:`ralm.distributed.ray_index.RayBackend`, one Ray task per chunk of items), chosen
by ``ServeConfig.recluster_backend`` (:func:`ralm.serve.backends.make_backend`);
publishing is the same for both.

The fast path (every few seconds) makes items that are not servable yet but have a
handful of seeds servable at once: their most recent seeds become the centroids (stage 2's
clustering keeps <= k seeds as centroids without k-means); the next full cycle
re-clusters them properly. One background thread runs both, so publications never race.
With replicas only the leader runs them, and a cycle publishes only while the shared
pointer still names the version it named when the cycle began (``published_version`` /
``commit``): a cycle that ran while another leader published is refused and redone, so it
never drops what that version added (issue 13). A full cycle refused that way is retried
soon, on the newest version (at once, then after a doubling back-off; at most
``FULL_RETRIES`` times in a row, then the regular period): its items would otherwise wait
a whole period more.

Servable rule: ``n >= min_seeds``, or ``fast_path and n >= fast_path_min_seeds``, with n
the number of seeds the service could embed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from ralm.common.progress import progress_enabled
from ralm.common.threads import inherit_threads
from ralm.lookalike.index_builder import index_items
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex
from ralm.serve.config import ServeConfig
from ralm.serve.index_holder import IndexHolder
from ralm.serve.metrics import ServiceMetrics
from ralm.serve.runtime import ServingModel, UserEmbedder
from ralm.serve.seed_store import ItemState, SeedStore

log = logging.getLogger(__name__)

MAX_SEEDS_PER_GROUP = 1_000_000  # seeds embedded at once (bounds memory of a cycle)
FAST_PATH_MAX_ITEMS = 2_000  # items handled by one fast-path tick
FULL_RETRIES = 3  # full cycles refused in a row (the pointer moved) retried before the period
FULL_RETRY_DELAY_S = 1.0  # back-off before the 2nd retry (doubled after; the 1st is at once)


def min_servable_seeds(config: ServeConfig) -> int:
    """Embeddable seeds an item needs to be servable (the rule of the module docstring)."""
    if config.fast_path:
        return min(config.min_seeds, config.fast_path_min_seeds)
    return config.min_seeds


@dataclass(frozen=True)
class BuildJob:
    """The items of one full (or fast) cycle and everything their update depends on.

    Args:
        store: the seed store the seeds are read from (by item id).
        embedder: seed users -> universal embeddings.
        scorer: the stage-2 model (transform, clustering settings, global attention).
        item_ids: items to (re-)cluster, in order.
        n_seeds: stored seeds of each item (to size groups; the store is re-read).
        prev: the index to warm-start from by item id (None = cold).
        seed: k-means seed.
        min_seeds: embeddable seeds an item needs to be servable.
        limit: most recent seeds used per item (None = all stored).
        first_seen: the store's first-click time of each item (an item ``prev`` holds
            keeps the earlier time its row recorded); None = not known.
    """

    store: SeedStore
    embedder: UserEmbedder
    scorer: LookalikeModel
    item_ids: Sequence[str]
    n_seeds: Sequence[int]
    prev: SeedIndex | IndexUpdate | None
    seed: int
    min_seeds: int
    limit: int | None = None
    first_seen: Sequence[float] | None = None


class BuilderBackend(Protocol):
    """Where the full cycle's unit of work runs (this process, or Ray tasks)."""

    name: str

    def build(self, job: BuildJob) -> tuple[IndexUpdate, int]:
        """The update of ``job.item_ids`` (in that order) and the number of seeds embedded."""
        ...

    def close(self) -> None:
        """Release what the backend holds (called when the job stops)."""
        ...


def read_item_seeds(
    store: SeedStore, item_ids: Sequence[str], limit: int | None
) -> list[list[str]]:
    """Every item's seeds, most recent first, with ONE batch read of the store."""
    many = getattr(store, "seeds_many", None)
    if many is not None:
        got = many(list(item_ids), limit)
        return [list(got.get(i, [])) for i in item_ids]
    return [store.seeds(i, limit) for i in item_ids]  # a store without batch reads


def embed_item_seeds(
    store: SeedStore, embedder: UserEmbedder, seed_lists: Sequence[list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Universal embeddings of every item's embeddable seeds: (S, m) and offsets (I+1,).

    Known users come from the embedding table; users first seen online from their stored
    raw features; seeds with neither are skipped (they cannot be embedded).
    """
    flat = [u for seeds in seed_lists for u in seeds]
    owner = np.repeat(np.arange(len(seed_lists)), [len(s) for s in seed_lists])
    uni, found = embedder.lookup(flat)  # (S, m), (S,)
    missing = [flat[i] for i in np.flatnonzero(~found)]
    if missing:
        feats = store.user_features(sorted(set(missing)))
        if feats:
            idx = [i for i in np.flatnonzero(~found) if flat[i] in feats]
            try:
                uni[idx] = embedder.embed_features([feats[flat[i]] for i in idx])
                found[idx] = True
            except Exception:  # stored features that no longer encode: skip those seeds
                log.exception("could not embed %d online users' features", len(idx))
    keep = np.flatnonzero(found)
    counts = np.bincount(owner[keep], minlength=len(seed_lists))
    offsets = np.zeros(len(seed_lists) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return np.ascontiguousarray(uni[keep], dtype=np.float32), offsets


def build_update(job: BuildJob, clustered_at: float | None = None) -> tuple[IndexUpdate, int]:
    """THE unit of work of a cycle: read ``job``'s seeds (one batch call), embed them, and
    run stage 2's builder :func:`index_items` over them. Every backend runs this function
    (in this process, or inside a Ray task over a chunk of the items).

    Args:
        job: the items and their dependencies.
        clustered_at: time stamp of the rows (default: now).
    """
    ids = list(job.item_ids)
    uni, offsets = embed_item_seeds(
        job.store, job.embedder, read_item_seeds(job.store, ids, job.limit)
    )  # (S, m), (I + 1,)
    upd = index_items(
        job.scorer,
        uni,
        (offsets, np.arange(uni.shape[0], dtype=np.int64)),
        prev=job.prev,
        item_ids=ids,
        seed=job.seed,
        min_seeds=job.min_seeds,
        clustered_at=clustered_at,
        progress=len(ids) >= 1000 and progress_enabled(),
        first_seen=None if job.first_seen is None else np.asarray(job.first_seen, np.float64),
    )
    return upd, int(uni.shape[0])


def seed_groups(n_seeds: Sequence[int], max_seeds: int, cap: int) -> list[slice]:
    """Consecutive groups of items holding about ``cap`` seeds each (the last may be short).

    Args:
        n_seeds: stored seeds of each item.
        max_seeds: the store's N (an item never yields more).
        cap: seeds per group.
    """
    out, lo, size = [], 0, 0
    for i, n in enumerate(n_seeds):
        size += min(int(n), max_seeds)
        if size >= cap:
            out.append(slice(lo, i + 1))
            lo, size = i + 1, 0
    if lo < len(n_seeds):
        out.append(slice(lo, len(n_seeds)))
    return out


class LocalBackend:
    """The single-process backend: groups of at most ``MAX_SEEDS_PER_GROUP`` seeds, one
    :func:`build_update` call each, in this thread."""

    name = "local"

    def build(self, job: BuildJob) -> tuple[IndexUpdate, int]:
        upds, total = [], 0
        for g in seed_groups(job.n_seeds, job.store.max_seeds, MAX_SEEDS_PER_GROUP):
            first = None if job.first_seen is None else job.first_seen[g]
            part = replace(job, item_ids=job.item_ids[g], n_seeds=job.n_seeds[g], first_seen=first)
            u, n = build_update(part)
            upds.append(u)
            total += n
        return IndexUpdate.concat(upds), total

    def close(self) -> None:
        return None


@dataclass
class CycleReport:
    """Outcome of one cycle.

    Args:
        kind: "full" or "fast".
        n_items: items (re-)clustered.
        n_seeds: seeds embedded.
        seconds: wall time.
        version: index version published (None if nothing changed).
        skipped: why nothing was published although there may have been work: "follower"
            (another replica re-clusters) or "refused" (the leader lost its lock, or
            another leader published while the cycle ran).
        moved_to: refused: the version the shared pointer named after the refusal when it
            moved since the cycle began (another leader published; a full cycle is then
            retried soon on that version), else None.
    """

    kind: str
    n_items: int
    n_seeds: int
    seconds: float
    version: int | None
    skipped: str | None = None
    moved_to: int | None = None


class Reclusterer:
    """Re-clusters changed items and publishes new index versions.

    Args:
        store: the seed store.
        holder: the index holder to publish into.
        model: stage-1/2 runtime (embedder, scorer, clustering).
        config: service config (periods, thresholds, N, seed).
        metrics: metrics sink.
        on_publish: called with ``(snapshot, kind)`` after each publication (persistence).
        backend: runs the full cycle's unit of work (default: from
            ``config.recluster_backend``: :class:`LocalBackend` or the Ray backend of
            :mod:`ralm.distributed.ray_index`). The fast path always runs in this process.
        leads: replicas: whether this process may re-cluster now (the leader); None = always.
        before_cycle: replicas: called first in every cycle this process runs (the leader
            takes the newest published version, so it builds on what the others serve).
        commit: replicas: ``(snapshot, kind, base version, expected published version)
            -> published snapshot or None``; persists and publishes the new version to the
            other replicas and serves it (instead of publishing into the holder here); None
            means refused (leadership lost, or another leader published since the cycle
            began): nothing is served and no item is marked clustered.
        published_version: replicas: the version the shared pointer names now; read at the
            start of every cycle (before ``before_cycle``) and handed to ``commit``.

    A full cycle refused because the pointer moved (``CycleReport.moved_to``) is retried by
    the background thread soon instead of a period later: at once, then after
    ``full_retry_delay_s``, doubled each time (jittered, at most the period), at most
    ``full_retries`` times in a row; then the regular period resumes (the items stay
    pending). The bound keeps two replicas that keep taking the lock from each other from
    re-clustering back to back forever.
    """

    def __init__(
        self,
        store: SeedStore,
        holder: IndexHolder,
        model: ServingModel,
        config: ServeConfig,
        metrics: ServiceMetrics | None = None,
        on_publish: Callable[[SeedIndex, str], None] | None = None,
        backend: BuilderBackend | None = None,
        leads: Callable[[], bool] | None = None,
        before_cycle: Callable[[], None] | None = None,
        commit: Callable[[SeedIndex, str, int, int | None], SeedIndex | None] | None = None,
        published_version: Callable[[], int] | None = None,
    ) -> None:
        self.backend: BuilderBackend = backend or LocalBackend()
        self.store = store
        self.holder = holder
        self.model = model
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.on_publish = on_publish
        self.leads = leads
        self.before_cycle = before_cycle
        self.commit = commit
        self.published_version = published_version
        self._cycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_full: CycleReport | None = None
        self.last_error: str | None = None
        self.full_retries = FULL_RETRIES
        self.full_retry_delay_s = FULL_RETRY_DELAY_S
        self._refused_in_a_row = 0  # full cycles refused in a row because the pointer moved
        self.retry_full_at: float | None = None  # time.monotonic() of a scheduled retry

    # ---- building (the backend runs the unit of work) -----------------------------------
    def _update(
        self, snap: SeedIndex, items: Sequence[ItemState], seed_limit: int | None, warm: bool
    ) -> tuple[IndexUpdate, int]:
        """Stage 2's builder over ``items`` in this process (the fast path)."""
        return build_update(self._job(snap, items, seed_limit, warm))

    def _job(
        self, snap: SeedIndex, items: Sequence[ItemState], seed_limit: int | None, warm: bool
    ) -> BuildJob:
        return BuildJob(
            store=self.store,
            embedder=self.model.embedder,
            scorer=self.model.scorer,
            item_ids=[it.item_id for it in items],
            n_seeds=[it.n_seeds for it in items],
            prev=snap if warm else None,
            seed=self.config.seed,
            min_seeds=min_servable_seeds(self.config),
            limit=seed_limit,
            first_seen=[it.first_seen for it in items],
        )

    def _publish(
        self, upd: IndexUpdate, kind: str, base: SeedIndex, expect: int | None
    ) -> SeedIndex | None:
        new = base.updated(upd)
        if self.commit is not None:
            got = self.commit(new, kind, base.version, expect)
            if got is None:
                return None
            new = got
        else:
            self.holder.publish(new)
        if self.on_publish is not None:
            self.on_publish(new, kind)
        return new

    # ---- cycles --------------------------------------------------------------------------
    def _begin(self, kind: str, t0: float) -> tuple[CycleReport | None, int | None]:
        """A report when this process must not re-cluster now (a follower), else None;
        and the published version the cycle starts from (replicas; read BEFORE the leader
        takes the newest version, so a version published in between is never taken for
        the one this cycle builds on)."""
        if self.leads is not None and not self.leads():
            return CycleReport(kind, 0, 0, time.perf_counter() - t0, None, skipped="follower"), None
        expect = self.published_version() if self.published_version is not None else None
        if self.before_cycle is not None:
            self.before_cycle()
        return None, expect

    def run_full(self) -> CycleReport:
        """Re-cluster every changed item (warm start) and publish one new version.

        A follower replica does nothing (the report says ``skipped="follower"``); a leader
        whose publish is refused (it lost the lock, or another leader published since the
        cycle began) marks nothing (``skipped="refused"``).
        """
        with self._cycle_lock:
            t0 = time.perf_counter()
            self.retry_full_at = None  # this cycle is the retry (or makes it moot)
            skip, expect = self._begin("full", t0)
            if skip is not None:
                self._no_retry()
                return skip
            base = self.holder.current()
            changed = self.store.items(changed_only=True)
            if not changed:
                self._no_retry()
                return CycleReport("full", 0, 0, time.perf_counter() - t0, None)
            # the backend may raise: nothing is published and no item is marked clustered
            upd, n_seeds = self.backend.build(self._job(base, changed, None, True))
            new = self._publish(upd, "full", base, expect)
            if new is None:
                secs = time.perf_counter() - t0
                now = self.published_version() if self.published_version is not None else None
                moved = now if expect is not None and now is not None and now != expect else None
                rep = CycleReport("full", 0, n_seeds, secs, None, "refused", moved)
                self._schedule_retry(rep, expect, len(changed))
                return rep
            self.store.mark_clustered({it.item_id: it.changed_seq for it in changed})
            rep = CycleReport("full", len(changed), n_seeds, time.perf_counter() - t0, new.version)
            if self._refused_in_a_row:
                log.info("full cycle published version %d after %d refused attempt(s)",
                         new.version, self._refused_in_a_row)  # fmt: skip
            self._no_retry()
            self._record(rep)
            self.last_full = rep
            return rep

    def _schedule_retry(self, rep: CycleReport, began_at: int | None, n_items: int) -> None:
        """After a refused full cycle: schedule a retry soon when the pointer moved (at
        once, then a doubling jittered back-off), at most ``full_retries`` in a row."""
        if rep.moved_to is None:  # the lock was lost: the new leader re-clusters the items
            self._no_retry()
            return
        self._refused_in_a_row += 1
        n, period = self._refused_in_a_row, self.config.recluster_every_s
        if n > self.full_retries:
            log.warning(
                "full cycle refused %d times in a row: another leader published while each "
                "ran (now version %d); its %d item(s) stay pending until the next full cycle "
                "in %.0fs",
                n,
                rep.moved_to,
                n_items,
                period,
            )
            self._no_retry()
            return
        delay = 0.0 if n == 1 else self.full_retry_delay_s * 2 ** (n - 2)
        delay = min(period, delay * random.uniform(0.5, 1.0))
        self.retry_full_at = time.monotonic() + delay
        log.warning(
            "full cycle refused: another leader published while it ran (it began at version "
            "%s, the pointer names %d); its %d item(s) stay pending; retry %d of %d on the "
            "newest version in %.1fs",
            began_at,
            rep.moved_to,
            n_items,
            n,
            self.full_retries,
            delay,
        )

    def _no_retry(self) -> None:
        self._refused_in_a_row = 0
        self.retry_full_at = None

    def run_fast(self) -> CycleReport:
        """Serve not-yet-servable items that reached ``fast_path_min_seeds`` seeds."""
        with self._cycle_lock:
            t0 = time.perf_counter()
            skip, expect = self._begin("fast", t0)
            if skip is not None:
                return skip
            snap = self.holder.current()
            need = self.config.fast_path_min_seeds
            todo = []
            for it in self.store.items(changed_only=True):
                r = snap.row_of.get(it.item_id)
                if it.n_seeds >= need and (r is None or not _servable(snap, r)):
                    todo.append(it)
                if len(todo) >= FAST_PATH_MAX_ITEMS:
                    break
            if not todo:
                return CycleReport("fast", 0, 0, time.perf_counter() - t0, None)
            upd, n = self._update(snap, todo, self.model.k, warm=False)
            new = self._publish(upd, "fast", snap, expect)
            if new is None:
                secs = time.perf_counter() - t0
                return CycleReport("fast", 0, n, secs, None, skipped="refused")
            rep = CycleReport("fast", len(todo), n, time.perf_counter() - t0, new.version)
            self._record(rep)
            return rep

    def _record(self, rep: CycleReport) -> None:
        self.metrics.recluster_duration.observe(rep.seconds, kind=rep.kind)
        self.metrics.reclustered_items.inc(rep.n_items, kind=rep.kind)
        log.info(
            "%s re-cluster: %d items, %d seeds, %.3fs -> version %s",
            rep.kind,
            rep.n_items,
            rep.n_seeds,
            rep.seconds,
            rep.version,
        )

    # ---- background thread ---------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread (full cycle every T s, fast path every few s)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ralm-recluster", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop and wait for the running cycle to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.backend.close()

    def _full_due(self, next_full: float) -> float:
        """When the next full cycle runs: the period's time, or a sooner retry."""
        retry = self.retry_full_at
        return next_full if retry is None else min(next_full, retry)

    def _loop(self) -> None:
        inherit_threads()  # k-means GEMMs on the process's thread count, not every core
        cfg = self.config
        next_full = time.monotonic() + cfg.recluster_every_s
        while True:
            wait = self._full_due(next_full) - time.monotonic()
            if cfg.fast_path:
                wait = min(wait, cfg.fast_path_every_s)
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                if time.monotonic() >= self._full_due(next_full):
                    self.run_full()
                    next_full = time.monotonic() + cfg.recluster_every_s
                elif cfg.fast_path:
                    self.run_fast()
                self.last_error = None
            except Exception as e:  # keep serving the last good version
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("re-clustering cycle failed; the index keeps its last version")
                next_full = max(next_full, time.monotonic() + min(cfg.recluster_every_s, 30.0))


def _servable(snap: SeedIndex, row: int) -> bool:
    chunk, local = snap.row(row)
    return bool(chunk.servable[local])
