"""The log-uniform sampler against eq. 3's closed form."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.errors import ConfigError
from ralm.user.sampler import LogUniformSampler, log_uniform_probs


def eq3(k: np.ndarray, d: int) -> np.ndarray:
    """Independent reference: p(rank k) = (log(k+2) - log(k+1)) / log(D+1)."""
    return np.array([(np.log(x + 2) - np.log(x + 1)) / np.log(d + 1) for x in k])


def test_probs_match_eq3_and_sum_to_one() -> None:
    d = 37
    np.testing.assert_allclose(log_uniform_probs(d), eq3(np.arange(d), d), rtol=1e-12)
    assert log_uniform_probs(d).sum() == pytest.approx(1.0, abs=1e-12)


def test_empirical_rank_frequencies_match_eq3() -> None:
    d, n = 500, 2_000_000
    sampler = LogUniformSampler(d, np.arange(d))
    ranks = sampler.sample_ranks(n, np.random.default_rng(0))
    assert ranks.min() >= 0 and ranks.max() < d
    freq = np.bincount(ranks, minlength=d) / n
    p = eq3(np.arange(d), d)
    # binomial std of the largest cell is sqrt(p(1-p)/n) ~ 3.3e-4; allow ~6 sigma
    assert np.abs(freq - p).max() < 2e-3
    # chi-square over the first 50 ranks (expected counts all large)
    exp = p[:50] * n
    chi2 = (((freq[:50] * n) - exp) ** 2 / exp).sum()
    assert chi2 < 100  # 49 dof: mean 49, p(chi2 > 100) < 1e-4


def test_items_are_drawn_by_rank_not_index() -> None:
    d = 50
    rank = np.random.default_rng(1).permutation(d)  # item j has popularity rank rank[j]
    sampler = LogUniformSampler(d, rank)
    items = sampler.sample(400_000, np.random.default_rng(2))
    freq = np.bincount(items, minlength=d) / items.size
    np.testing.assert_allclose(freq, eq3(rank, d), atol=3e-3)
    assert int(np.argmax(freq)) == int(np.flatnonzero(rank == 0)[0])
    np.testing.assert_allclose(sampler.probs(), eq3(rank, d), rtol=1e-12)
    np.testing.assert_allclose(np.exp(sampler.log_prob(np.arange(d))), sampler.probs())


def test_sampler_rejects_counts_instead_of_ranks() -> None:
    counts = np.array([10, 3, 3, 0])
    with pytest.raises(ConfigError, match="permutation"):
        LogUniformSampler(4, counts)
    with pytest.raises(ConfigError, match="shape"):
        LogUniformSampler(5, np.arange(4))


def test_single_item_and_seeded_determinism() -> None:
    s = LogUniformSampler(1, np.array([0]))
    assert (s.sample((3, 4), np.random.default_rng(0)) == 0).all()
    s = LogUniformSampler(100, np.arange(100))
    a = s.sample((8, 10), np.random.default_rng(5))
    b = s.sample((8, 10), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 10) and a.dtype == np.int64
