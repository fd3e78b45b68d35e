"""Logistic regression on user features crossed with the item id (the paper's LR baseline).

    logit(u, i) = b_i + Σ_c x_u[c] · w[h(i, c)]

``x_u`` is the sparse user-feature vector of :class:`FeatureSpace` (one-hot categorical
values, averaged multivalent bags including the item-history field, raw continuous values);
every (item, feature column) cross has its own weight. The cross index ``i * D + c`` is
used as is when it fits ``n_hash`` (exact, the ML-100K case) and folded modulo ``n_hash``
(the hashing trick) otherwise. Trained with binary cross-entropy on TRAIN clicks vs
uniformly sampled non-clicked items with sparse Adagrad (only the weights a batch touches
are updated, the classic large-scale LR recipe); the target item is removed from the user's
history for positive examples. Items without TRAIN clicks have no trained weights and get the
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

    epochs: int = Field(default=2, ge=1, description="Passes over the TRAIN clicks.")
    neg_ratio: int = Field(default=4, ge=1, description="Sampled non-clicked items per click.")
    batch_size: int = Field(default=2048, ge=1, description="Examples per step.")
    lr: float = Field(default=0.2, gt=0, description="Adagrad learning rate.")
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
        self.w = torch.zeros(0)  # (n_hash,) crossed weights
        self.b = torch.zeros(0)  # (n_items,) item biases

    def _cross(self, items: torch.Tensor, cols: torch.Tensor, d: int) -> torch.Tensor:
        return (items * d + cols) % self.config.n_hash

    def _batch(
        self, users: np.ndarray, items: np.ndarray, exclude: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows (nnz,), crossed weight index (nnz,), values (nnz,), items (B,)) of a batch."""
        assert self.space is not None
        r, c, v = self.space.coo(users, exclude)  # (nnz,) each, duplicates add up
        rows = torch.from_numpy(r.astype(np.int64))
        cols = torch.from_numpy(c.astype(np.int64))
        vals = torch.from_numpy(v.astype(np.float32))
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))  # (B,)
        return rows, self._cross(it[rows], cols, self.space.n_columns), vals, it

    @staticmethod
    def _adagrad(
        param: torch.Tensor,
        acc: torch.Tensor,
        buf: torch.Tensor,
        idx: torch.Tensor,
        grad: torch.Tensor,
        lr: float,
    ) -> None:
        """Sparse Adagrad step on ``param[idx]``; ``buf`` is a zeroed gradient scratch.

        Duplicate indices first sum their gradients in ``buf``; the indexed writes below
        then store the same value for every duplicate, so each weight is updated once.
        """
        buf.index_add_(0, idx, grad)
        g = buf[idx]  # (nnz,) summed gradient of each touched weight
        acc[idx] = acc[idx] + g * g
        param[idx] = param[idx] - lr * g / (acc[idx].sqrt() + 1e-8)
        buf[idx] = 0.0

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        cfg = self.config
        self._ds = ds
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.space = FeatureSpace(ds, mode="linear")
        self.fallback = ItemFallback(ds, cfg.fallback, seed)
        self.w, acc_w, buf_w = (torch.zeros(cfg.n_hash) for _ in range(3))
        self.b, acc_b, buf_b = (torch.zeros(ds.n_items) for _ in range(3))
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
                rows, idx, vals, it = self._batch(users[sel], items[sel], excl[sel])
                wg = self.w[idx].requires_grad_()  # (nnz,) leaf: gathered weights
                bg = self.b[it].requires_grad_()  # (B,)
                logits = bg.index_add(0, rows, wg * vals)  # (B,)
                y = torch.from_numpy(labels[sel])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
                loss = loss + cfg.l2 * (wg * wg).sum() / sel.size
                loss.backward()  # type: ignore[no-untyped-call]
                assert wg.grad is not None and bg.grad is not None
                self._adagrad(self.w, acc_w, buf_w, idx, wg.grad, cfg.lr)
                self._adagrad(self.b, acc_b, buf_b, it, bg.grad, cfg.lr)
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
        d = self.space.n_columns
        if self.b.numel() * d <= self.config.n_hash:  # no hashing: w is an (items, D) matrix
            table = self.w[: self.b.numel() * d].view(-1, d)[items_t].numpy()  # (I, D)
            x = self.space.matrix(users)  # (B, D) sparse
            out = np.asarray(x @ table.T, dtype=np.float32) + self.b[items_t].numpy()[None, :]
            return self.fallback.apply(out, np.asarray(items))
        out = np.empty((users.size, items_t.numel()), dtype=np.float32)
        chunk = 32
        for a in range(0, users.size, chunk):
            r, c, v = self.space.coo(users[a : a + chunk])  # (nnz,) each
            rows, cols = torch.from_numpy(r.astype(np.int64)), torch.from_numpy(c.astype(np.int64))
            vals = torch.from_numpy(v.astype(np.float32))
            idx = self._cross(items_t[None, :], cols[:, None], d)  # (nnz, I)
            contrib = self.w[idx] * vals[:, None]  # (nnz, I)
            n = min(chunk, users.size - a)
            s = self.b[items_t].repeat(n, 1)  # (b, I)
            s.index_add_(0, rows, contrib)
            out[a : a + n] = s.numpy()
        return self.fallback.apply(out, np.asarray(items))
