"""The stage-2 training task: ``LookalikeTrainTask(batch) -> loss`` around ``LookalikeModel``.

A batch holds, per (user, item, label) example, the target user's universal embedding
(target item removed from the history for positives) and the item's seed clusters with the
target user left out (:func:`leave_self_out`). ``forward`` transforms the user, scores the
pair through the one scorer (:meth:`LookalikeModel.score_pairs`) and returns the BCE of the
calibrated logit, so the loop (and a DDP wrapper) only ever calls the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import SeedSets
from ralm.lookalike.targets import TargetEmbeddings


def leave_self_out(
    clusters: SeedClusters,
    seed_emb: np.ndarray,
    seeds: SeedSets,
    users: np.ndarray,
    items: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example centroids (B, k, h), mask (B, k), sizes (B, k) without the target user.

    Centroids are exact means of their members, so removing seed row r of cluster j with
    n members gives ``(n c_j - e_r) / (n - 1)``; a cluster of one is masked instead.
    """
    cent = clusters.centroids[items].copy()  # (B, k, h)
    mask = clusters.mask[items].copy()  # (B, k)
    sizes = clusters.sizes[items].copy()  # (B, k)
    rows = seeds.find(users, items)  # (B,) seed row or -1
    b = np.flatnonzero(rows >= 0)
    if b.size:
        r = rows[b]
        j = clusters.assign[r]
        n = clusters.sizes[items[b], j].astype(np.float32)  # (b,)
        multi = n > 1
        bm, jm, nm = b[multi], j[multi], n[multi, None]
        cent[bm, jm] = (nm * cent[bm, jm] - seed_emb[r[multi]]) / (nm - 1)
        cent[b[~multi], j[~multi]] = 0.0
        mask[b[~multi], j[~multi]] = False
        sizes[b, j] -= 1
    return cent, mask, sizes


@dataclass
class LookalikeBatch:
    """B stage-2 examples ready for the task.

    Attributes:
        target: float32 (B, m) universal embedding of each example's user.
        centroids: float32 (B, k, h) the item's seed centroids, target user left out.
        mask: bool (B, k) valid clusters.
        sizes: int64 (B, k) cluster sizes (after leave-self-out).
        labels: float32 (B,) 1 = click, 0 = sampled negative.
    """

    target: torch.Tensor
    centroids: torch.Tensor
    mask: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class LookalikeTrainTask(nn.Module):
    """Stage 2 as a module whose ``forward(batch)`` is the pointwise BCE loss.

    Args:
        model: the look-alike model (its ``score_pairs`` is the one scorer).
    """

    def __init__(self, model: LookalikeModel) -> None:
        super().__init__()
        self.model = model
        # an ablated attention term leaves its parameters out of the graph: DDP must look
        # for unused parameters then (read by ralm.training.Trainer)
        cfg = model.config
        self.ddp_find_unused_parameters = not (cfg.use_local and cfg.use_global)

    def scores(self, batch: LookalikeBatch) -> torch.Tensor:
        """Raw scores (B,) of the batch's pairs."""
        e_u = self.model.transform(batch.target)  # (B, h)
        return self.model.score_pairs(e_u, batch.centroids, batch.mask, sizes=batch.sizes)

    def forward(self, batch: LookalikeBatch) -> torch.Tensor:
        """Mean BCE of the calibrated logits against the labels (a scalar)."""
        return F.binary_cross_entropy_with_logits(
            self.model.logit(self.scores(batch)), batch.labels
        )


def make_batch(
    clusters: SeedClusters,
    seed_emb: np.ndarray,
    seeds: SeedSets,
    target: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
) -> LookalikeBatch:
    """A :class:`LookalikeBatch` from examples and their target embeddings (B, m)."""
    cent, mask, sizes = leave_self_out(clusters, seed_emb, seeds, users, items)
    return LookalikeBatch(
        target=torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
        centroids=torch.from_numpy(cent),
        mask=torch.from_numpy(mask),
        sizes=torch.from_numpy(sizes),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.float32)),
    )


class LookalikeEpochData:
    """One epoch of stage-2 examples, batched on demand against the current clusters.

    Args:
        clusters: seed clusters of this epoch (fixed during it).
        seed_emb: float32 (S, h) transformed seed embeddings the clusters were built from.
        seeds: seed sets (CSR).
        targets: target embeddings of the examples' users.
        users, items, labels: the epoch's shuffled examples (n,).
    """

    def __init__(
        self,
        clusters: SeedClusters,
        seed_emb: np.ndarray,
        seeds: SeedSets,
        targets: TargetEmbeddings,
        users: np.ndarray,
        items: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        self.clusters, self.seed_emb, self.seeds, self.targets = clusters, seed_emb, seeds, targets
        self.users, self.items, self.labels = users, items, labels

    def __len__(self) -> int:
        return int(self.users.size)

    def batch(self, lo: int, hi: int) -> LookalikeBatch:
        u, i, y = self.users[lo:hi], self.items[lo:hi], self.labels[lo:hi]
        tu = self.targets(u, i, y)  # (B, m)
        return make_batch(self.clusters, self.seed_emb, self.seeds, tu, u, i, y)

    def shard(self, rows: np.ndarray, rank: int, world: int) -> LookalikeEpochData:
        """Rank ``rank``'s rows of the epoch (data-parallel training; no random draws)."""
        return LookalikeEpochData(
            self.clusters, self.seed_emb, self.seeds, self.targets,
            self.users[rows], self.items[rows], self.labels[rows],
        )  # fmt: skip
