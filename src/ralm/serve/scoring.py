"""Scoring one micro-batch of recommend requests on one index snapshot.

The math is stage 2's (:meth:`LookalikeModel.score` through the :class:`Scorer`
interface); this module only stacks the requests, masks and ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ralm.serve.index_holder import IndexSnapshot
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
    scorer: Scorer, snap: IndexSnapshot, reqs: Sequence[ScoreRequest]
) -> list[RecommendResult]:
    """Top-n of every request of a micro-batch, all scored on the ONE snapshot ``snap``.

    E_u is computed once for the batch; the stage-2 scorer runs once per index chunk over
    all its items; non-servable and excluded items are masked before one ``topk``.
    """
    if snap.n_servable == 0:
        return [RecommendResult(snap.version, [], "") for _ in reqs]
    with torch.no_grad():
        u = torch.from_numpy(np.stack([r.universal for r in reqs]))  # (B, m)
        e_u = scorer.transform(u)  # (B, h)
        parts = [
            scorer.score(e_u, c.centroids, c.mask, c.global_vec, gram=c.gram, sizes=c.sizes)
            for c in snap.chunks
        ]
        s = torch.cat(parts, dim=1)  # (B, I)
        s = s.masked_fill(~snap.servable[None, :], -math.inf)
        for b, r in enumerate(reqs):
            rows = [snap.row_of[i] for i in r.exclude if i in snap.row_of]
            if rows:
                s[b, torch.as_tensor(rows)] = -math.inf
        top = min(max(r.n for r in reqs), snap.n_items)
        top_s, top_i = torch.topk(s, top, dim=1)  # (B, top)
        top_p = scorer.pctr(top_s)  # (B, top)
    out = []
    for b, r in enumerate(reqs):
        keep = torch.isfinite(top_s[b, : r.n])
        items = [
            Recommendation(snap.item_ids[int(i)], float(p), float(sc))
            for i, p, sc in zip(
                top_i[b, : r.n][keep], top_p[b, : r.n][keep], top_s[b, : r.n][keep], strict=True
            )
        ]
        out.append(RecommendResult(snap.version, items, ""))
    return out
