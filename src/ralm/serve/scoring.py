"""Scoring one micro-batch of recommend requests on one index snapshot.

The math is stage 2's (:meth:`LookalikeModel.score` through the :class:`Scorer`
interface); this module only stacks the requests, masks and ranks. Only servable rows are
scored (each chunk keeps a compact copy of its servable rows, shared by every version that
shares the chunk), and non-finite scores rank last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ralm.lookalike.seed_index import SeedIndex
from ralm.serve.runtime import Scorer


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


def score_batch(
    scorer: Scorer, snap: SeedIndex, reqs: Sequence[ScoreRequest]
) -> list[RecommendResult]:
    """Top-n of every request of a micro-batch, all scored on the ONE index ``snap``.

    E_u is computed once for the batch; the stage-2 scorer runs once per index chunk over
    that chunk's *servable* rows only (non-servable rows are never scored); a non-finite
    score (NaN / inf) counts as -inf, so a damaged item never hides the good ones; excluded
    items are masked before one ``topk``.
    """
    rows = snap.servable_rows  # (R,) index rows the scorer sees, ascending
    if rows.size == 0:
        return [RecommendResult(snap.version, [], "") for _ in reqs]
    with torch.no_grad():
        u = torch.from_numpy(np.stack([r.universal for r in reqs]))  # (B, m)
        e_u = scorer.transform(u)  # (B, h)
        parts = []
        for c in snap.chunks:
            if c.servable_rows.size:
                t = c.scoring_tensors  # the chunk's servable rows
                parts.append(
                    scorer.score(
                        e_u, t["centroids"], t["mask"], t["global_vec"], gram=t["gram"],
                        sizes=t["sizes"],
                    )  # (B, R_c)
                )  # fmt: skip
        s = torch.cat(parts, dim=1)  # (B, R)
        s = torch.where(torch.isfinite(s), s, torch.full_like(s, -math.inf))
        for b, r in enumerate(reqs):
            ex = np.asarray([snap.row_of[i] for i in r.exclude if i in snap.row_of], np.int64)
            if ex.size:
                pos = np.minimum(np.searchsorted(rows, ex), rows.size - 1)
                pos = pos[rows[pos] == ex]  # excluded rows that are scored at all
                if pos.size:
                    s[b, torch.from_numpy(pos)] = -math.inf
        top = min(max(r.n for r in reqs), rows.size)
        top_s, top_i = torch.topk(s, top, dim=1)  # (B, top)
        top_p = scorer.pctr(top_s)  # (B, top)
    ids = snap.item_ids
    out = []
    for b, r in enumerate(reqs):
        keep = torch.isfinite(top_s[b, : r.n])
        items = [
            Recommendation(str(ids[rows[int(i)]]), float(p), float(sc))
            for i, p, sc in zip(
                top_i[b, : r.n][keep], top_p[b, : r.n][keep], top_s[b, : r.n][keep], strict=True
            )
        ]
        out.append(RecommendResult(snap.version, items, ""))
    return out
