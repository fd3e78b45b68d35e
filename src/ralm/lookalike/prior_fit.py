"""Post-hoc choice of the audience prior's weight on a full-catalogue VALID ranking.

Stage 2 learns ``gamma`` (the weight of ``gamma log(1 + n_seeds)``) through its training
loss, a sampled softmax with a logQ correction; what is reported is a ranking of the whole
catalogue, and how much of it should come from audience size differs between data sets
(measured in docs/LOOKALIKE.md, "Audience-prior weight fitted on VALID"; on by default,
`fit_prior`). After training,
:func:`fit_prior_weight` scores VALID's ranking set (recall@K of VALID clicks among every
item with seeds, :func:`ralm.lookalike.validation.ranking_recall`, the metric of the
model selection) with ``gamma`` multiplied by each factor of a small grid, and keeps the
best factor, folded into the learned weight (``softplus(prior_weight) = factor *
gamma``): the checkpoint carries it and every scorer uses it (no model-config field).
A factor other than 1 must beat factor 1 by ``min_gain`` (relative), so VALID noise does
not move a well-trained weight.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import SeedIndex
from ralm.lookalike.validation import RankingSet, ranking_recall

log = logging.getLogger(__name__)

PRIOR_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0, 3.0)


def _softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (y > 0), stable for small and large y."""
    return y + math.log(-math.expm1(-y))


def fit_prior_weight(
    model: LookalikeModel,
    index: SeedIndex,
    seed_universal: np.ndarray,
    rs: RankingSet,
    k: int,
    factors: tuple[float, ...] = PRIOR_FACTORS,
    min_gain: float = 0.01,
) -> dict[str, Any]:
    """Multiply the model's audience-prior weight by the factor of ``factors`` with the
    best VALID recall@``k`` (in place) and return what was measured.

    Returns an empty dict (model unchanged) when the model has no additive log-count prior
    or its learned weight is 0. Otherwise ``{"prior_factor", "gamma_trained", "gamma",
    "recall_by_factor": {factor: recall}}``.
    """
    if not model.config.seed_prior or model.shrinks:
        return {}
    g0 = float(model.gamma.detach())
    if not g0 > 0.0 or not math.isfinite(g0):
        return {}
    if 1.0 not in factors:
        factors = (*factors, 1.0)
    model.eval()
    trained = model.prior_weight.detach().clone()
    recall: dict[float, float] = {}
    with torch.no_grad():
        for f in sorted(factors):
            model.prior_weight.fill_(_softplus_inverse(f * g0))
            recall[f] = float(ranking_recall(model, index, seed_universal, rs, k))
        best = max(recall, key=lambda f: (recall[f], -abs(math.log(f))))
        if not recall[best] > recall[1.0] * (1.0 + min_gain):
            best = 1.0
        if best == 1.0:
            model.prior_weight.copy_(trained)  # bit-for-bit the trained weight
        else:
            model.prior_weight.fill_(_softplus_inverse(best * g0))
    gamma = float(model.gamma.detach())
    log.info(
        "stage 2: audience-prior weight on VALID recall@%d: %s -> factor %g (gamma %.4g -> "
        "%.4g)", k, ", ".join(f"x{f:g} {r:.4f}" for f, r in recall.items()), best, g0, gamma,
    )  # fmt: skip
    return {
        "prior_factor": best,
        "gamma_trained": g0,
        "gamma": gamma,
        "recall_by_factor": {str(f): r for f, r in recall.items()},
    }
