"""The online service (paper Fig. 2) without HTTP: recommend, ingest clicks, re-cluster.

Per request the user's universal embedding is looked up (known id) or computed from raw
features (new user), then queued to the micro-batcher; a batch is transformed to E_u
(B, h) once and scored against every item of ONE index snapshot with stage 2's scorer
(global vectors and Gram matrices precomputed per item), non-servable and excluded items
are masked, and the top n are returned with their pCTR and the snapshot's version.

What the service serves after a (re)start, and the recorded paths of its published
versions, is its base class :class:`ralm.serve.service_state.ServiceState`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ralm.errors import CheckpointError, RalmError
from ralm.lookalike import scorer_kernel
from ralm.lookalike.seed_index import SeedIndex
from ralm.serve import store as sqlite_store
from ralm.serve.backends import make_backend
from ralm.serve.batcher import MicroBatcher
from ralm.serve.candidates import CandidateRetriever
from ralm.serve.config import ServeConfig
from ralm.serve.index_holder import IndexHolder
from ralm.serve.metrics import ServiceMetrics
from ralm.serve.recluster import Reclusterer
from ralm.serve.replication import Replication
from ralm.serve.runtime import ServingModel, item_age
from ralm.serve.scoring import RecommendResult, ScoreRequest, score_batch
from ralm.serve.seed_store import Click, SeedStore
from ralm.serve.service_state import ServiceState, item_n_seeds, open_store
from ralm.serve.snapshot_io import clean_temporaries, prune_versions, save_snapshot

log = logging.getLogger(__name__)


class UnknownUserError(RalmError):
    """A request names a user the service cannot embed (unknown id, no features)."""


class UnknownItemError(RalmError):
    """A request names an item the service has never seen."""


class RalmService(ServiceState):
    """Seed store + index holder + micro-batcher + re-clustering job.

    With a Redis store (``config.store = "redis://..."``) the service is one of several
    replicas (:mod:`ralm.serve.replication`): all share the store and the state folder's
    published versions, one leader re-clusters and publishes, the others follow.

    Args:
        model: the stage-1/2 runtime to serve.
        config: service settings.
        store: an open seed store (default: ``config.store``, else
            ``state_dir/seeds.sqlite3``).
        metrics: metrics sink (default: a new one).
    """

    def __init__(
        self,
        model: ServingModel,
        config: ServeConfig,
        store: SeedStore | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.started_at = time.time()
        self.state_dir = Path(config.state_dir)
        self.index_dir = self.state_dir / "index"
        self._saved_dir: Path | None = None  # last version folder on disk (chunk sharing)
        self.model_problem = model.unsound()
        if self.model_problem:
            log.error("serving an unsound model: %s", self.model_problem)
        # the compiled scorer chain, built now rather than on the first request (with
        # RALM_SCORER_KERNEL=on a service that cannot build it does not start)
        kernel = scorer_kernel.load()
        log.info("scorer chain: %s", f"kernel {kernel.path}" if kernel else "torch")
        clean_temporaries(self.index_dir)  # half-written versions of a crash
        db = self.state_dir / "seeds.sqlite3"
        self.replication: Replication | None = None
        seen = 0
        try:
            self.store: SeedStore = store or open_store(db, config)
            if config.torch_threads:
                torch.set_num_threads(config.torch_threads)
            if config.replicated:
                from ralm.serve.redis_store import connect

                assert config.store is not None
                self.replication = Replication(
                    connect(config.store),
                    self.state_dir,
                    ttl_s=config.leader_ttl_s,
                    poll_s=config.version_poll_s,
                    prefix=str(getattr(self.store, "prefix", "ralm:")),
                )
                initial, seen = self._restore_replicated(self.replication)
            else:
                initial = self._restore()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(
                f"{config.store or db}: the seed store is unreadable ({e})"
            ) from e
        self.holder = IndexHolder(initial)
        self.candidates = CandidateRetriever.from_config(config) if config.candidates else None
        self._set_index_gauges(self.holder.current())
        self._seen = seen
        self._foreign_version = 0  # the last published version refused as other weights'
        rep = self.replication
        if rep is None:
            self.reclusterer = Reclusterer(
                self.store,
                self.holder,
                model,
                config,
                self.metrics,
                on_publish=self._on_publish,
                backend=make_backend(config),
            )
        else:
            rep.holder = self.holder
            rep.on_taken = self._set_index_gauges
            self.reclusterer = Reclusterer(
                self.store,
                self.holder,
                model,
                config,
                self.metrics,
                on_publish=self._on_publish,
                leads=rep.is_leader,
                before_cycle=self._leader_take,
                commit=rep.commit,
                published_version=rep.published_version,
                backend=make_backend(config),
            )
        self.batcher: MicroBatcher[ScoreRequest, RecommendResult] = MicroBatcher(
            self._score_batch, config.max_batch, config.batch_window_ms, on_batch=self._on_batch
        )

    def _leader_take(self) -> None:
        """Before a leader's cycle: take the newest published version (``_leader_sync``),
        unless the store records that very version as published by other model weights.

        Start-up ignores such a version (``_restore_replicated``); without this check the
        replica would load it anyway at its first cycle as leader and build on centroids
        of other weights. Refused, the leader builds on what it serves, marks every item
        for re-clustering (once per refused version: a leader of the other weights may
        have marked them clustered) and its next publish supersedes that version. Only
        a record of exactly the pointer's version counts: the publisher records it just
        after it moves the pointer, so a record of an older version says nothing.
        """
        rep = self.replication
        assert rep is not None
        pv = rep.published()
        if pv is not None and pv.version > self.holder.version:
            meta = self.store.get_meta("index")
            if (
                isinstance(meta, dict)
                and meta.get("version") == pv.version
                and meta.get("fingerprint") != self.model.fingerprint
            ):
                if self._foreign_version != pv.version:
                    self._foreign_version = pv.version
                    log.warning(
                        "leader: published version %d was built by other model weights: not "
                        "building on it (serving version %d) and re-clustering every item; "
                        "the next publish supersedes it",
                        pv.version,
                        self.holder.version,
                    )
                    self.store.mark_all_changed()
                return
        self._leader_sync()

    def _on_publish(self, snap: SeedIndex, kind: str) -> None:
        if self.candidates is not None:  # retrieval index: changed items only
            self.candidates.sync(self.model.scorer, snap)
        self.store.set_meta("max_version", snap.version)
        self._set_index_gauges(snap)
        rep = self.replication
        if rep is not None:  # the version folder is written and the pointer moved
            assert rep.saved_dir is not None
            self.store.set_meta(
                "index",
                {
                    "version": snap.version,
                    "path": self._relative(rep.saved_dir),
                    "fingerprint": self.model.fingerprint,
                },
            )
            prune_versions(self.index_dir, self.config.keep_index_versions)
        elif kind == "full":
            path = save_snapshot(snap, self.index_dir, prev=self._saved_dir)
            self._saved_dir = path
            self.store.set_meta("index", {"version": snap.version, "path": self._relative(path)})
            prune_versions(self.index_dir, self.config.keep_index_versions)

    def _set_index_gauges(self, snap: SeedIndex) -> None:
        self.metrics.index_version.set(snap.version)
        self.metrics.index_items.set(snap.n_items)
        self.metrics.index_servable.set(snap.n_servable)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_latency.observe(seconds)

    def start(self) -> None:
        """Cluster whatever is pending (first start) and start the background job.

        A replica first tries to become the leader and starts following the pointer.
        """
        if self.replication is not None:
            self.replication.start(seen=self._seen)
        if self.holder.current().n_items == 0 and self.store.n_items() > 0:
            self.reclusterer.run_full()  # a follower skips it
        if self.candidates is not None:
            self.candidates.sync(self.model.scorer, self.holder.current())
        self.reclusterer.start()

    @property
    def role(self) -> str:
        """ "leader" (re-clusters: a single process, or the replicas' leader) or "follower"."""
        return "leader" if self.replication is None else self.replication.role

    def close(self) -> None:
        """Stop the background job and the batcher, close the store (a leader steps down)."""
        if self.replication is not None:
            self.replication.stop()
        self.reclusterer.stop()
        self.batcher.close()
        self.store.close()

    # ---- recommend -----------------------------------------------------------------------
    def universal(
        self, user_id: str | None, features: Mapping[str, Any] | None
    ) -> tuple[np.ndarray, str]:
        """The user's universal embedding (m,) and how it was obtained (stores nothing)."""
        emb = self.model.embedder
        if user_id is not None:
            vec, found = emb.lookup([user_id])
            if bool(found[0]):
                return vec[0], "known"
        if features is not None:  # used for this request only: a read never writes
            return emb.embed_features([features])[0], "features"
        if user_id is not None:
            stored = self.store.user_features([user_id]).get(user_id)
            if stored is not None:
                return emb.embed_features([stored])[0], "stored-features"
            raise UnknownUserError(
                f"user_id: user {user_id!r} is unknown to the model and no features were given"
            )
        raise UnknownUserError("give a user_id, features, or both")

    def _request(
        self,
        user_id: str | None,
        features: Mapping[str, Any] | None,
        n: int,
        exclude: Sequence[str],
        exclude_clicked: bool,
    ) -> tuple[ScoreRequest, str]:
        if not 1 <= n <= self.config.max_n:
            raise RalmError(f"n: must be in [1, {self.config.max_n}], got {n}")
        vec, how = self.universal(user_id, features)
        ex = set(exclude)
        if exclude_clicked and user_id is not None:
            ex.update(self.store.items_of_user(user_id))
        return ScoreRequest(np.asarray(vec, np.float32), n, frozenset(ex)), how

    def _known_request(
        self, user_id: str, n: int, exclude: Sequence[str]
    ) -> tuple[ScoreRequest, str] | None:
        """:meth:`_request` for a user of the embedding table, or None if it is not one."""
        if not 1 <= n <= self.config.max_n:
            raise RalmError(f"n: must be in [1, {self.config.max_n}], got {n}")
        vec, found = self.model.embedder.lookup([user_id])
        if not bool(found[0]):
            return None
        return ScoreRequest(np.asarray(vec[0], np.float32), n, frozenset(exclude)), "known"

    def recommend(
        self,
        user_id: str | None = None,
        features: Mapping[str, Any] | None = None,
        n: int = 10,
        exclude: Sequence[str] = (),
        exclude_clicked: bool = False,
        timeout: float = 30.0,
    ) -> RecommendResult:
        """Top-n servable items for a user (blocking; micro-batched with concurrent calls)."""
        req, how = self._request(user_id, features, n, exclude, exclude_clicked)
        res = self.batcher.submit(req).result(timeout)
        return dataclasses.replace(res, user=how)

    async def arecommend(
        self,
        user_id: str | None = None,
        features: Mapping[str, Any] | None = None,
        n: int = 10,
        exclude: Sequence[str] = (),
        exclude_clicked: bool = False,
    ) -> RecommendResult:
        """Async :meth:`recommend`: scoring is awaited; the user's embedding is looked up
        inline when it is a table lookup (a known user, no features, no store read: a
        binary search, microseconds, so no thread hop), else in a worker thread."""
        fast = None
        if user_id is not None and features is None and not exclude_clicked:
            fast = self._known_request(user_id, n, exclude)
        if fast is None:
            loop = asyncio.get_running_loop()
            fast = await loop.run_in_executor(
                None, self._request, user_id, features, n, exclude, exclude_clicked
            )
        req, how = fast
        res = await asyncio.wrap_future(self.batcher.submit(req))
        return dataclasses.replace(res, user=how)

    def _score_batch(self, reqs: Sequence[ScoreRequest]) -> list[RecommendResult]:
        return score_batch(
            self.model.scorer,
            self.holder.current(),
            reqs,
            dtype=self.config.score_dtype,
            candidates=self.candidates,
        )

    # ---- clicks and items ----------------------------------------------------------------
    def add_clicks(
        self,
        clicks: Sequence[Click] | Sequence[sqlite_store.Click],
        features: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """Store clicks durably (returns new seeds); ``features`` for users first seen online.

        Features are validated (embedded once) before anything is written.
        """
        if features:
            ids = list(features)
            _, found = self.model.embedder.lookup(ids)
            new = [i for i, f in zip(ids, found, strict=True) if not f]
            if new:
                self.model.embedder.embed_features([features[i] for i in new])  # validates
                for i in new:
                    self.store.put_user_features(i, features[i])
        added = self.store.add_clicks(cast(Sequence[Click], clicks))  # same fields
        self.metrics.seeds_ingested.inc(len(clicks))
        self.metrics.new_seeds.inc(added)
        return added

    def set_user_features(self, user_id: str, features: Mapping[str, Any]) -> None:
        """Store the raw features of a user first seen online (an authenticated write).

        The features are validated by embedding them once before anything is stored; the
        user's clicks then become embeddable seeds and ``recommend(user_id=...)`` finds them.

        Raises:
            ralm.errors.DataError: a malformed feature (named in the message).
        """
        self.model.embedder.embed_features([features])  # validates
        self.store.put_user_features(user_id, features)

    def item_info(self, item_id: str) -> dict[str, Any]:
        """Seed count, cluster sizes, servability, last re-cluster time of an item, its
        first-click time and the young-item factor its seed count gets in the prior now."""
        st = self.store.item(item_id)
        snap = self.holder.current()
        r = snap.row_of.get(item_id)
        if st is None and r is None:
            raise UnknownItemError(f"item_id: item {item_id!r} has never been seen")
        info: dict[str, Any] = {
            "item_id": item_id,
            "n_seeds": st.n_seeds if st is not None else item_n_seeds(snap, r),  # type: ignore[arg-type]
            "last_click": st.last_click if st is not None else None,
            "pending_recluster": bool(st is not None and st.changed_seq > st.clustered_seq),
            "index_version": snap.version,
            "in_index": r is not None,
            "servable": False,
            "clustered_seeds": 0,
            "cluster_sizes": [],
            "last_recluster": None,
            "first_seen": None,
            "prior_boost": 1.0,
        }
        if r is not None:
            chunk, j = snap.row(r)
            sizes = chunk.sizes[j]
            info.update(
                servable=bool(chunk.servable[j]),
                clustered_seeds=int(chunk.n_seeds[j]),
                cluster_sizes=[int(x) for x in sizes[sizes > 0]],
                last_recluster=float(chunk.clustered_at[j]) or None,
            )
            first = float(chunk.first_seen[j])
            if first > 0:
                info["first_seen"] = first
                age = item_age(self.model.scorer, torch.tensor([first]), time.time())
                factor = getattr(self.model.scorer, "young_factor", None)
                boost = factor(age) if age is not None and factor is not None else None
                info["prior_boost"] = float(boost[0]) if boost is not None else 1.0
        return info

    def health(self) -> dict[str, Any]:
        """Liveness and index summary; "degraded" with a reason when something is unsound.

        Degraded: the model has non-finite weights, the served index holds items with
        non-finite arrays (they are not scored), or the last re-clustering cycle failed.
        """
        snap = self.holder.current()
        last = self.reclusterer.last_full
        reasons = [r for r in (self.model_problem,) if r]
        if snap.n_unsound:
            reasons.append(f"index: {snap.n_unsound} items have non-finite arrays")
        if self.reclusterer.last_error is not None:
            reasons.append(f"recluster: {self.reclusterer.last_error}")
        published: int | None = None
        rep = self.replication
        if rep is not None:
            if rep.load_error is not None:
                reasons.append(f"index: {rep.load_error}")
            try:
                pv = rep.published()
                published = None if pv is None else pv.version
            except Exception as e:  # Redis away: say so, keep answering
                reasons.append(f"store: {type(e).__name__}: {e}")
        return {
            "status": "degraded" if reasons else "ok",
            "reason": "; ".join(reasons) or None,
            "role": self.role,
            "index_version": snap.version,
            "published_version": published,
            "items": snap.n_items,
            "servable_items": snap.n_servable,
            "last_full_recluster_s": None if last is None else round(last.seconds, 4),
            "recluster_error": self.reclusterer.last_error,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
