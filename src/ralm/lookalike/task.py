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
            None for BCE. The columns are the batch's rows (N = B).
        rows: int64 (B_r,) under data-parallel training (DDP, the softmax loss): the
            batch holds the whole global batch (``centroids``, ``mask``, ``sizes``,
            ``labels``, ``log_q`` have N rows, the softmax's columns) and this rank's rows
            are these positions in it (``target`` and ``seen`` hold only them: (B_r, m),
            (B_r, N)); None = every row is this process's.
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
    rows: torch.Tensor | None = None
    users: np.ndarray | None = None
    exclude: np.ndarray | None = None

    def __len__(self) -> int:
        """This process's rows (the rank's share of a global batch under DDP)."""
        return int(self.labels.shape[0] if self.rows is None else self.rows.shape[0])

    def own(self, x: torch.Tensor) -> torch.Tensor:
        """``x``'s rows of this process: ``x[rows]``, or ``x`` itself outside DDP."""
        return x if self.rows is None else x[self.rows]


class LookalikeTrainTask(nn.Module):
    """Stage 2 as a module whose ``forward(batch)`` is the training loss.

    Args:
        model: the look-alike model (its ``score_pairs`` / ``score`` is the one scorer).
        loss: "bce" (pointwise) or "softmax" (listwise over the batch's items).
        calib_weight: weight of the calibration BCE term of the softmax loss.
        user_encoder: the fine-tuned user tower (``finetune_user``,
            :class:`ralm.lookalike.finetune.TowerEncoder`) embedding each batch's targets
            in the graph; None = the batch's fixed ``target`` embeddings.
        matmul_dtype: input precision of the softmax loss's two large products (the
            all-pairs scores and the global attention); bfloat16 = mixed precision
            (``[lookalike_train] matmul_dtype``, :func:`ralm.lookalike.scorer_math.matmul`).
    """

    def __init__(
        self,
        model: LookalikeModel,
        loss: str = "bce",
        calib_weight: float = 1.0,
        user_encoder: nn.Module | None = None,
        matmul_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if loss not in ("bce", "softmax"):
            raise ValueError(f"unknown stage-2 loss {loss!r} (bce | softmax)")
        self.model = model
        self.user_encoder = user_encoder
        self.loss = loss
        self.calib_weight = calib_weight
        self.matmul_dtype = matmul_dtype
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
        """Sampled softmax of every click over the batch's items + calibration BCE.

        Under DDP the batch is the whole global batch (its items are the columns) and this
        rank scores its own clicks (``batch.rows``) against all of them: every rank
        computes the columns' global vectors itself (no all-gather, no gradient sent between
        ranks), and DDP's average of the ranks' gradients is the one-process gradient.
        """
        if batch.log_q is None or batch.seen is None:
            raise ValueError("the softmax loss needs batches with log_q and seen")
        m = self.model
        e_u = m.transform(self.target(batch))  # (B_r, h)
        gv = m.item_global(batch.centroids, batch.mask, batch.sizes, self.matmul_dtype)  # (N, h)
        labels = batch.labels  # (N,)
        mine = torch.arange(labels.numel()) if batch.rows is None else batch.rows  # (B_r,)
        click = labels[mine] > 0  # (B_r,)
        pos = mine[click]  # (P_r,) columns of this process's clicks
        s = m.score_train(
            e_u[click],
            batch.centroids,
            batch.mask,
            gv,
            sizes=batch.sizes,
            matmul_dtype=self.matmul_dtype,
        )  # (P_r, N)
        logits = m.inv_temperature * s - batch.log_q[None, :]  # (P_r, N)
        off = batch.seen[click].clone()  # (P_r, N)
        off[torch.arange(pos.numel()), pos] = False  # the clicked column itself stays
        logits = logits.masked_fill(off, float("-inf"))
        sm = F.cross_entropy(logits, pos) if pos.numel() else logits.sum() * 0.0
        if batch.rows is not None:  # the Trainer weighs a rank by its rows: mean over all clicks
            n_pos = max(int((labels > 0).sum()), 1)
            sm = sm * (pos.numel() / n_pos) * (labels.numel() / mine.numel())
        # calibration: pCTR = sigmoid(scale s + bias) by BCE on the detached pair scores;
        # a click's pair score is its own column of s, the sampled negatives' are scored
        with torch.no_grad():  # (B_r,)
            diag = s.new_empty(click.shape)
            diag[click] = s.detach()[torch.arange(pos.numel()), pos]
            neg = ~click
            if bool(neg.any()):
                rows = mine[neg]
                diag[neg] = m.score_pairs(
                    e_u[neg], batch.centroids[rows], batch.mask[rows], gv[rows],
                    sizes=batch.sizes[rows],
                )  # fmt: skip
        calib = F.binary_cross_entropy_with_logits(m.logit(diag), labels[mine])
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
    rows: np.ndarray | None = None,
    with_users: bool = False,
) -> LookalikeBatch:
    """A :class:`LookalikeBatch` from examples and their target embeddings (B, m).

    ``item_log_q`` (n_items,) (log expected copies of each item per batch) makes a batch
    for the softmax loss (``log_q`` and ``seen`` filled). ``rows`` (B_r,): this rank's
    positions among the examples, which are the whole global batch (DDP, softmax loss):
    ``target`` then holds only those rows, and ``seen`` is (B_r, N). ``with_users`` fills
    ``users`` and ``exclude`` (positives exclude their item) for a fine-tuned user tower.
    """
    if with_users and rows is not None:
        raise ValueError("a fine-tuned user tower is not trained data-parallel (rows given)")
    cent, mask, sizes = leave_self_out(clusters, seed_emb, seeds, users, items)
    log_q = seen = None
    if item_log_q is not None:
        ru, ri = (users, items) if rows is None else (users[rows], items[rows])
        same = ri[:, None] == items[None, :]  # (B_r, N)
        seen = torch.from_numpy(seeds.seen(ru, items) | same)  # (B_r, N)
        log_q = torch.from_numpy(np.asarray(item_log_q[items], dtype=np.float32))
    return LookalikeBatch(
        target=torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
        centroids=torch.from_numpy(cent),
        mask=torch.from_numpy(mask),
        sizes=torch.from_numpy(sizes),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.float32)),
        log_q=log_q,
        seen=seen,
        rows=None if rows is None else torch.from_numpy(np.asarray(rows, np.int64)),
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
        self.with_users = with_users
        # data-parallel softmax (shard()): batch() takes the global bounds and builds the
        # whole global batch (the softmax's columns), this rank's rows marked in it
        self.global_batches = False
        self.rank, self.world = 0, 1

    def __len__(self) -> int:
        return int(self.users.size)

    def batch(self, lo: int, hi: int) -> LookalikeBatch:
        """Examples ``lo:hi``; with ``global_batches`` the global batch ``lo:hi`` of the
        epoch, this rank's rows (global row ``g`` is rank ``g % world``'s) marked in it."""
        u, i, y = self.users[lo:hi], self.items[lo:hi], self.labels[lo:hi]
        mine = None
        if self.global_batches:
            mine = np.flatnonzero(np.arange(lo, hi) % self.world == self.rank)
        ru, ri, ry = (u, i, y) if mine is None else (u[mine], i[mine], y[mine])
        # with a fine-tuned tower the task embeds the targets itself: (B, 0) placeholder
        tu = np.zeros((ru.size, 0), np.float32) if self.with_users else self.targets(ru, ri, ry)
        return make_batch(
            self.clusters, self.seed_emb, self.seeds, tu, u, i, y,
            item_log_q=self.item_log_q, rows=mine, with_users=self.with_users,
        )  # fmt: skip

    def shard(self, rows: np.ndarray, rank: int, world: int) -> LookalikeEpochData:
        """Rank ``rank``'s share of the epoch (data-parallel training; no random draws).

        The pointwise (BCE) loss needs only the rank's rows ``rows`` (``rank::world``).
        The softmax loss scores each click against every item of the global batch: the
        shard keeps the whole epoch and sets ``global_batches``, so the Trainer passes the
        global bounds and every rank builds the global batch's columns itself.
        """
        if self.item_log_q is not None and world > 1:
            part = LookalikeEpochData(
                self.clusters, self.seed_emb, self.seeds, self.targets,
                self.users, self.items, self.labels,
                item_log_q=self.item_log_q, with_users=self.with_users,
            )  # fmt: skip
            part.global_batches, part.rank, part.world = True, rank, world
            return part
        return LookalikeEpochData(
            self.clusters, self.seed_emb, self.seeds, self.targets,
            self.users[rows], self.items[rows], self.labels[rows],
            item_log_q=self.item_log_q, with_users=self.with_users,
        )  # fmt: skip
