"""The re-clustering job (paper Fig. 2: "clusters recomputed every 5 minutes").

A full cycle re-clusters only the items whose seeds changed since their last published
clustering, warm-started from their previous centroids, with stage 2's clustering
function, computes their global vectors with stage 2's model, and publishes a new index
version. The fast path (every few seconds) makes items that are not servable yet but
have a handful of seeds servable at once: their most recent seeds become the centroids
(stage 2's clustering keeps <= k seeds as centroids without k-means); the next full cycle
re-clusters them properly. One background thread runs both, so publications never race.

Servable rule: ``n >= min_seeds``, or ``fast_path and n >= fast_path_min_seeds``, with n
the number of seeds the service could embed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ralm.common.progress import progress_enabled
from ralm.serve.config import ServeConfig
from ralm.serve.index_holder import IndexHolder, IndexSnapshot, ItemUpdate
from ralm.serve.metrics import ServiceMetrics
from ralm.serve.runtime import ServingModel
from ralm.serve.store import ItemState, SeedStore

log = logging.getLogger(__name__)

MAX_SEEDS_PER_GROUP = 1_000_000  # seeds embedded at once (bounds memory of a cycle)
FAST_PATH_MAX_ITEMS = 2_000  # items handled by one fast-path tick


@dataclass
class CycleReport:
    """Outcome of one cycle.

    Args:
        kind: "full" or "fast".
        n_items: items (re-)clustered.
        n_seeds: seeds embedded.
        seconds: wall time.
        version: index version published (None if nothing changed).
    """

    kind: str
    n_items: int
    n_seeds: int
    seconds: float
    version: int | None


class Reclusterer:
    """Re-clusters changed items and publishes new index versions.

    Args:
        store: the seed store.
        holder: the index holder to publish into.
        model: stage-1/2 runtime (embedder, scorer, clustering).
        config: service config (periods, thresholds, N, seed).
        metrics: metrics sink.
        on_publish: called with ``(snapshot, kind)`` after each publication (persistence).
    """

    def __init__(
        self,
        store: SeedStore,
        holder: IndexHolder,
        model: ServingModel,
        config: ServeConfig,
        metrics: ServiceMetrics | None = None,
        on_publish: Callable[[IndexSnapshot, str], None] | None = None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.model = model
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.on_publish = on_publish
        self._cycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_full: CycleReport | None = None
        self.last_error: str | None = None

    # ---- embedding of seeds --------------------------------------------------------------
    def _embed_seeds(self, seed_lists: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Transformed embeddings of every item's seeds: (S, h) float32 and offsets (I+1,).

        Known users come from the embedding table; users first seen online from their stored
        raw features; seeds with neither are skipped (they cannot be embedded).
        """
        flat = [u for seeds in seed_lists for u in seeds]
        owner = np.repeat(np.arange(len(seed_lists)), [len(s) for s in seed_lists])
        uni, found = self.model.embedder.lookup(flat)  # (S, m), (S,)
        missing = [flat[i] for i in np.flatnonzero(~found)]
        if missing:
            feats = self.store.user_features(sorted(set(missing)))
            if feats:
                idx = [i for i in np.flatnonzero(~found) if flat[i] in feats]
                try:
                    uni[idx] = self.model.embedder.embed_features([feats[flat[i]] for i in idx])
                    found[idx] = True
                except Exception:  # stored features that no longer encode: skip those seeds
                    log.exception("could not embed %d online users' features", len(idx))
        keep = np.flatnonzero(found)
        counts = np.bincount(owner[keep], minlength=len(seed_lists))
        offsets = np.zeros(len(seed_lists) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = np.empty((keep.size, self.model.h), dtype=np.float32)
        with torch.no_grad():
            for lo in range(0, keep.size, 65536):
                u = torch.from_numpy(np.ascontiguousarray(uni[keep[lo : lo + 65536]]))
                out[lo : lo + 65536] = self.model.scorer.transform(u).float().numpy()  # (b, h)
        return out, offsets

    def _servable(self, n: np.ndarray) -> np.ndarray:
        cfg = self.config
        ok = n >= cfg.min_seeds
        if cfg.fast_path:
            ok |= n >= cfg.fast_path_min_seeds
        return ok

    def _update(
        self, snap: IndexSnapshot, items: Sequence[ItemState], seed_limit: int | None, warm: bool
    ) -> tuple[ItemUpdate, int]:
        """Cluster ``items`` (their most recent ``seed_limit`` seeds) into an ItemUpdate."""
        seed_lists = [self.store.seeds(it.item_id, seed_limit) for it in items]
        emb, offsets = self._embed_seeds(seed_lists)  # (S, h), (I+1,)
        k, h = self.model.k, self.model.h
        init = init_mask = None
        if warm and self.model.variant != "average":
            init = np.zeros((len(items), k, h), dtype=np.float32)
            init_mask = np.zeros((len(items), k), dtype=bool)
            pos = [
                (j, snap.row_of[it.item_id])
                for j, it in enumerate(items)
                if it.item_id in snap.row_of
            ]
            if pos:
                js, rows = (np.asarray(a, dtype=np.int64) for a in zip(*pos, strict=True))
                cen, msk = snap.gather(rows)  # (R, k, h), (R, k)
                init[js], init_mask[js] = cen.numpy(), msk.numpy()
            if not init_mask.any():
                init = init_mask = None
        big = len(items) >= 1000 and progress_enabled()
        clusters = self.model.cluster(
            emb, offsets, init, init_mask, seed=self.config.seed, progress=big
        )
        centroids = torch.from_numpy(clusters.centroids)  # (I, k, h)
        mask = torch.from_numpy(clusters.mask)  # (I, k)
        sizes = torch.from_numpy(np.asarray(clusters.sizes, np.int64))  # (I, k)
        glb = torch.zeros(len(items), h)  # (I, h)
        has = mask.any(dim=1)
        if bool(has.any()):
            with torch.no_grad():
                g = self.model.scorer.item_global(centroids[has], mask[has], sizes[has])
                glb[has] = g.float()
        n_emb = np.diff(offsets)
        upd = ItemUpdate(
            item_ids=[it.item_id for it in items],
            centroids=centroids,
            mask=mask,
            global_vec=glb,
            sizes=clusters.sizes,
            n_seeds=n_emb,
            servable=self._servable(n_emb),
            clustered_at=time.time(),
        )
        return upd, int(emb.shape[0])

    def _publish(self, upd: ItemUpdate, kind: str) -> IndexSnapshot:
        snap = self.holder.current()
        new = snap.updated(snap.version + 1, upd)
        self.holder.publish(new)
        if self.on_publish is not None:
            self.on_publish(new, kind)
        return new

    # ---- cycles --------------------------------------------------------------------------
    def run_full(self) -> CycleReport:
        """Re-cluster every changed item (warm start) and publish one new version."""
        with self._cycle_lock:
            t0 = time.perf_counter()
            changed = self.store.items(changed_only=True)
            if not changed:
                return CycleReport("full", 0, 0, time.perf_counter() - t0, None)
            upds: list[ItemUpdate] = []
            n_seeds, group, size = 0, [], 0
            for it in changed:
                group.append(it)
                size += min(it.n_seeds, self.store.max_seeds)
                if size >= MAX_SEEDS_PER_GROUP:
                    u, n = self._update(self.holder.current(), group, None, warm=True)
                    upds.append(u)
                    n_seeds, group, size = n_seeds + n, [], 0
            if group:
                u, n = self._update(self.holder.current(), group, None, warm=True)
                upds.append(u)
                n_seeds += n
            new = self._publish(_concat(upds), "full")
            self.store.mark_clustered({it.item_id: it.changed_seq for it in changed})
            rep = CycleReport("full", len(changed), n_seeds, time.perf_counter() - t0, new.version)
            self._record(rep)
            self.last_full = rep
            return rep

    def run_fast(self) -> CycleReport:
        """Serve not-yet-servable items that reached ``fast_path_min_seeds`` seeds."""
        with self._cycle_lock:
            t0 = time.perf_counter()
            snap = self.holder.current()
            need = self.config.fast_path_min_seeds
            todo = []
            for it in self.store.items(changed_only=True):
                r = snap.row_of.get(it.item_id)
                if it.n_seeds >= need and (r is None or not bool(snap.servable[r])):
                    todo.append(it)
                if len(todo) >= FAST_PATH_MAX_ITEMS:
                    break
            if not todo:
                return CycleReport("fast", 0, 0, time.perf_counter() - t0, None)
            upd, n = self._update(snap, todo, self.model.k, warm=False)
            new = self._publish(upd, "fast")
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

    def _loop(self) -> None:
        cfg = self.config
        next_full = time.monotonic() + cfg.recluster_every_s
        while True:
            wait = next_full - time.monotonic()
            if cfg.fast_path:
                wait = min(wait, cfg.fast_path_every_s)
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                if time.monotonic() >= next_full:
                    self.run_full()
                    next_full = time.monotonic() + cfg.recluster_every_s
                elif cfg.fast_path:
                    self.run_fast()
                self.last_error = None
            except Exception as e:  # keep serving the last good version
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("re-clustering cycle failed; the index keeps its last version")
                next_full = max(next_full, time.monotonic() + min(cfg.recluster_every_s, 30.0))


def _concat(upds: Sequence[ItemUpdate]) -> ItemUpdate:
    if len(upds) == 1:
        return upds[0]
    return ItemUpdate(
        item_ids=[i for u in upds for i in u.item_ids],
        centroids=torch.cat([u.centroids for u in upds]),
        mask=torch.cat([u.mask for u in upds]),
        global_vec=torch.cat([u.global_vec for u in upds]),
        sizes=np.concatenate([u.sizes for u in upds]),
        n_seeds=np.concatenate([u.n_seeds for u in upds]),
        servable=np.concatenate([u.servable for u in upds]),
        clustered_at=max(u.clustered_at for u in upds),
    )
