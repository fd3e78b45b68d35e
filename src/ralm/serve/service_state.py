"""Start-up restore of a service's index and the state folder's published versions.

:class:`ServiceState` is the base of :class:`ralm.serve.service.RalmService`: what the
service serves after a (re)start, one process or one of several replicas:

* one process (:meth:`ServiceState._restore`): the version the store records, else the
  newest sound version on disk (an unsound one is skipped with a one-line error and its
  items are re-clustered), else training's seed index with this service's servable rule,
  else an empty index; a version published by other model weights is ignored;
* a replica (:meth:`ServiceState._restore_replicated`): the shared pointer's version when
  the store records it as built by these weights, else training's index, else empty; the
  first replica on an empty store bootstraps it under a Redis lock;
* paths recorded in the store are relative to the state folder
  (:meth:`ServiceState._state_path`), so a copied state folder serves its own index.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ralm.errors import CheckpointError, RalmError
from ralm.lookalike.seed_index import IndexChunk, SeedIndex
from ralm.serve.config import ServeConfig
from ralm.serve.recluster import min_servable_seeds
from ralm.serve.replication import Replication
from ralm.serve.runtime import ServingModel
from ralm.serve.seed_store import SeedStore
from ralm.serve.snapshot_io import list_versions, load_snapshot
from ralm.serve.stores import open_seed_store

log = logging.getLogger(__name__)


def open_store(default: Path, config: ServeConfig) -> SeedStore:
    """``config.store`` (Redis URL or SQLite file), else SQLite in the state folder."""
    return open_seed_store(config.store or default, config.max_seeds_per_item, config.synchronous)


def item_n_seeds(snap: SeedIndex, row: int) -> int:
    """Seeds clustered into row ``row`` of ``snap``."""
    chunk, j = snap.row(row)
    return int(chunk.n_seeds[j])


class ServiceState:
    """Start-up and persistence of the served index (the base of ``RalmService``).

    Attributes (set by the service's constructor): ``model``, ``config``, ``store``,
    ``state_dir``, ``index_dir`` (``state_dir / "index"``), ``replication`` (None with one
    process) and ``_saved_dir`` (the last version folder on disk, for chunk sharing).
    """

    model: ServingModel
    config: ServeConfig
    store: SeedStore
    state_dir: Path
    index_dir: Path
    replication: Replication | None
    _saved_dir: Path | None

    def _restore(self) -> SeedIndex:
        """Last published index if any, else training's seed index, else empty."""
        m = self.model
        if self.store.n_items() == 0 and m.bootstrap_clicks is not None:
            t0 = time.perf_counter()
            n = self.store.bulk_import(m.bootstrap_clicks())
            secs = time.perf_counter() - t0
            log.info("bootstrapped the seed store with %d seeds in %.1fs", n, secs)
        base = int(self.store.get_meta("max_version", 0))
        snap: SeedIndex | None = None
        saved = self.store.get_meta("index")
        stored_fp = self.store.get_meta("model_fingerprint")
        if saved is not None and stored_fp is not None and stored_fp != m.fingerprint:
            log.warning(
                "%s was published by other model weights: ignoring it and re-clustering",
                self.index_dir,
            )
            saved = None
            self.store.mark_all_changed()
        self.store.set_meta("model_fingerprint", m.fingerprint)
        if saved is not None:
            snap = self._load_published(self._state_path(saved.get("path")))
        if snap is None and m.initial_index is not None:
            snap = self._from_initial(m.initial_index)
            self._mark_as_trained(snap)
        if snap is None:
            return SeedIndex.empty(m.k, m.h, version=base + 1 if base else 0)
        if snap.k != m.k or snap.h != m.h:
            raise RalmError(
                f"{self.index_dir}: the published index has k={snap.k}, h={snap.h} but the "
                f"model has k={m.k}, h={m.h}; use a fresh --state-dir for this model"
            )
        if snap.version <= base:
            snap = snap.with_version(base + 1)
        return snap

    def _restore_replicated(self, rep: Replication) -> tuple[SeedIndex, int]:
        """Start-up of a replica: the pointer's version, else training's index, else empty.

        Returns the index to serve and the pointer's version (the watcher takes only newer
        ones). The first replica on an empty store fills it with the dataset's clicks (one
        replica at a time, under a Redis lock). The pointer's version is trusted only when
        the store records it as published by these model weights.
        """
        m = self.model
        if rep.published() is None and m.bootstrap_clicks is not None:
            with rep.bootstrap_lock():
                if self.store.n_items() == 0 and rep.published() is None:
                    t0 = time.perf_counter()
                    n = self.store.bulk_import(m.bootstrap_clicks())
                    secs = time.perf_counter() - t0
                    log.info("bootstrapped the seed store with %d seeds in %.1fs", n, secs)
        pv = rep.published()
        seen = pv.version if pv is not None else 0
        meta = self.store.get_meta("index")
        if pv is not None and not (
            isinstance(meta, dict)
            and meta.get("version") == pv.version
            and meta.get("fingerprint") == m.fingerprint
        ):
            log.warning(
                "published version %d is not recorded as built by these model weights: "
                "ignoring it and re-clustering",
                pv.version,
            )
            pv = None
            self.store.mark_all_changed()
        self.store.set_meta("model_fingerprint", m.fingerprint)
        snap: SeedIndex | None = None
        if pv is not None:
            snap, exact = rep.restore(pv)
            if snap is not None and not exact:
                self.store.mark_all_changed()
        if snap is None and m.initial_index is not None:
            snap = self._from_initial(m.initial_index)
            self._mark_as_trained(snap)
        if snap is None:
            snap = SeedIndex.empty(m.k, m.h, version=0)
        if snap.k != m.k or snap.h != m.h:
            raise RalmError(
                f"{self.index_dir}: the published index has k={snap.k}, h={snap.h} but the "
                f"model has k={m.k}, h={m.h}; use a fresh --state-dir for this model"
            )
        return snap, seen

    def _mark_as_trained(self, snap: SeedIndex) -> None:
        """Items whose stored seeds are exactly those training clustered need no cycle."""
        self.store.mark_clustered(
            {
                it.item_id: it.changed_seq
                for it in self.store.items(changed_only=True)
                if it.item_id in snap.row_of
                and it.n_seeds == item_n_seeds(snap, snap.row_of[it.item_id])
            }
        )

    def _leader_sync(self) -> None:
        """Before a leader's cycle: build on the newest published version.

        When that version does not load, the leader builds on what it serves and marks
        every item for re-clustering (the clusterings of the unloadable version are redone;
        its own publish then moves the pointer past it).
        """
        assert self.replication is not None
        try:
            self.replication.take()
        except CheckpointError:
            log.error("leader: re-clustering every item instead of the unloadable version")
            self.store.mark_all_changed()

    def _state_path(self, stored: object) -> Path | None:
        """A path recorded in the store, resolved against the state folder.

        Paths are recorded relative to the state folder (a copied or moved state folder
        serves its own index); an absolute path of an older state keeps only its version
        folder's name.
        """
        if not isinstance(stored, str) or not stored:
            return None
        p = Path(stored)
        return self.index_dir / p.name if p.is_absolute() else self.state_dir / p

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.state_dir).as_posix()

    def _load_published(self, preferred: Path | None) -> SeedIndex | None:
        """The recorded version, else the newest sound one on disk, else None.

        A version that is unreadable, fails its checksums, holds non-finite arrays or is
        inconsistent (shapes, item ids) is skipped with a one-line error.
        """
        found = list_versions(self.index_dir)
        order = [p for p in [preferred] if p is not None] + [p for p in found if p != preferred]
        for path in order:
            if not path.is_dir():
                continue
            try:
                snap = load_snapshot(path)
            except CheckpointError as e:
                log.error("skipping unsound published index: %s", e)
                continue
            log.info("restored index version %d from %s", snap.version, path)
            if path != preferred:  # clusterings newer than this one are lost: redo them
                self.store.mark_all_changed()
            self._saved_dir = path
            return snap
        log.warning("no sound published index in %s", self.index_dir)
        return None

    def _from_initial(self, index: SeedIndex) -> SeedIndex:
        """Training's index, with this service's servable rule, as version 1."""
        need = min_servable_seeds(self.config)

        def rule(c: IndexChunk) -> np.ndarray:
            return np.asarray((c.n_seeds >= need) & c.mask.any(axis=1))

        return index.with_servable(rule, version=1)
