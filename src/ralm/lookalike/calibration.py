"""Calibration of the pCTR head: expected calibration error (ECE) on labelled examples.

``ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)|`` over ``bins`` equal-width bins of
the predicted probability (Naeini et al. 2015). Stage 2 reports it on VALID (clicks vs its
sampled negatives, so the probabilities are calibrated to that click share).
"""

from __future__ import annotations

import numpy as np


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of predicted probabilities ``probs`` (n,) against 0/1 ``labels`` (n,).

    Args:
        labels: 0/1 outcomes (n,).
        probs: predicted probabilities in [0, 1] (n,).
        bins: number of equal-width probability bins (the last one includes 1.0).

    Returns:
        The ECE in [0, 1]; NaN for no examples.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    if y.size == 0:
        return float("nan")
    b = np.minimum((np.clip(p, 0.0, 1.0) * bins).astype(np.int64), bins - 1)  # (n,)
    gap = np.abs(np.bincount(b, y, minlength=bins) - np.bincount(b, p, minlength=bins))
    return float(gap.sum() / y.size)


def fit_logistic(features: np.ndarray, labels: np.ndarray, iters: int = 50) -> np.ndarray:
    """Weights ``(w_1 .. w_f, b)`` minimising the BCE of ``sigmoid(x w + b)`` against 0/1
    labels, by Newton's method (convex; a few steps suffice).

    Args:
        features: (n, f) inputs.
        labels: (n,) 0/1 outcomes.
        iters: most Newton steps.
    """
    f = np.asarray(features, dtype=np.float64)
    f = f.reshape(f.shape[0], -1)
    y = np.asarray(labels, dtype=np.float64).ravel()
    x = np.concatenate([f, np.ones((f.shape[0], 1))], axis=1)  # (n, f + 1)
    prior = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if y.size else 0.5
    w = np.zeros(x.shape[1])
    w[-1] = np.log(prior / (1 - prior))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def fit_platt(scores: np.ndarray, labels: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """``(a, b)`` minimising the BCE of ``sigmoid(a s + b)`` against 0/1 labels (Newton).

    Args:
        scores: raw scores (n,).
        labels: 0/1 outcomes (n,).
        iters: Newton steps (the problem is convex in (a, b); a few suffice).
    """
    a, b = fit_logistic(np.asarray(scores, dtype=np.float64).reshape(-1, 1), labels, iters)
    return float(a), float(b)


def cross_fitted_ece(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of a Platt fit measured out of sample: fit on half of the examples (even
    positions), measure on the other half, and the reverse; the mean of the two."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    out = []
    for fit_half in (0, 1):
        fit = np.arange(s.size) % 2 == fit_half
        if fit.sum() == 0 or (~fit).sum() == 0:
            continue
        a, b = fit_platt(s[fit], y[fit])
        p = 1.0 / (1.0 + np.exp(-(a * s[~fit] + b)))
        out.append(expected_calibration_error(y[~fit], p, bins))
    return float(np.mean(out)) if out else float("nan")
