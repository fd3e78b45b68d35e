"""The stage-1 training task: user tower + item table + sampled softmax (eq. 3 sampler).

``UserTrainTask(batch)`` returns the loss, so the training loop (and a DDP wrapper) only
ever calls the task. Batches are built outside ``forward`` by :meth:`UserTrainTask.make_batch`
(features with the target removed from the history, eq. 3 negatives, their log Q), which is
what a data loader's collate step would do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ralm.data.batching import UserBatch, gather_users
from ralm.data.encoded import EncodedDataset
from ralm.user.config import UserTrainConfig
from ralm.user.sampled_softmax import sampled_softmax_loss
from ralm.user.sampler import LogUniformSampler
from ralm.user.tower import UserItemModel


@dataclass
class UserTrainBatch:
    """B training rows: a user, one clicked item and K sampled negatives each.

    Attributes:
        users: features of the B users, each row's target removed from its history.
        pos: int64 (B,) clicked item of each row.
        neg: int64 (B, K) sampled negatives (log-uniform over popularity rank, eq. 3).
        pos_log_q: float (B,) log Q of the positives, or None without log-Q correction.
        neg_log_q: float (B, K) log Q of the negatives, or None.
    """

    users: UserBatch
    pos: torch.Tensor
    neg: torch.Tensor
    pos_log_q: torch.Tensor | None = None
    neg_log_q: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.pos.shape[0])


class UserTrainTask(nn.Module):
    """Stage 1 as a module whose ``forward(batch)`` is the sampled-softmax loss.

    Args:
        net: the user tower and the item-ID table (``net.tower``, ``net.item_embedding``).
        sampler: the log-uniform negative sampler (paper eq. 3).
        cfg: ``n_negatives``, ``logq_correction``, ``remove_accidental_hits``.

    Example::

        task = UserTrainTask(UserItemModel(ds.fields, ds.n_items, UserModelConfig()),
                             LogUniformSampler(ds.n_items, ds.item_popularity_rank()),
                             UserTrainConfig())
        loss = task(task.make_batch(ds, users, items, rng))   # scalar
    """

    def __init__(self, net: UserItemModel, sampler: LogUniformSampler, cfg: UserTrainConfig):
        super().__init__()
        self.net = net
        self.sampler = sampler
        self.n_negatives = cfg.n_negatives
        self.logq_correction = cfg.logq_correction
        self.remove_accidental_hits = cfg.remove_accidental_hits

    def make_batch(
        self,
        ds: EncodedDataset,
        users: np.ndarray,
        pos: np.ndarray,
        rng: np.random.Generator | None = None,
        neg: np.ndarray | None = None,
    ) -> UserTrainBatch:
        """Rows (user, positive) -> a batch; draws ``neg`` (B, K) from ``rng`` when None.

        Every row passes its positive as ``exclude_items`` (no target in the history).
        """
        if neg is None:
            if rng is None:
                raise ValueError("make_batch needs rng or neg")
            neg = self.sampler.sample((users.size, self.n_negatives), rng)  # (B, K)
        feats = gather_users(ds, users, exclude_items=pos)  # leakage guard
        pos_q = neg_q = None
        if self.logq_correction:  # float32 like the logits (the loss would cast them)
            pos_q = torch.from_numpy(self.sampler.log_prob(pos).astype(np.float32))
            neg_q = torch.from_numpy(self.sampler.log_prob(neg).astype(np.float32))
        return UserTrainBatch(feats, torch.from_numpy(pos), torch.from_numpy(neg), pos_q, neg_q)

    def forward(self, batch: UserTrainBatch) -> torch.Tensor:
        """Mean sampled-softmax loss of the batch (a scalar)."""
        user_vec = self.net(batch.users)  # (B, d)
        return sampled_softmax_loss(
            user_vec,
            self.net.item_embedding,
            batch.pos,
            batch.neg,
            remove_accidental_hits=self.remove_accidental_hits,
            pos_log_q=batch.pos_log_q,
            neg_log_q=batch.neg_log_q,
        )


class UserEpochData:
    """One epoch of stage-1 examples, batched on demand (negatives drawn in order).

    Args:
        task: builds the batches.
        ds: the dataset.
        users: int64 (n,) users of the epoch's rows.
        items: int64 (n,) their clicked items.
        rng: the epoch's random stream (negatives).
    """

    def __init__(
        self,
        task: UserTrainTask,
        ds: EncodedDataset,
        users: np.ndarray,
        items: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        self.task, self.ds, self.users, self.items, self.rng = task, ds, users, items, rng

    def __len__(self) -> int:
        return int(self.users.size)

    def batch(self, lo: int, hi: int) -> UserTrainBatch:
        return self.task.make_batch(self.ds, self.users[lo:hi], self.items[lo:hi], self.rng)

    def shard(self, rows: np.ndarray, rank: int, world: int) -> UserEpochData:
        """Rank ``rank``'s rows of the epoch (data-parallel training).

        The rank draws its eq. 3 negatives from child ``rank`` of ``world`` streams spawned
        from the epoch's stream: distinct per rank, the same on every run and resume.
        """
        rng = self.rng.spawn(world)[rank]
        return UserEpochData(self.task, self.ds, self.users[rows], self.items[rows], rng)
