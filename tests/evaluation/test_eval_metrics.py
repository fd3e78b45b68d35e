"""Metric functions against hand-computed cases and independent references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ralm.evaluation import metrics as M

# two users; top-3 lists; truth sets of size 2 and 4
TOPK = np.array([[5, 1, 7], [2, 3, 9]])
TRUTH = [np.array([1, 8]), np.array([9, 4, 6, 0])]


def test_hit_matrix():
    hits = M.hit_matrix(TOPK, TRUTH)
    assert hits.tolist() == [[False, True, False], [False, False, True]]


def test_precision_is_eq12():
    hits = M.hit_matrix(TOPK, TRUTH)
    n = np.array([2, 4])
    # K=3: user0 1/min(3,2)=0.5, user1 1/min(3,4)=1/3
    assert M.precision_at_k(hits, n, 3) == pytest.approx((0.5 + 1 / 3) / 2)
    # K=1: no hits at rank 0
    assert M.precision_at_k(hits, n, 1) == 0.0
    # K=2: user0 1/2, user1 0/2
    assert M.precision_at_k(hits, n, 2) == pytest.approx(0.25)


def test_recall_and_ndcg():
    hits = M.hit_matrix(TOPK, TRUTH)
    n = np.array([2, 4])
    assert M.recall_at_k(hits, n, 3) == pytest.approx((1 / 2 + 1 / 4) / 2)
    # user0: hit at rank 1 -> 1/log2(3); ideal 2 hits: 1 + 1/log2(3)
    u0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    # user1: hit at rank 2 -> 1/log2(4)=0.5; ideal 3 hits: 1 + 1/log2(3) + 0.5
    u1 = 0.5 / (1 + 1 / np.log2(3) + 0.5)
    assert M.ndcg_at_k(hits, n, 3) == pytest.approx((u0 + u1) / 2)
    perfect = np.array([[True, True, False]])
    assert M.ndcg_at_k(perfect, np.array([2]), 3) == pytest.approx(1.0)


def test_metric_input_errors():
    hits = M.hit_matrix(TOPK, TRUTH)
    with pytest.raises(ValueError):
        M.precision_at_k(hits, np.array([2, 0]), 3)  # a user without test clicks
    with pytest.raises(ValueError):
        M.precision_at_k(hits, np.array([2, 4]), 4)  # K beyond the lists
    with pytest.raises(ValueError):
        M.hit_matrix(TOPK, TRUTH[:1])


def test_auc_hand_and_sklearn():
    # positives 0.9, 0.4; negatives 0.5, 0.1 -> pairs won: (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3/4
    assert M.auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    # ties count one half
    assert M.auc(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # many ties
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(ValueError):
        M.auc(np.ones(3), np.arange(3.0))


def test_gauc_weights_by_pairs_and_skips_single_class_users():
    users = np.array([0, 0, 0, 1, 1, 2, 2])
    labels = np.array([1, 0, 0, 1, 0, 1, 1])  # user 2 has no negative: skipped
    scores = np.array([0.9, 0.5, 0.95, 0.1, 0.2, 0.3, 0.4])
    # user0 AUC = 1/2 (3 pairs), user1 AUC = 0 (2 pairs)
    assert M.gauc(users, labels, scores) == pytest.approx((0.5 * 3 + 0.0 * 2) / 5)


def test_coverage_gini_tail():
    topk = np.array([[0, 1], [0, 2]])
    cand = np.array([0, 1, 2, 3])
    assert M.coverage_at_k(topk, cand) == pytest.approx(3 / 4)
    counts = M.exposure_counts(topk, 4)
    assert counts.tolist() == [2, 1, 1, 0]
    assert M.gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert M.gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)  # (n-1)/n for one item
    # reference: mean absolute difference / (2 mean)
    x = np.array([2.0, 1.0, 1.0, 0.0])
    ref = np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean())
    assert M.gini(x) == pytest.approx(ref)
    pop = np.array([100, 50, 10, 1, 0])
    tail = M.long_tail_items(pop, np.array([0, 1, 2, 3, 4]), head_frac=0.2)
    assert tail.tolist() == [False, True, True, True, True]  # head = top 1 of 5
    assert M.long_tail_share(topk, tail) == pytest.approx(2 / 4)


def test_recall_and_ndcg_at_20_by_hand():
    """The full-ranking protocol's metrics on a hand-made 20-slot list."""
    topk = np.full((2, 20), -1)
    topk[0, :20] = np.arange(100, 120)
    topk[0, [0, 4, 19]] = [1, 2, 3]  # user 0: hits at ranks 1, 5, 20 of 4 relevant items
    topk[1, :20] = np.arange(200, 220)
    topk[1, 1] = 7  # user 1: one hit at rank 2 of 1 relevant item
    truth = [np.array([1, 2, 3, 4]), np.array([7])]
    hits = M.hit_matrix(topk, truth)
    n = np.array([4, 1])
    assert M.recall_at_k(hits, n, 20) == pytest.approx((3 / 4 + 1) / 2)
    assert M.recall_at_k(hits, n, 5) == pytest.approx((2 / 4 + 1) / 2)
    dcg0 = 1 / np.log2(2) + 1 / np.log2(6) + 1 / np.log2(21)
    idcg0 = 1 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(4) + 1 / np.log2(5)
    dcg1 = 1 / np.log2(3)
    assert M.ndcg_at_k(hits, n, 20) == pytest.approx((dcg0 / idcg0 + dcg1 / 1.0) / 2)


def test_slot_share_counts_filled_slots_only():
    topk = np.array([[0, 3, -1], [3, 4, 5]])
    mask = np.zeros(6, dtype=bool)
    mask[[3, 5]] = True
    assert M.slot_share(topk, mask) == pytest.approx(3 / 5)  # 5 filled slots, 3 in the mask
    assert M.long_tail_share(topk, mask) == M.slot_share(topk, mask)
    with pytest.raises(ValueError, match="no recommendations"):
        M.slot_share(np.full((1, 2), -1), mask)
