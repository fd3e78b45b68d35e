"""Logistic regression on user features crossed with the item id (the paper's LR baseline).

    logit(u, i) = b_i + Σ_c x_u[c] · w[h(i, c)]

``x_u`` is the sparse user-feature vector of :class:`FeatureSpace` (one-hot categorical
values, averaged multivalent bags including the item-history field, raw continuous values);
every (item, feature column) cross has its own weight. The cross index ``i * D + c`` is
used as is when it fits ``n_hash`` (exact, the ML-100K case) and folded modulo ``n_hash``
(the hashing trick) otherwise. Trained with binary cross-entropy on TRAIN clicks vs
uniformly sampled non-clicked items; the target item is removed from the user's history
for positive examples. Items without TRAIN clicks have no trained weights and get the
:class:`ItemFallback` score.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import FallbackKind, ItemFallback, Recommender, clicks
from ralm.evaluation.baselines.features import FeatureSpace
from ralm.evaluation.negatives import pair_keys, sample_negatives
from ralm.evaluation.progress import progress_disabled

log = logging.getLogger(__name__)


class LRConfig(BaseModel):
    """Hyper-parameters of the LR baseline."""

    epochs: int = Field(default=3, ge=1, description="Passes over the TRAIN clicks.")
    neg_ratio: int = Field(default=4, ge=1, description="Sampled non-clicked items per click.")
    batch_size: int = Field(default=1024, ge=1, description="Examples per step.")
    lr: float = Field(default=0.05, gt=0, description="SparseAdam learning rate.")
    l2: float = Field(default=1e-5, ge=0, description="L2 penalty on the weights used by a batch.")
    n_hash: int = Field(default=1 << 22, ge=1024, description="Size of the crossed-weight table.")
    fallback: FallbackKind = Field(
        default="popularity", description="Score rule for untrained items."
    )


class LogisticRegression(Recommender):
    """The paper's LR baseline: user features ⊗ item id, sparse weights.

    Args:
        config: hyper-parameters (:class:`LRConfig`).
    """

    name = "LR"

    def __init__(self, config: LRConfig | None = None) -> None:
        super().__init__()
        self.config = config or LRConfig()
        self.space: FeatureSpace | None = None
        self.fallback: ItemFallback | None = None
        self.w = torch.nn.Embedding(1, 1)
        self.b = torch.nn.Embedding(1, 1)

    def _cross(self, items: torch.Tensor, cols: torch.Tensor, d: int) -> torch.Tensor:
        return (items * d + cols) % self.config.n_hash

    def _logits(
        self, users: np.ndarray, items: np.ndarray, exclude: np.ndarray | None
    ) -> torch.Tensor:
        assert self.space is not None
        x = self.space.matrix(users, exclude).tocoo()  # (B, D) sparse
        rows = torch.from_numpy(x.row.astype(np.int64))  # (nnz,)
        cols = torch.from_numpy(x.col.astype(np.int64))
        vals = torch.from_numpy(x.data.astype(np.float32))
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))  # (B,)
        idx = self._cross(it[rows], cols, self.space.n_columns)  # (nnz,)
        w = self.w(idx).squeeze(-1)  # (nnz,)
        out = self.b(it).squeeze(-1).clone()  # (B,)
        return out.index_add(0, rows, w * vals)

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        cfg = self.config
        self._ds = ds
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.space = FeatureSpace(ds, mode="linear")
        self.fallback = ItemFallback(ds, cfg.fallback, seed)
        self.w = torch.nn.Embedding(cfg.n_hash, 1, sparse=True)
        self.b = torch.nn.Embedding(ds.n_items, 1, sparse=True)
        torch.nn.init.zeros_(self.w.weight)
        torch.nn.init.zeros_(self.b.weight)
        opt = torch.optim.SparseAdam([self.w.weight, self.b.weight], lr=cfg.lr)
        pu, pi = clicks(ds, (Split.TRAIN,))
        forbidden = pair_keys(pu, pi, ds.n_items)
        known = np.flatnonzero(self.fallback.known)
        for epoch in range(cfg.epochs):
            nu, ni = sample_negatives(pu, cfg.neg_ratio, known, forbidden, ds.n_items, rng)
            users = np.concatenate([pu, nu])
            items = np.concatenate([pi, ni])
            labels = np.concatenate([np.ones(pu.size), np.zeros(nu.size)]).astype(np.float32)
            excl = np.concatenate([pi, np.full(nu.size, -1)])  # target out of its own history
            order = rng.permutation(users.size)
            total, steps = 0.0, 0
            bar = tqdm(
                range(0, order.size, cfg.batch_size),
                desc=f"LR epoch {epoch + 1}/{cfg.epochs}",
                disable=progress_disabled(),
                leave=False,
            )
            for a in bar:
                sel = order[a : a + cfg.batch_size]
                logits = self._logits(users[sel], items[sel], excl[sel])  # (B,)
                y = torch.from_numpy(labels[sel])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
                steps += 1
            log.info("LR epoch %d: mean BCE %.4f", epoch + 1, total / max(steps, 1))

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        if self.fallback is not None:
            self.fallback.set_seed_splits(splits)

    def note(self) -> str | None:
        assert self.fallback is not None
        return self.fallback.note(self.name, Split.COLD_SEED in self.seed_splits)

    @torch.no_grad()
    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        assert self.space is not None and self.fallback is not None
        users = np.asarray(users, dtype=np.int64)
        items_t = torch.from_numpy(np.asarray(items, dtype=np.int64))  # (I,)
        out = np.empty((users.size, items_t.numel()), dtype=np.float32)
        d = self.space.n_columns
        chunk = 32
        for a in range(0, users.size, chunk):
            x = self.space.matrix(users[a : a + chunk]).tocoo()  # (b, D)
            rows = torch.from_numpy(x.row.astype(np.int64))  # (nnz,)
            cols = torch.from_numpy(x.col.astype(np.int64))
            vals = torch.from_numpy(x.data.astype(np.float32))
            idx = self._cross(items_t[None, :], cols[:, None], d)  # (nnz, I)
            contrib = self.w.weight[idx, 0] * vals[:, None]  # (nnz, I)
            s = self.b.weight[items_t, 0].repeat(x.shape[0], 1)  # (b, I)
            s.index_add_(0, rows, contrib)
            out[a : a + x.shape[0]] = s.numpy()
        return self.fallback.apply(out, np.asarray(items))
