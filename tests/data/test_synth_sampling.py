"""Sampling primitives of the synthetic generator against independent references."""

from __future__ import annotations

import numpy as np

from ralm.data.features import csr_from_pairs
from ralm.data.synth import SynthConfig
from ralm.data.synth_encode import csr_distinct
from ralm.data.synth_sampling import (
    cover_items,
    draw_rows,
    heavy_tailed_counts,
    segment_keys,
    sorted_unique,
    unique_clicks,
)


def test_draw_rows_matches_row_distributions() -> None:
    probs = np.array([[0.7, 0.0, 0.3], [0.1, 0.2, 0.7]])
    rng = np.random.default_rng(0)
    rows = np.repeat([0, 1], 50_000)
    cat = draw_rows(segment_keys(probs), rows, 3, rng)
    for r in (0, 1):
        freq = np.bincount(cat[rows == r], minlength=3) / 50_000
        np.testing.assert_allclose(freq, probs[r], atol=0.01)
    assert not np.any(cat[rows == 0] == 1)  # zero-probability category never drawn


def test_heavy_tailed_counts_respect_cap_and_total() -> None:
    cfg = SynthConfig(n_users=1_000, n_items=400, n_clicks=50_000, clicks_sigma=3.0)
    counts = heavy_tailed_counts(cfg, np.random.default_rng(0))
    assert counts.sum() == 50_000 and counts.min() >= 1 and counts.max() <= cfg.click_cap


def test_unique_clicks_finishes_when_the_model_repeats_itself() -> None:
    counts = np.array([5, 1, 8])

    def always_item_zero(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(users.shape[0], dtype=np.int64)

    user, item = unique_clicks(counts, 10, always_item_zero, np.random.default_rng(0))
    np.testing.assert_array_equal(np.bincount(user), counts)
    assert np.unique(user * 10 + item).size == counts.sum()


def test_sorted_unique_equals_np_unique() -> None:
    x = np.random.default_rng(0).integers(0, 50, 1_000)
    np.testing.assert_array_equal(sorted_unique(x), np.unique(x))
    assert sorted_unique(np.zeros(0, np.int64)).size == 0


def testcsr_distinct_equals_the_data_layer_reference() -> None:
    rng = np.random.default_rng(1)
    rows, values = rng.integers(0, 30, 500), rng.integers(1, 40, 500)
    ref = csr_from_pairs(rows, values, 35, unique=True)
    got = csr_distinct(rows, values, 35)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_cover_items_gives_every_item_one_click_within_user_budgets() -> None:
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 6, 200)
    user_topic = rng.integers(0, 5, 200)
    item_topic = rng.permutation(np.arange(60) % 5)
    keys = cover_items(counts, user_topic, item_topic, rng)
    user, item = keys // 60, keys % 60
    np.testing.assert_array_equal(np.sort(item), np.arange(60))
    assert np.all(np.bincount(user, minlength=200) <= counts)
    # enough favourite-topic slots here, so every forced click follows the topic
    np.testing.assert_array_equal(user_topic[user], item_topic[item])
