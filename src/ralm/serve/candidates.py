"""Candidate retrieval for big catalogues: C candidates per request, then exact scoring.

With ``ServeConfig.candidates = C`` the service does not score every servable item: an
approximate search (:mod:`ralm.serve.candidate_index`, a faiss IVF index over one
retrieval vector per item) returns C candidate rows per request, and only those are scored
by the ONE scorer from the same prepared terms as exact scoring
(:func:`ralm.serve.scoring.score_batch`). The scores, pCTRs and order of what is returned
are therefore exact; only an item the search missed can be absent.

**Versions.** The retrieval index follows the served :class:`SeedIndex` incrementally:
:meth:`CandidateRetriever.sync` compares the new version with the last one it indexed,
chunk by chunk (chunks shared between versions are skipped at once, the rows of a changed
chunk are compared array by array), removes the vectors of changed rows and adds the new
vectors of the rows that are servable now. Ids are index rows, which never move between
versions (new items are appended). The service syncs after each publication (the
re-clustering thread) and a request syncs first when it sees a newer version than the
retrieval index (a follower replica, or the first request); while another thread syncs, a
request uses the previous retrieval index and keeps only the rows servable in its own
snapshot.

**Re-training rule.** The IVF lists and the norm bound are fixed when the index is built.
It is rebuilt from scratch (coarse k-means re-trained on the current vectors) when the
indexed vectors exceed ``retrain_growth`` times (default 2) the count it was trained on
(the lists would hold twice their intended length, and items of a new taste would pile
into a few lists), and on the first sync (or for other model weights); otherwise only the
changed items are touched. A new vector longer than the norm bound needs no re-training:
its completion coordinate is clipped to 0, which moves it off the sphere (its list is
chosen slightly worse) but leaves its inner product with every query exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ralm.lookalike.seed_index import IndexChunk, SeedIndex
from ralm.serve.candidate_index import CandidateIndex, CandidateKind, item_vectors, query_vectors
from ralm.serve.runtime import item_age

log = logging.getLogger(__name__)

_COMPARED = ("centroids", "mask", "sizes", "global_vec", "servable", "clustered_at")


@dataclass
class _State:
    """The retrieval index of one seed-index version."""

    snap: SeedIndex
    scorer: Any
    index: CandidateIndex
    indexed: np.ndarray  # bool (n_items,): rows with a vector in the index


def changed_rows(old: SeedIndex, new: SeedIndex) -> np.ndarray:
    """int64 rows of ``new`` whose item, arrays or servability differ from ``old``.

    Rows beyond ``old``'s end are new; rows beyond ``new``'s end (an index that shrank) are
    reported too, so their vectors are removed. Chunks shared by both are skipped.
    """
    out = []
    step = new.chunk_items
    n_chunks = max(len(old.chunks), len(new.chunks))
    for c in range(n_chunks):
        a = old.chunks[c] if c < len(old.chunks) else None
        b = new.chunks[c] if c < len(new.chunks) else None
        if a is b:
            continue
        if a is None or b is None or old.chunk_items != step:
            n = len(b if b is not None else a)  # type: ignore[arg-type]
            out.append(c * step + np.arange(n))
            continue
        n = min(len(a), len(b))
        diff = np.asarray(a.item_ids[:n] != b.item_ids[:n])
        for name in _COMPARED:
            x, y = getattr(a, name)[:n], getattr(b, name)[:n]
            diff |= (x != y).reshape(n, -1).any(axis=1)
        rows = np.flatnonzero(diff)
        extra = np.arange(n, max(len(a), len(b)))  # appended (or dropped) rows
        out.append(c * step + np.concatenate([rows, extra]))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def _sound(chunk: IndexChunk, local: np.ndarray) -> np.ndarray:
    """bool (R,): the rows are servable and every float array is finite."""
    ok = np.asarray(chunk.servable[local], dtype=bool)
    ok &= np.isfinite(chunk.centroids[local]).all(axis=(1, 2))
    ok &= np.isfinite(chunk.global_vec[local]).all(axis=1)
    return ok


def _servable_mask(snap: SeedIndex) -> np.ndarray:
    """bool (n_items,) servable rows of ``snap``, computed once per index object."""
    mask = snap.__dict__.get("_servable_mask")
    if mask is None:
        mask = np.zeros(snap.n_items, dtype=bool)
        mask[snap.servable_rows] = True
        snap.__dict__["_servable_mask"] = mask
    return mask


class CandidateRetriever:
    """The service's ANN pre-filter: one retrieval index following the served versions.

    Args:
        n_candidates: C, candidates retrieved per request.
        kind: retrieval vectors (:func:`ralm.serve.candidate_index.item_vectors`).
        nprobe: IVF lists probed per query.
        nlist: IVF lists (None: ``2 sqrt(items)``).
        retrain_growth: rebuild when the indexed items exceed this multiple of the count
            at the last build.
        seed: seed of the coarse k-means.
    """

    def __init__(
        self,
        n_candidates: int,
        kind: CandidateKind = "mean",
        nprobe: int = 32,
        nlist: int | None = None,
        retrain_growth: float = 2.0,
        seed: int = 0,
    ) -> None:
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        self.n_candidates = n_candidates
        self.kind: CandidateKind = kind
        self.nprobe = nprobe
        self.nlist = nlist
        self.retrain_growth = retrain_growth
        self.seed = seed
        self.builds = 0  # full (re-)builds so far
        self.updates = 0  # incremental updates so far
        self._state: _State | None = None
        self._write = threading.Lock()  # one sync at a time
        self._read = threading.Lock()  # faiss indexes are not safe to search while mutated

    @classmethod
    def from_config(cls, config: Any) -> CandidateRetriever:
        """A retriever from ``ServeConfig`` (``candidates`` must be set)."""
        return cls(
            config.candidates,
            kind=config.candidate_vectors,
            nprobe=config.candidate_nprobe,
            nlist=config.candidate_nlist,
            retrain_growth=config.candidate_retrain_growth,
            seed=config.seed,
        )

    @property
    def version(self) -> int | None:
        """Version of the seed index the retrieval index reflects (None: not built)."""
        st = self._state
        return None if st is None else st.snap.version

    @property
    def n_indexed(self) -> int:
        st = self._state
        return 0 if st is None else int(st.indexed.sum())

    # ---- vectors ---------------------------------------------------------------------
    def _vectors(self, scorer: Any, snap: SeedIndex, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Vectors, faiss ids and item rows of the sound servable rows among ``rows``."""
        vecs, ids, items = [], [], []
        which = rows // snap.chunk_items
        for c in np.unique(which).tolist():
            chunk = snap.chunks[c]
            local = rows[which == c] - c * snap.chunk_items
            local = local[local < len(chunk)]
            local = local[_sound(chunk, local)]
            if local.size == 0:
                continue
            t = {n: torch.from_numpy(getattr(chunk, n)[local]) for n in _COMPARED[:4]}
            age = item_age(scorer, torch.from_numpy(chunk.first_seen[local]), time.time())
            v, owner = item_vectors(
                scorer, t["centroids"], t["mask"], t["global_vec"], t["sizes"], self.kind, age
            )
            row = c * snap.chunk_items + local[owner]  # (V,) item row of each vector
            slot = np.zeros_like(row)
            if self.kind == "centroids":  # id = row * k + slot
                first = np.searchsorted(owner, owner)  # index of each item's first vector
                slot = np.arange(owner.size) - first
            vecs.append(v)
            ids.append(row * self._per_row(snap) + slot)
            items.append(c * snap.chunk_items + local)
        if not vecs:
            dim = snap.h + 1
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(vecs), np.concatenate(ids), np.concatenate(items)

    def _per_row(self, snap: SeedIndex) -> int:
        return snap.k if self.kind == "centroids" else 1

    def _build(self, scorer: Any, snap: SeedIndex) -> _State:
        vecs, ids, items = self._vectors(scorer, snap, np.arange(snap.n_items, dtype=np.int64))
        index = CandidateIndex.build(vecs, ids, self.nprobe, self.nlist, self.seed)
        indexed = np.zeros(snap.n_items, dtype=bool)
        indexed[items] = True
        self.builds += 1
        return _State(snap, scorer, index, indexed)

    # ---- following the versions ------------------------------------------------------
    def sync(self, scorer: Any, snap: SeedIndex) -> None:
        """Bring the retrieval index to ``snap`` (no-op when it is there or newer)."""
        with self._write:
            self._sync_locked(scorer, snap)

    def _sync_locked(self, scorer: Any, snap: SeedIndex) -> None:
        st = self._state
        if st is not None and st.scorer is scorer and st.snap.version >= snap.version:
            return
        if st is None or st.scorer is not scorer:
            new = self._build(scorer, snap)
            with self._read:
                self._state = new
            return
        changed = changed_rows(st.snap, snap)
        rows = changed[changed < snap.n_items]
        gone = changed[changed < st.indexed.size]
        gone = gone[st.indexed[gone]]  # rows whose old vectors leave the index
        vecs, ids, items = self._vectors(scorer, snap, rows)
        n_after = int(st.indexed.sum()) - gone.size + items.size
        if n_after > self.retrain_growth * max(st.index.n_trained, 1):
            log.info("candidate index: re-training (%d items, trained on %d)", n_after,
                     st.index.n_trained)  # fmt: skip
            new = self._build(scorer, snap)
            with self._read:
                self._state = new
            return
        per = self._per_row(snap)
        old_ids = (gone[:, None] * per + np.arange(per)[None, :]).reshape(-1)
        indexed = np.zeros(snap.n_items, dtype=bool)
        keep = min(st.indexed.size, snap.n_items)
        indexed[:keep] = st.indexed[:keep]
        indexed[gone[gone < snap.n_items]] = False
        indexed[items] = True
        with self._read:
            st.index.remove(old_ids)
            st.index.add(vecs, ids)
            self._state = _State(snap, scorer, st.index, indexed)
        self.updates += 1
        log.debug("candidate index v%d: -%d +%d items", snap.version, gone.size, items.size)

    # ---- search ----------------------------------------------------------------------
    def search(
        self, scorer: Any, snap: SeedIndex, e_u: torch.Tensor, want: Sequence[int]
    ) -> list[np.ndarray]:
        """Candidate rows of ``snap`` for each user: servable, at most ``want[b]`` each.

        When ``want[b]`` covers every indexed item, all of them are returned (so the
        result is exact). Rows are unique, best retrieval score first.

        Args:
            scorer: the stage-2 model (the retrieval index is rebuilt for another one).
            snap: the index the request is scored on.
            e_u: (B, h) transformed users.
            want: candidates wanted per user (B,).
        """
        st = self._state
        if st is None or st.scorer is not scorer:
            self.sync(scorer, snap)
        elif st.snap.version < snap.version and self._write.acquire(blocking=False):
            try:  # a sync already running elsewhere: use the previous index meanwhile
                self._sync_locked(scorer, snap)
            finally:
                self._write.release()
        per = self._per_row(snap)
        with self._read:
            st = self._state
            assert st is not None
            n_all = int(st.indexed.sum())
            top = min(max(want, default=0), n_all)
            if top >= n_all:
                every = np.flatnonzero(st.indexed).astype(np.int64)
                found = np.broadcast_to(every, (len(want), every.size))
            else:
                # several vectors per item ("centroids"): fetch more, keep each item once
                fetch = min(top * min(per, 4), st.index.ntotal)
                found = st.index.search(query_vectors(e_u), fetch) // per  # (B, fetch)
        servable = _servable_mask(snap)
        out = []
        for b, w in enumerate(want):
            r = found[b]
            r = r[(r >= 0) & (r < snap.n_items)]
            if per > 1:
                _, first = np.unique(r, return_index=True)
                r = r[np.sort(first)]
            r = r[servable[r]]
            out.append(r[:w])
        return out
