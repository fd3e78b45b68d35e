"""The user baseline of the look-alike score, fitted on VALID after training.

RALM's score is a cosine between the target user and an item's seeds. Users whose
transformed embedding points along the direction every audience shares get high
cosines with every item, and users off that direction get low ones. That level says
how typical the user is, not which items they click. Each user's ranking ignores it,
but it moves a user's scores against other users' scores: the pooled AUC of (user,
item) pairs and the pCTR compare scores across users. Measured on ML-100K (seed 0, the
demo's settings), RALM's pooled warm AUC was 0.814 while its per-user AUC (GAUC) was
0.828.

The model can subtract a per-user baseline ``w cos(e_u, d)`` from every score of user
``u`` (:meth:`ralm.lookalike.model.LookalikeModel.user_offset`). ``d`` is the mean unit
global vector over the indexed items, so ``cos(e_u, d)`` is the user's mean global
cosine over those items (:func:`offset_direction`). ``w`` comes from a logistic
regression of VALID labels on the score and ``cos(e_u, d)`` (:func:`fit_offset_weight`):
``w = -c / a`` for the fitted ``a s + c cos(e_u, d) + b``. The examples are VALID's
clicks against negatives drawn uniformly among the items with seeds, as ``d`` averages
over items uniformly (stage 2's own VALID negatives follow ``neg_sampling``). It is kept
only when the pooled AUC of those examples does not fall. Each user's ranking is
unchanged; the pCTR's scale and bias are refitted on the adjusted scores afterwards
(``calibrate``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ralm.evaluation import metrics
from ralm.lookalike.calibration import fit_logistic
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.scorer_math import safe_cos
from ralm.lookalike.seed_index import SeedIndex

log = logging.getLogger(__name__)


def offset_direction(index: SeedIndex) -> torch.Tensor:
    """``d`` (h,): the mean of the unit global vectors of the index's items with seeds
    (zeros when no item has a seed)."""
    have = np.flatnonzero(np.asarray(index.sizes).sum(axis=1) > 0)
    if have.size == 0:
        return torch.zeros(np.asarray(index.global_vec).shape[1])
    g = torch.from_numpy(np.ascontiguousarray(np.asarray(index.global_vec)[have], np.float32))
    return torch.nn.functional.normalize(g.double(), dim=1).mean(dim=0).float()


def user_cosines(model: LookalikeModel, universal: np.ndarray, d: torch.Tensor) -> np.ndarray:
    """``cos(e_u, d)`` (N,) of universal embeddings (N, m) through the model's transform."""
    with torch.no_grad():
        e = model.transform(torch.from_numpy(np.ascontiguousarray(universal, np.float32)))
        return safe_cos(e @ d, (e * e).sum(dim=-1), (d * d).sum()).numpy()


def fit_offset_weight(scores: np.ndarray, base: np.ndarray, labels: np.ndarray) -> float:
    """``w`` of the baseline: ``-c / a`` of the logistic fit ``a s + c base + b`` of the
    labels, or 0 when the fit gives the score no positive weight."""
    a, c, _ = fit_logistic(np.stack([scores, base], axis=1), labels)
    return float(-c / a) if a > 0 and np.isfinite(c / a) else 0.0


def fit_user_offset(
    model: LookalikeModel,
    index: SeedIndex,
    scores: np.ndarray,
    target_universal: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Fit and set the model's user baseline on VALID examples.

    Args:
        model: the trained model; its baseline must be unset (weight 0).
        index: the seed index the model was selected with (for ``d``).
        scores: (N,) the model's VALID scores (without a baseline).
        target_universal: (N, m) universal embeddings of the examples' users.
        labels: (N,) 1 = click, 0 = sampled negative.

    Returns:
        ``user_offset_weight`` (0 when not kept) and VALID's pooled AUC before and after;
        empty when VALID has one class only.
    """
    y = np.asarray(labels, np.float64)
    if not 0 < y.sum() < y.size:
        return {}
    if float(model.user_offset_weight) != 0.0:
        raise ValueError("the model already has a user baseline; fit it on raw scores")
    d = offset_direction(index)
    base = user_cosines(model, target_universal, d)
    s = np.asarray(scores, np.float64)
    w = fit_offset_weight(s, base, y)
    before = metrics.auc(y, s)
    after = metrics.auc(y, s - w * base)
    if not after >= before:  # the fit is for the likelihood; keep it only if AUC holds
        w, after = 0.0, before
    with torch.no_grad():
        model.user_offset_dir.copy_(d)
        model.user_offset_weight.fill_(w)
    log.info(
        "stage 2: user baseline weight %.3f fitted on VALID: pooled AUC %.4f -> %.4f",
        w, before, after,
    )  # fmt: skip
    return {"user_offset_weight": w, "val_auc_raw": before, "val_auc_offset": after}
