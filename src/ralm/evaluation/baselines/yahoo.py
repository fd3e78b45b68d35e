"""Yahoo look-alike (Ma et al. 2016, "A sub-linear, massive-scale look-alike audience
extension system"), adapted to ranking items for a user.

Ma et al. extend an advertiser's seed audience in two parts: (1) MinHash/LSH over user
feature sets finds users similar to the seeds in sub-linear time; (2) a per-campaign
feature weighting (information value / weight of evidence of each feature among the seeds
vs. the whole population) scores candidates. Here every item is a "campaign" whose seeds
are its clickers in the allowed seed splits, and

    score(u, j) = log prior_j + Σ_fields mean_{f ∈ u, field} w_{j,f} + λ · lsh_{u,j}

- ``w_{j,f} = log(p_{j,f} / p_f)``: smoothed weight of evidence, ``p_{j,f} = (c_{j,f} +
  a p_f) / (n_j + a)`` with ``c_{j,f}`` the seeds of j having token f, ``n_j`` its seed
  count and ``p_f`` the share of all users having f; averaged per field so that the long
  item-history field does not drown the others;
- ``log prior_j = log((n_j + 1) / (Σ n + I))``: turns per-item scores into a naive-Bayes
  ranking comparable across items (Ma et al. rank users for one campaign and need none);
- ``lsh_{u,j}``: share of (band, seed) pairs of j that collide with u in a banded MinHash
  LSH of the users' token sets — the similarity Ma et al.'s LSH stage approximates.

Simplifications (documented in docs/EVALUATION.md): all (user, item) pairs are scored
exactly instead of retrieving LSH candidates first; the weighting is not learned with a
classifier; continuous features are bucketed into tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import Recommender, item_seed_csr
from ralm.evaluation.baselines.features import FeatureSpace

_PRIME = (1 << 31) - 1


@dataclass
class _ItemStats:
    """Per-item statistics of a seed set: (n,) arrays, (n, D) weights, LSH tables."""

    base: np.ndarray
    delta: sp.csr_matrix
    log_prior: np.ndarray
    n_seeds: np.ndarray
    lsh: list[sp.csc_matrix]


class YahooConfig(BaseModel):
    """Hyper-parameters of the Yahoo look-alike baseline."""

    smoothing: float = Field(
        default=100.0, gt=0, description="Pseudo-seeds a in the smoothed p_{j,f}."
    )
    n_bands: int = Field(default=16, ge=1, description="LSH bands.")
    rows_per_band: int = Field(default=2, ge=1, description="MinHash values per band.")
    lsh_weight: float = Field(default=30.0, ge=0, description="λ, weight of the LSH similarity.")
    n_buckets: int = Field(default=5, ge=1, description="Token buckets per continuous field.")


class YahooLookalike(Recommender):
    """Seed-set look-alike with MinHash/LSH similarity and per-item feature weighting.

    Args:
        config: hyper-parameters (:class:`YahooConfig`).
    """

    name = "Yahoo look-alike"

    def __init__(self, config: YahooConfig | None = None) -> None:
        super().__init__()
        self.config = config or YahooConfig()

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        cfg = self.config
        self._ds = ds
        self.space = FeatureSpace(ds, mode="tokens", n_buckets=cfg.n_buckets)
        x = self.space.matrix(np.arange(ds.n_users))  # (n_users, D) binary tokens
        self.x = x.tocsr()
        fcol = np.asarray(self.space.field_of_column)  # (D,)
        # per-field mean weights: each token weighs 1 / (tokens of its field in the row)
        coo = self.x.tocoo()
        per_field = sp.csr_matrix(
            (np.ones(coo.nnz), (coo.row, fcol[coo.col])), shape=(ds.n_users, len(ds.fields))
        )
        counts = np.asarray(per_field.toarray())  # (n_users, n_fields)
        self.x_norm = sp.csr_matrix(
            (coo.data / counts[coo.row, fcol[coo.col]], (coo.row, coo.col)), shape=x.shape
        )
        self.n_fields_present = (counts > 0).sum(axis=1).astype(np.float64)  # (n_users,)
        self.p_f = np.asarray(self.x.mean(axis=0)).ravel()  # (D,) population share
        # MinHash signatures -> one LSH bucket id per (user, band)
        rng = np.random.default_rng(seed)
        n_hash = cfg.n_bands * cfg.rows_per_band
        a = rng.integers(1, _PRIME, n_hash, dtype=np.int64)
        b = rng.integers(0, _PRIME, n_hash, dtype=np.int64)
        sig = np.full((ds.n_users, n_hash), _PRIME, dtype=np.int64)
        ptr = self.x.indptr
        hashed = (self.x.indices[:, None].astype(np.int64) * a + b) % _PRIME  # (nnz, n_hash)
        nonempty = np.flatnonzero(np.diff(ptr) > 0)
        sig[nonempty] = np.minimum.reduceat(hashed, ptr[nonempty], axis=0)
        bands = sig.reshape(ds.n_users, cfg.n_bands, cfg.rows_per_band)
        self.buckets = np.empty((ds.n_users, cfg.n_bands), dtype=np.int64)
        for band in range(cfg.n_bands):
            _, self.buckets[:, band] = np.unique(bands[:, band], axis=0, return_inverse=True)
        self.set_seed_splits((Split.TRAIN,))

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        if self._ds is None:
            return
        offsets, users = item_seed_csr(self.ds, self.seed_splits)
        self.total_seeds = float(users.size)
        self.stats = self._stats(offsets, users)

    def _stats(self, offsets: np.ndarray, users: np.ndarray) -> _ItemStats:
        """Per-item weights of evidence, prior and LSH tables from a seed CSR of n items."""
        ds, cfg = self.ds, self.config
        n_items = offsets.size - 1
        n_seeds = np.diff(offsets).astype(np.float64)  # (n,)
        seeds = sp.csr_matrix(
            (np.ones(users.size), users, offsets), shape=(n_items, ds.n_users)
        )  # (n, n_users) seed indicator
        c = (seeds @ self.x).tocsr()  # (n, D) seeds having each token
        # w = log((c + a p) / (n + a)) - log p = base_j + delta_{j,f}, delta = 0 where c = 0
        base = np.log(cfg.smoothing / (n_seeds + cfg.smoothing))  # (n,)
        cc = c.tocoo()
        p = self.p_f[cc.col]
        delta = np.log1p(cc.data / (cfg.smoothing * p))
        # the prior's normaliser is that of the current seed splits (Σ n + I)
        log_prior = np.log((n_seeds + 1.0) / (self.total_seeds + ds.n_items))
        lsh = []  # per band: (n, n_buckets) seeds of item j in bucket b
        for band in range(cfg.n_bands):
            bucket = self.buckets[:, band]
            onehot = sp.csr_matrix(
                (np.ones(ds.n_users), (np.arange(ds.n_users), bucket)),
                shape=(ds.n_users, int(bucket.max()) + 1),
            )
            lsh.append((seeds @ onehot).tocsc())
        return _ItemStats(
            base=base,
            delta=sp.csr_matrix((delta, (cc.row, cc.col)), shape=c.shape),  # (n, D)
            log_prior=log_prior,
            n_seeds=n_seeds,
            lsh=lsh,
        )

    def _score(self, st: _ItemStats, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        weight = np.asarray((self.x_norm[users] @ st.delta[items].T).toarray())  # (B, I)
        weight += self.n_fields_present[users, None] * st.base[None, items]
        collide = np.zeros((users.size, items.size))  # (B, I)
        for band, table in enumerate(st.lsh):
            cols = table[:, self.buckets[users, band]]  # (I_all, B) sparse
            collide += np.asarray(cols[items].toarray()).T
        denom = np.maximum(st.n_seeds[items], 1.0) * len(st.lsh)  # (I,)
        lsh = collide / denom[None, :]
        return st.log_prior[None, items] + weight + self.config.lsh_weight * lsh

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return self._score(self.stats, users, items)

    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        sets = [np.unique(np.asarray(s, dtype=np.int64)) for s in seed_sets]
        offsets = np.concatenate([[0], np.cumsum([s.size for s in sets])]).astype(np.int64)
        st = self._stats(offsets, np.concatenate(sets) if sets else np.zeros(0, np.int64))
        users = np.asarray(users, dtype=np.int64)
        return self._score(st, users, np.arange(len(sets)))  # (B, S)
