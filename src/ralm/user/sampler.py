"""Log-uniform negative sampler over item popularity RANK (paper eq. 3).

    p(rank k) = (log(k + 2) - log(k + 1)) / log(D + 1),   k = 0 .. D-1, 0 = most clicked

Drawn with the closed-form inverse CDF: the CDF up to rank k is log(k+2)/log(D+1), so for
u ~ U[0, 1), ``k = floor(exp(u * log(D + 1))) - 1`` (clipped to [0, D-1] against float
rounding). One vectorised numpy expression, no loop, no multinomial over the vocabulary.

Note the argument is the popularity *rank* of each item, not its click *count*: a known
bug in public implementations feeds counts, which samples by item index instead.
"""

from __future__ import annotations

import numpy as np

from ralm.errors import ConfigError


def log_uniform_probs(n: int) -> np.ndarray:
    """Eq. 3 probabilities of ranks ``0..n-1``, float64 (n,), summing to 1."""
    k = np.arange(n, dtype=np.float64)
    return (np.log(k + 2) - np.log(k + 1)) / np.log(n + 1)


class LogUniformSampler:
    """Draws item indices with probability eq. 3 of their popularity rank.

    Args:
        n_items: number of items ``D``.
        rank: int (n_items,) popularity rank of every item (a permutation of
            ``0..n_items-1``, 0 = most clicked), e.g. ``ds.item_popularity_rank()``.

    Example::

        sampler = LogUniformSampler(ds.n_items, ds.item_popularity_rank())
        neg = sampler.sample((256, 10), np.random.default_rng(0))  # item indices
        log_q = sampler.log_prob(neg)                               # for log-Q correction
    """

    def __init__(self, n_items: int, rank: np.ndarray) -> None:
        rank = np.asarray(rank, dtype=np.int64)
        if n_items < 1:
            raise ConfigError("log-uniform sampler needs at least one item")
        if rank.shape != (n_items,):
            raise ConfigError(f"rank has shape {rank.shape}, expected ({n_items},)")
        if not np.array_equal(np.sort(rank), np.arange(n_items)):
            raise ConfigError("rank must be a permutation of 0..n_items-1 (ranks, not counts)")
        self.n_items = n_items
        self.rank = rank
        self.item_of_rank = np.argsort(rank)  # (D,) rank -> item index
        self._log_d1 = float(np.log(n_items + 1))
        self._log_p_rank = np.log(log_uniform_probs(n_items))  # (D,) by rank

    def sample_ranks(self, shape: tuple[int, ...] | int, rng: np.random.Generator) -> np.ndarray:
        """Ranks drawn from eq. 3, int64 of ``shape``."""
        u = rng.random(shape)  # U[0, 1)
        k = np.floor(np.exp(u * self._log_d1)).astype(np.int64) - 1
        return np.clip(k, 0, self.n_items - 1)

    def sample(self, shape: tuple[int, ...] | int, rng: np.random.Generator) -> np.ndarray:
        """Item indices drawn from eq. 3 of their rank, int64 of ``shape``."""
        return self.item_of_rank[self.sample_ranks(shape, rng)]

    def probs(self) -> np.ndarray:
        """Sampling probability of every item, float64 (n_items,)."""
        return np.exp(self._log_p_rank[self.rank])

    def log_prob(self, items: np.ndarray) -> np.ndarray:
        """log Q(item) for the given item indices (any shape), float64."""
        return self._log_p_rank[self.rank[np.asarray(items, dtype=np.int64)]]
