"""Ranking, classification and diversity metrics: pure numpy functions.

Top-K metrics take a boolean *hit matrix* ``hits (U, K)`` (``hits[u, r]`` is True when the
item ranked ``r`` for test user ``u`` is one of that user's test clicks) together with
``n_relevant (U,)``, the size of each user's test-click set ``S_u``. Build it from top-K
lists with :func:`hit_matrix`. Every function averages over test users, so a user with no
test clicks must not be passed (``n_relevant > 0``).

Diversity metrics (coverage, Gini, long-tail share) take the recommended item indices
``topk (U, K)`` and describe where exposure goes; they are how the paper's Matthew-effect
claim is measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def hit_matrix(topk: np.ndarray, truth: Sequence[np.ndarray]) -> np.ndarray:
    """``hits[u, r] = topk[u, r] in truth[u]``, bool (U, K).

    Args:
        topk: int (U, K) recommended item indices, best first.
        truth: per user, the item indices clicked in the test period.
    """
    topk = np.asarray(topk)
    if topk.shape[0] != len(truth):
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {len(truth)} users")
    hits = np.zeros(topk.shape, dtype=bool)
    for u, items in enumerate(truth):
        hits[u] = np.isin(topk[u], np.asarray(items))
    return hits


def _check(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or hits.shape[0] != n_rel.shape[0]:
        raise ValueError(f"hits {hits.shape} and n_relevant {n_rel.shape} do not match")
    if k < 1 or k > hits.shape[1]:
        raise ValueError(f"k={k} outside 1..{hits.shape[1]} (columns of the hit matrix)")
    if hits.shape[0] == 0:
        raise ValueError("no test users")
    if np.any(n_rel <= 0):
        raise ValueError("every test user needs at least one relevant item")
    return hits[:, :k], n_rel


def precision_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """prec@K of the paper (eq. 12): mean over users of |R_K ∩ S| / min(K, |S|).

    Args:
        hits: bool (U, >=K) hit matrix, best rank first.
        n_relevant: (U,) |S_u|, the number of test clicks of each user.
        k: cut-off K.
    """
    h, n_rel = _check(hits, n_relevant, k)
    return float(np.mean(h.sum(axis=1) / np.minimum(k, n_rel)))


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean over users of |R_K ∩ S| / |S|."""
    h, n_rel = _check(hits, n_relevant, k)
    return float(np.mean(h.sum(axis=1) / n_rel))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Binary-relevance NDCG@K: DCG = Σ_r hit_r / log2(r + 2), ideal = min(K, |S|) hits on top."""
    h, n_rel = _check(hits, n_relevant, k)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)  # (K,)
    dcg = (h * discount).sum(axis=1)  # (U,)
    ideal_cum = np.cumsum(discount)  # ideal DCG for 1..K relevant items
    idcg = ideal_cum[np.minimum(k, n_rel).astype(np.int64) - 1]
    return float(np.mean(dcg / idcg))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties count 1/2).

    Args:
        labels: (n,) 1 for a click, 0 for a non-click.
        scores: (n,) higher = more likely clicked.
    """
    y = np.asarray(labels) > 0
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    # average ranks (1-based) with ties sharing their mean rank
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    first = np.r_[True, sorted_s[1:] != sorted_s[:-1]]  # start of each tie group
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], s.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1..ends
    ranks = np.empty(s.size)
    ranks[order] = mean_rank[group]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-user AUC averaged with weights = the user's number of pairs.

    Users whose pairs are all positive or all negative have no AUC and are skipped
    (Zhu et al. 2017 / the usual industrial definition).
    """
    users = np.asarray(users)
    y = np.asarray(labels) > 0
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(users, kind="stable")
    u_sorted = users[order]
    bounds = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1], True])
    total, weight = 0.0, 0
    for a, b in itertools.pairwise(bounds):
        idx = order[a:b]
        n_pos = int(y[idx].sum())
        if n_pos == 0 or n_pos == idx.size:
            continue
        total += auc(y[idx], s[idx]) * idx.size
        weight += idx.size
    if weight == 0:
        raise ValueError("GAUC: no user has both a positive and a negative pair")
    return total / weight


def exposure_counts(topk: np.ndarray, n_items: int) -> np.ndarray:
    """How many times each item index appears in the recommendation lists, int64 (n_items,)."""
    flat = np.asarray(topk, dtype=np.int64).ravel()
    flat = flat[flat >= 0]
    return np.bincount(flat, minlength=n_items).astype(np.int64)


def coverage_at_k(topk: np.ndarray, candidates: np.ndarray) -> float:
    """Catalog coverage: share of the candidate items recommended to at least one user."""
    cand = np.asarray(candidates)
    if cand.size == 0:
        raise ValueError("empty candidate set")
    shown = np.unique(np.asarray(topk).ravel())
    return float(np.isin(cand, shown).sum() / cand.size)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of an exposure distribution (0 = equal exposure, →1 = one item gets all).

    Args:
        counts: (n,) non-negative exposure of every candidate item (zeros included).
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() <= 0:
        raise ValueError("Gini needs at least one item with positive exposure")
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def long_tail_items(
    popularity: np.ndarray, candidates: np.ndarray, head_frac: float = 0.2
) -> np.ndarray:
    """Candidate items outside the ``head_frac`` most popular ones (ties broken by item index).

    Args:
        popularity: (n_items,) click counts (TRAIN clicks for the warm protocol).
        candidates: item indices the ranking draws from.
        head_frac: share of candidates that forms the head (paper-style 20 %).
    Returns:
        bool (n_items,) mask, True for long-tail candidates.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    pop = np.asarray(popularity)[cand]
    order = np.lexsort((cand, -pop))  # most popular first, deterministic
    n_head = int(np.ceil(head_frac * cand.size))
    tail = np.zeros(np.asarray(popularity).shape[0], dtype=bool)
    tail[cand[order[n_head:]]] = True
    return tail


def slot_share(topk: np.ndarray, mask: np.ndarray) -> float:
    """Share of the recommended slots (``topk (U, K)``, -1 = empty) filled with items in
    ``mask (n_items,)``; e.g. the cold items' share of the top-K in the mixed protocol."""
    flat = np.asarray(topk, dtype=np.int64).ravel()
    flat = flat[flat >= 0]
    if flat.size == 0:
        raise ValueError("no recommendations")
    return float(np.asarray(mask)[flat].mean())


def long_tail_share(topk: np.ndarray, tail_mask: np.ndarray) -> float:
    """Share of recommended slots filled with long-tail items (:func:`slot_share`)."""
    return slot_share(topk, tail_mask)
