"""The stage-2 training task: ``LookalikeTrainTask(batch) -> loss`` around ``LookalikeModel``.

A batch holds, per (user, item, label) example, the target user's universal embedding
(target item removed from the history for positives) and the item's seed clusters with the
target user left out (:func:`leave_self_out`). ``forward`` transforms the user, scores the
pair through the one scorer (:meth:`LookalikeModel.score_pairs`) and returns the BCE of the
calibrated logit, so the loop (and a DDP wrapper) only ever calls the task.

With ``loss="softmax"`` the task is listwise: every click of the batch is scored against
every item of the batch (the clicked items of the other rows — in-batch negatives drawn by
popularity — and the sampled negatives) through the same scorer
(:meth:`LookalikeModel.score`, each item represented by its own leave-self-out seed
attention), logits ``inv_temperature * s - log Q(item)`` (logQ correction by the expected
number of copies of the item in a batch), cross-entropy against the clicked column; pairs
where the user is a seed of (clicked) the column's item, or the column repeats the row's
item, are masked. A BCE term on the *detached* score trains only ``scale`` / ``bias``, so
the pCTR stays calibrated without pulling the ranking back to the pointwise objective.
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
from ralm.lookalike.seed_rows import SeedEmb
from ralm.lookalike.targets import TargetEmbeddings
from ralm.training.distributed import all_gather_array, all_gather_rows


def leave_self_out(
    clusters: SeedClusters,
    seed_emb: SeedEmb,
    seeds: SeedSets,
    users: np.ndarray,
    items: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example centroids (B, k, h), mask (B, k), sizes (B, k) without the target user.

    Centroids are exact means of their members, so removing seed row r of cluster j with
    n members gives ``(n c_j - e_r) / (n - 1)``; a cluster of one is masked instead.
    """
    cent = np.take(clusters.centroids, items, axis=0)  # (B, k, h), a new array (one copy)
    mask = np.take(clusters.mask, items, axis=0)  # (B, k)
    sizes = np.take(clusters.sizes, items, axis=0)  # (B, k)
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
        log_q: float32 (B,) log of the expected copies of each row's item in a batch (the
            softmax loss's logQ correction); None for the BCE loss.
        seen: bool (B, N) ``seen[r, c]``: row r's user is a seed of column c's item, or
            the row and the column hold the same item (masked off-diagonal in the softmax);
            None for BCE. The columns are the batch's rows (N = B), or, with
            ``across_ranks``, every rank's rows of the global batch in rank order.
        across_ranks: the softmax's columns are the items of every rank's rows (DDP): the
            loss all-gathers them (``ralm.training.distributed.all_gather_rows``).
        users: int64 (B,) the examples' users, and ``exclude`` int64 (B,) the item removed
            from each one's history (-1 = none): set when the user tower is fine-tuned
            (the task then embeds the targets itself, ``target`` is not used).
    """

    target: torch.Tensor
    centroids: torch.Tensor
    mask: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    log_q: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    across_ranks: bool = False
    users: np.ndarray | None = None
    exclude: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class LookalikeTrainTask(nn.Module):
    """Stage 2 as a module whose ``forward(batch)`` is the training loss.

    Args:
        model: the look-alike model (its ``score_pairs`` / ``score`` is the one scorer).
        loss: "bce" (pointwise) or "softmax" (listwise over the batch's items).
        calib_weight: weight of the calibration BCE term of the softmax loss.
        user_encoder: the fine-tuned user tower (``finetune_user``,
            :class:`ralm.lookalike.finetune.TowerEncoder`) embedding each batch's targets
            in the graph; None = the batch's fixed ``target`` embeddings.
    """

    def __init__(
        self,
        model: LookalikeModel,
        loss: str = "bce",
        calib_weight: float = 1.0,
        user_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("bce", "softmax"):
            raise ValueError(f"unknown stage-2 loss {loss!r} (bce | softmax)")
        self.model = model
        self.user_encoder = user_encoder
        self.loss = loss
        self.calib_weight = calib_weight
        # an ablated attention term leaves its parameters out of the graph: DDP must look
        # for unused parameters then (read by ralm.training.Trainer)
        cfg = model.config
        self.ddp_find_unused_parameters = not (cfg.use_local and cfg.use_global)

    def target(self, batch: LookalikeBatch) -> torch.Tensor:
        """Universal embeddings (B, m) of the batch's target users: the fixed ones, or the
        fine-tuned tower's (in the graph)."""
        if self.user_encoder is None or batch.users is None:
            return batch.target
        return self.user_encoder(batch.users, batch.exclude)  # (B, m)

    def scores(self, batch: LookalikeBatch) -> torch.Tensor:
        """Raw scores (B,) of the batch's pairs."""
        e_u = self.model.transform(self.target(batch))  # (B, h)
        return self.model.score_pairs(e_u, batch.centroids, batch.mask, sizes=batch.sizes)

    def forward(self, batch: LookalikeBatch) -> torch.Tensor:
        """The loss (a scalar): mean BCE, or sampled softmax + calibration BCE."""
        if self.loss == "bce":
            bce = F.binary_cross_entropy_with_logits(
                self.model.logit(self.scores(batch)), batch.labels
            )
            # the temperature only serves the softmax loss: a zero gradient keeps every
            # parameter used (DistributedDataParallel) and leaves it unchanged under Adam
            return bce + 0.0 * self.model.log_inv_temp
        return self.softmax_loss(batch)

    def softmax_loss(self, batch: LookalikeBatch) -> torch.Tensor:
        """Sampled softmax of every click over the batch's items + calibration BCE."""
        if batch.log_q is None or batch.seen is None:
            raise ValueError("the softmax loss needs batches with log_q and seen")
        m = self.model
        e_u = m.transform(self.target(batch))  # (B, h)
        gv = m.item_global(batch.centroids, batch.mask, batch.sizes)  # (B, h)
        cols = [gv, batch.centroids, batch.mask, batch.sizes, batch.log_q, batch.labels]
        first = 0  # under DDP: every rank's items, this rank's rows from column `first`
        if batch.across_ranks:
            cols, first = all_gather_rows(*cols)  # (N, ...), gradient back to each rank
        gv_c, cent_c, mask_c, sizes_c, log_q_c, labels_c = cols
        pos = torch.nonzero(batch.labels > 0).squeeze(1)  # (P,)
        s = m.score_train(e_u[pos], cent_c, mask_c, gv_c, sizes=sizes_c)  # (P, N)
        logits = m.inv_temperature * s - log_q_c[None, :]  # (P, N)
        off = batch.seen[pos].clone()  # (P, N)
        off[torch.arange(pos.numel()), first + pos] = False  # the clicked column itself stays
        logits = logits.masked_fill(off, float("-inf"))
        sm = F.cross_entropy(logits, first + pos) if pos.numel() else logits.sum() * 0.0
        if batch.across_ranks:  # the Trainer weighs a rank by its rows: mean over all clicks
            n_pos = max(int((labels_c > 0).sum()), 1)
            sm = sm * (pos.numel() / n_pos) * (labels_c.numel() / len(batch))
        # calibration: pCTR = sigmoid(scale s + bias) by BCE on the detached pair scores
        diag = m.score_pairs(e_u, batch.centroids, batch.mask, gv, sizes=batch.sizes)  # (B,)
        calib = F.binary_cross_entropy_with_logits(m.logit(diag.detach()), batch.labels)
        return sm + self.calib_weight * calib


def make_batch(
    clusters: SeedClusters,
    seed_emb: SeedEmb,
    seeds: SeedSets,
    target: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    item_log_q: np.ndarray | None = None,
    col_items: np.ndarray | None = None,
    with_users: bool = False,
) -> LookalikeBatch:
    """A :class:`LookalikeBatch` from examples and their target embeddings (B, m).

    ``item_log_q`` (n_items,) (log expected copies of each item per batch) makes a batch
    for the softmax loss (``log_q`` and ``seen`` filled). ``col_items`` (N,): the items of
    every rank's rows of the global batch in rank order (DDP; ``across_ranks`` set).
    ``with_users`` fills ``users`` and ``exclude`` (positives exclude their item) for a
    fine-tuned user tower.
    """
    cent, mask, sizes = leave_self_out(clusters, seed_emb, seeds, users, items)
    log_q = seen = None
    if item_log_q is not None:
        cols = items if col_items is None else col_items
        same = items[:, None] == cols[None, :]  # (B, N)
        seen = torch.from_numpy(seeds.seen(users, cols) | same)  # (B, N)
        log_q = torch.from_numpy(np.asarray(item_log_q[items], dtype=np.float32))
    return LookalikeBatch(
        target=torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
        centroids=torch.from_numpy(cent),
        mask=torch.from_numpy(mask),
        sizes=torch.from_numpy(sizes),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.float32)),
        log_q=log_q,
        seen=seen,
        across_ranks=col_items is not None,
        users=np.asarray(users, np.int64) if with_users else None,
        exclude=np.where(np.asarray(labels) > 0, items, -1).astype(np.int64)
        if with_users
        else None,
    )


class LookalikeEpochData:
    """One epoch of stage-2 examples, batched on demand against the current clusters.

    Args:
        clusters: seed clusters of this epoch (fixed during it).
        seed_emb: float32 (S, h) transformed seed embeddings the clusters were built from,
            or the same rows on demand (:class:`ralm.lookalike.seed_rows.SeedRows`).
        seeds: seed sets (CSR).
        targets: target embeddings of the examples' users.
        users, items, labels: the epoch's shuffled examples (n,).
        item_log_q: float (n_items,) logQ correction of the softmax loss, or None (BCE).
        with_users: batches carry users / exclusions for a fine-tuned user tower; their
            ``target`` is then a placeholder (B, 0).
    """

    def __init__(
        self,
        clusters: SeedClusters,
        seed_emb: SeedEmb,
        seeds: SeedSets,
        targets: TargetEmbeddings,
        users: np.ndarray,
        items: np.ndarray,
        labels: np.ndarray,
        item_log_q: np.ndarray | None = None,
        with_users: bool = False,
    ) -> None:
        self.clusters, self.seed_emb, self.seeds, self.targets = clusters, seed_emb, seeds, targets
        self.users, self.items, self.labels = users, items, labels
        self.item_log_q = item_log_q
        self.sharded = False  # a rank's rows (shard): the softmax spans every rank's items
        self.with_users = with_users

    def __len__(self) -> int:
        return int(self.users.size)

    def batch(self, lo: int, hi: int) -> LookalikeBatch:
        u, i, y = self.users[lo:hi], self.items[lo:hi], self.labels[lo:hi]
        # with a fine-tuned tower the task embeds the targets itself: (B, 0) placeholder
        tu = np.zeros((u.size, 0), np.float32) if self.with_users else self.targets(u, i, y)
        cols = all_gather_array(i) if self.sharded and self.item_log_q is not None else None
        return make_batch(
            self.clusters, self.seed_emb, self.seeds, tu, u, i, y,
            item_log_q=self.item_log_q, col_items=cols, with_users=self.with_users,
        )  # fmt: skip

    def shard(self, rows: np.ndarray, rank: int, world: int) -> LookalikeEpochData:
        """Rank ``rank``'s rows of the epoch (data-parallel training; no random draws)."""
        part = LookalikeEpochData(
            self.clusters, self.seed_emb, self.seeds, self.targets,
            self.users[rows], self.items[rows], self.labels[rows],
            item_log_q=self.item_log_q, with_users=self.with_users,
        )  # fmt: skip
        part.sharded = world > 1
        return part
