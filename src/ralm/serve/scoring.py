"""Scoring one micro-batch of recommend requests on one index snapshot.

The math is stage 2's (:meth:`LookalikeModel.score` through the :class:`Scorer`
interface); this module only stacks the requests, masks and ranks. Only servable rows are
scored (each chunk keeps a compact copy of its servable rows, shared by every version that
shares the chunk), and non-finite scores rank last.

The scorer's per-item constants (``LookalikeModel.prepare_items``: the flat centroid
table, slot weights with the size prior folded in, Gram matrices, |g|^2, the audience
prior) are computed once per chunk and model and cached on the chunk, so a request only
runs the matmul and the post-matmul chain; a new index version re-prepares only the
chunks it changed (the others are the same objects).

With a :class:`ralm.serve.candidates.CandidateRetriever` (``ServeConfig.candidates``), an
ANN search first picks C candidate rows per request and only those are scored, from the
same prepared terms (gathered from their chunks), so their scores equal exact scoring's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ralm.lookalike.seed_index import IndexChunk, SeedIndex
from ralm.serve.candidate_index import gather_terms
from ralm.serve.candidates import CandidateRetriever
from ralm.serve.runtime import Scorer, item_age, young_age


@dataclass(frozen=True)
class Recommendation:
    """One recommended item."""

    item_id: str
    pctr: float
    score: float


@dataclass
class RecommendResult:
    """Answer to one recommend request: items best first, and the index version used."""

    version: int
    items: list[Recommendation]
    user: str  # "known" | "features" | "stored-features"


@dataclass(frozen=True)
class ScoreRequest:
    """One queued request: universal embedding (m,), how many items, exclusions."""

    universal: np.ndarray  # float32 (m,)
    n: int
    exclude: frozenset[str] = field(default_factory=frozenset)


_TERMS_LOCK = threading.Lock()
# prepared terms of a chunk holding young items are refreshed this often (their audience
# prior changes with their age: the young-item rule of LookalikeModel.young_factor)
YOUNG_REFRESH_S = 60.0


def _has_young(scorer: Scorer, chunk: IndexChunk, now: float) -> bool:
    """True when some servable row of ``chunk`` is younger than the scorer's young age."""
    ya = young_age(scorer)
    if ya <= 0:
        return False
    fs = chunk.scoring_tensors["first_seen"]
    return bool(((fs > 0) & (now - fs < ya)).any())


def chunk_terms(
    scorer: Scorer, chunk: IndexChunk, dtype: str = "float32", now: float | None = None
) -> Any:
    """The scorer's prepared terms of ``chunk``'s servable rows, computed once and cached.

    Items' ages (the audience prior's young-item rule) are taken at ``now`` (default: the
    wall clock) when the terms are prepared; a chunk holding young items is prepared again
    once its terms are ``YOUNG_REFRESH_S`` old, so a young item's boost fades with its age
    whether or not its row changes.
    """
    when = time.time() if now is None else float(now)
    cache: dict[tuple[int, str], tuple[Scorer, Any, float, bool]] = chunk.__dict__.setdefault(
        "_prepared_terms", {}
    )
    key = (id(scorer), dtype)
    hit = cache.get(key)
    if hit is not None and hit[0] is scorer and not (hit[3] and when - hit[2] >= YOUNG_REFRESH_S):
        return hit[1]
    t = chunk.scoring_tensors
    age = item_age(scorer, t["first_seen"], when)
    extra = {} if age is None else {"age": age}
    with torch.no_grad():
        terms = scorer.prepare_items(
            t["centroids"], t["mask"], t["global_vec"], gram=t["gram"], sizes=t["sizes"],
            dtype=dtype, **extra,
        )  # fmt: skip
    with _TERMS_LOCK:
        cache[key] = (scorer, terms, when, _has_young(scorer, chunk, when))
    return terms


def _prepared(scorer: Scorer) -> bool:
    return hasattr(scorer, "prepare_items") and hasattr(scorer, "score_prepared")


def _score_chunk(scorer: Scorer, e_u: torch.Tensor, chunk: IndexChunk, dtype: str) -> torch.Tensor:
    if _prepared(scorer):
        return scorer.score_prepared(e_u, chunk_terms(scorer, chunk, dtype))  # (B, R_c)
    t = chunk.scoring_tensors  # a scorer without prepared terms (tests' stand-ins)
    return scorer.score(
        e_u, t["centroids"], t["mask"], t["global_vec"], gram=t["gram"], sizes=t["sizes"]
    )


def score_rows(
    scorer: Scorer, snap: SeedIndex, e_u: torch.Tensor, rows: np.ndarray, dtype: str = "float32"
) -> torch.Tensor:
    """Exact scores (B, R) of users e_u (B, h) against the given servable rows (R,) only.

    The rows' prepared terms are gathered from their chunks' cached terms (the same
    numbers :func:`score_batch` computes over whole chunks).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not _prepared(scorer):
        t = {n: torch.from_numpy(a) for n, a in snap.gather(rows, _SCORED).items()}
        return scorer.score(e_u, t["centroids"], t["mask"], t["global_vec"],
                            gram=t["gram"], sizes=t["sizes"])  # fmt: skip
    part, local = np.divmod(rows, snap.chunk_items)
    pos = np.empty_like(rows)
    chunks = sorted(set(part.tolist()))
    parts: dict[int, Any] = {}
    for c in chunks:
        chunk = snap.chunks[c]
        sel = part == c
        pos[sel] = np.searchsorted(chunk.servable_rows, local[sel])  # row in the chunk's terms
        parts[c] = chunk_terms(scorer, chunk, dtype)
    terms = gather_terms(parts, part, pos)  # items ordered by chunk, then as given
    order = np.argsort(part, kind="stable")  # the order gather_terms produced
    s = scorer.score_prepared(e_u, terms)  # (B, R) in that order
    out = torch.empty_like(s)
    out[:, torch.from_numpy(order)] = s
    return out


_SCORED = ("centroids", "mask", "global_vec", "gram", "sizes")


def _excluded_rows(snap: SeedIndex, req: ScoreRequest) -> np.ndarray:
    return np.asarray([snap.row_of[i] for i in req.exclude if i in snap.row_of], np.int64)


def _results(
    scorer: Scorer, snap: SeedIndex, s: torch.Tensor, rows: np.ndarray, n: int
) -> RecommendResult:
    """Top n of one request from its scores (R,) of ``rows`` (R,) (non-finite = -inf)."""
    s = torch.where(torch.isfinite(s), s, torch.full_like(s, -math.inf))
    top_s, top_i = torch.topk(s, min(n, rows.size))
    keep = torch.isfinite(top_s)
    top_s, top_i = top_s[keep], top_i[keep]
    top_p = scorer.pctr(top_s)
    ids = snap.item_ids
    items = [
        Recommendation(str(ids[rows[int(i)]]), float(p), float(sc))
        for i, p, sc in zip(top_i, top_p, top_s, strict=True)
    ]
    return RecommendResult(snap.version, items, "")


def score_candidates(
    scorer: Scorer,
    snap: SeedIndex,
    reqs: Sequence[ScoreRequest],
    retriever: CandidateRetriever,
    dtype: str = "float32",
) -> list[RecommendResult]:
    """Top-n of every request from its ANN candidates only, scored exactly.

    Each request retrieves ``max(C, n + |exclude|)`` candidates (so exclusions cannot
    leave it short), drops its excluded items and ranks the rest by their exact scores.
    """
    with torch.no_grad():
        u = torch.from_numpy(np.stack([r.universal for r in reqs]))  # (B, m)
        e_u = scorer.transform(u)  # (B, h)
        want = [max(retriever.n_candidates, r.n + len(r.exclude)) for r in reqs]
        found = retriever.search(scorer, snap, e_u, want)
        out = []
        for b, (r, rows) in enumerate(zip(reqs, found, strict=True)):
            ex = _excluded_rows(snap, r)
            if ex.size:
                rows = rows[~np.isin(rows, ex)]
            if rows.size == 0:
                out.append(RecommendResult(snap.version, [], ""))
                continue
            s = score_rows(scorer, snap, e_u[b : b + 1], rows, dtype)[0].float()  # (R,)
            out.append(_results(scorer, snap, s, rows, r.n))
    return out


def score_batch(
    scorer: Scorer,
    snap: SeedIndex,
    reqs: Sequence[ScoreRequest],
    dtype: str = "float32",
    candidates: CandidateRetriever | None = None,
) -> list[RecommendResult]:
    """Top-n of every request of a micro-batch, all scored on the ONE index ``snap``.

    E_u is computed once for the batch; the stage-2 scorer runs once per index chunk over
    that chunk's *servable* rows only (non-servable rows are never scored); a non-finite
    score (NaN / inf) counts as -inf, so a damaged item never hides the good ones; excluded
    items are masked before one ``topk``. ``dtype`` "bfloat16" scores from a half-precision
    centroid table (accuracy in docs/LOOKALIKE.md). With ``candidates`` only each
    request's ANN candidates are scored (:func:`score_candidates`).
    """
    rows = snap.servable_rows  # (R,) index rows the scorer sees, ascending
    if rows.size == 0:
        return [RecommendResult(snap.version, [], "") for _ in reqs]
    if candidates is not None:
        return score_candidates(scorer, snap, reqs, candidates, dtype)
    with torch.no_grad():
        u = torch.from_numpy(np.stack([r.universal for r in reqs]))  # (B, m)
        e_u = scorer.transform(u)  # (B, h)
        parts = [_score_chunk(scorer, e_u, c, dtype) for c in snap.chunks if c.servable_rows.size]
        s = torch.cat(parts, dim=1).float()  # (B, R), a new tensor
        s.nan_to_num_(nan=-math.inf, posinf=-math.inf)  # non-finite -> -inf, one pass
        for b, r in enumerate(reqs):
            ex = _excluded_rows(snap, r)
            if ex.size:
                pos = np.minimum(np.searchsorted(rows, ex), rows.size - 1)
                pos = pos[rows[pos] == ex]  # excluded rows that are scored at all
                if pos.size:
                    s[b, torch.from_numpy(pos)] = -math.inf
        top = min(max(r.n for r in reqs), rows.size)
        top_s, top_i = torch.topk(s, top, dim=1)  # (B, top)
        top_p = scorer.pctr(top_s)  # (B, top)
    ids = snap.item_ids
    # one conversion per batch (a float() per 0-d tensor cost ~5 ms at 32 x 50)
    top_id = ids[rows[top_i.numpy()]].tolist()  # (B, top) item ids
    top_pl, top_sl = top_p.tolist(), top_s.tolist()
    out = []
    for b, r in enumerate(reqs):
        items = [
            Recommendation(str(i), p, sc)
            for i, p, sc in zip(top_id[b][: r.n], top_pl[b][: r.n], top_sl[b][: r.n], strict=True)
            if math.isfinite(sc)
        ]
        out.append(RecommendResult(snap.version, items, ""))
    return out
