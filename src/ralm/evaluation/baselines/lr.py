"""Logistic regression on user features crossed with the item id (the paper's LR baseline).

    logit(u, i) = b_i + Σ_c x_u[c] · W[c, i]

``x_u`` is the sparse user-feature vector of :class:`FeatureSpace` (one-hot categorical
values, averaged multivalent bags including the item-history field, raw continuous values);
every (feature column, item) cross has its own weight ``W[c, i]`` — one logistic regression
per item sharing nothing, which is exactly "user features x item id" with one-hot items.

Training is full-information BCE over every (user, known item) pair of the training view:
TRAIN clicks are positives, all other pairs negatives, the negatives re-weighted so that
they count ``neg_ratio`` times the positives (the expectation of uniform negative sampling
at that ratio, without its variance). Mini-batches of users x all items; cost per epoch
O(users x items x nnz per user), fine for evaluation-scale data (ML-100K / ML-1M).

Leakage guard: the weight of "item i is in the user's history" for item i itself is pinned
to 0 (``W[history_i, i] = 0``), so the model can never predict a click from the click itself;
at test time a user's history holds TRAIN clicks only. Items without TRAIN clicks have no
trained weights and get the :class:`ItemFallback` score.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import FallbackKind, IdBasedRecommender, ItemFallback, clicks
from ralm.evaluation.baselines.features import FeatureSpace

log = logging.getLogger(__name__)


class LRConfig(BaseModel):
    """Hyper-parameters of the LR baseline."""

    epochs: int = Field(default=15, ge=1, description="Passes over all users.")
    batch_users: int = Field(default=256, ge=1, description="Users per step (x all items).")
    neg_ratio: float = Field(default=4.0, gt=0, description="Total negative weight / positives.")
    lr: float = Field(default=0.05, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="L2 on the crossed weights.")
    fallback: FallbackKind = Field(default="popularity", description="Untrained-item scores.")


def _sparse(x: sp.csr_matrix) -> torch.Tensor:
    """scipy CSR (B, D) -> torch sparse COO tensor (B, D)."""
    coo = x.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        idx, torch.tensor(coo.data), coo.shape, check_invariants=False
    ).coalesce()


class LogisticRegression(IdBasedRecommender):
    """The paper's LR baseline: user features x item id.

    Args:
        config: hyper-parameters (:class:`LRConfig`).
    """

    name = "LR"

    def __init__(self, config: LRConfig | None = None) -> None:
        super().__init__()
        self.config = config or LRConfig()
        self.space: FeatureSpace | None = None
        self.w = torch.zeros(0, 0)  # (D, n_items)
        self.b = torch.zeros(0)  # (n_items,)

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        cfg = self.config
        self._ds = ds
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.space = FeatureSpace(ds, mode="linear")
        self.fallback = ItemFallback(ds, cfg.fallback, seed)
        known = torch.from_numpy(self.fallback.known)  # (I,) items with TRAIN clicks
        x_all = self.space.matrix(np.arange(ds.n_users))  # (n_users, D)
        pu, pi = clicks(ds, (Split.TRAIN,))
        y_all = torch.zeros(ds.n_users, ds.n_items)
        y_all[torch.from_numpy(pu), torch.from_numpy(pi)] = 1.0  # (n_users, I)
        n_pos = float(y_all.sum())
        n_neg = float(known.sum()) * ds.n_users - n_pos
        neg_w = cfg.neg_ratio * n_pos / max(n_neg, 1.0)
        w = torch.zeros(self.space.n_columns, ds.n_items, requires_grad=True)  # (D, I)
        b = torch.zeros(ds.n_items, requires_grad=True)  # (I,)
        opt = torch.optim.Adam([w, b], lr=cfg.lr)
        hist = ds.history_field
        diag_r = diag_c = torch.zeros(0, dtype=torch.long)
        if hist is not None:  # W[column of "history contains item i", i] stays 0
            diag_c = torch.arange(ds.n_items)
            diag_r = self.space.offsets[hist] + 1 + diag_c
        norm = n_pos * (1.0 + cfg.neg_ratio)
        for epoch in tqdm(range(cfg.epochs), desc="LR", disable=progress_disabled(), leave=False):
            order = rng.permutation(ds.n_users)
            total = 0.0
            for a in range(0, order.size, cfg.batch_users):
                users = order[a : a + cfg.batch_users]
                xb = _sparse(x_all[users])  # (B, D)
                logits = torch.sparse.mm(xb, w) + b  # (B, I)
                y = y_all[torch.from_numpy(users)]  # (B, I)
                weight = torch.where(y > 0, 1.0, neg_w) * known  # (B, I)
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y, weight=weight, reduction="sum"
                )
                loss = bce / norm + cfg.weight_decay * (w * w).sum()
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                with torch.no_grad():
                    w[diag_r, diag_c] = 0.0
                total += float(bce.detach())
            if epoch == 0 or epoch + 1 == cfg.epochs:
                log.info("LR epoch %d: weighted BCE %.4f", epoch + 1, total / norm)
        self.w, self.b = w.detach(), b.detach()

    @torch.no_grad()
    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        assert self.space is not None and self.fallback is not None
        items = np.asarray(items, dtype=np.int64)
        x = self.space.matrix(np.asarray(users, dtype=np.int64))  # (B, D) sparse
        out = np.asarray(x @ self.w[:, items].numpy()) + self.b[items].numpy()[None, :]  # (B, I)
        return self.fallback.apply(out, items)
