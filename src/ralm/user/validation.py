"""Per-epoch validation of stage 1 on VALID clicks.

Two numbers:
- sampled-softmax loss of fixed (seeded) VALID rows with fixed negatives, comparable
  across epochs;
- recall@K over ALL items: for every evaluated user, rank all items by ``user . item``,
  drop the user's TRAIN clicks, and count how many of their VALID clicks (not already in
  TRAIN) land in the top K. Mean over users of ``hits / |targets|``, computed by
  :func:`ralm.evaluation.metrics.recall_at_k` (the metric of the evaluation reports).
The same ranking code scores the popularity baseline (items ordered by TRAIN clicks),
which is the floor a useful model must clear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ralm.data.batching import gather_csr, gather_users
from ralm.data.encoded import EncodedDataset, Split
from ralm.training import ranking
from ralm.user.examples import positive_pairs, user_item_csr
from ralm.user.sampler import LogUniformSampler
from ralm.user.task import UserTrainTask

MAX_LOSS_ROWS = 20_000


@dataclass
class ValidationSet:
    """Fixed validation material, built once before training.

    Attributes:
        users: int64 (V,) evaluated users (with >= 1 VALID click not in TRAIN).
        targets: CSR (offsets (V+1,), items) VALID items of each evaluated user.
        seen: CSR (offsets (V+1,), items) TRAIN items of each evaluated user (excluded).
        loss_users / loss_items / loss_neg: fixed rows (R,), (R,), (R, K) for the loss.
    """

    users: np.ndarray
    targets: tuple[np.ndarray, np.ndarray]
    seen: tuple[np.ndarray, np.ndarray]
    loss_users: np.ndarray
    loss_items: np.ndarray
    loss_neg: np.ndarray


def build_validation(
    ds: EncodedDataset,
    sampler: LogUniformSampler,
    n_negatives: int,
    max_users: int,
    seed: int,
) -> ValidationSet | None:
    """Validation material from VALID clicks; ``None`` when the dataset has none."""
    rng = np.random.default_rng([seed, 7_919])
    vu, vi = positive_pairs(ds, (Split.VALID,))
    if vu.size == 0:
        return None
    tu, ti = positive_pairs(ds, (Split.TRAIN,))
    seen_off, seen_items = user_item_csr(tu, ti, ds.n_users)
    # drop VALID clicks the user already made in TRAIN (they are excluded from the ranking)
    s_vals, s_len = gather_csr(seen_off, seen_items, vu)
    row = np.repeat(np.arange(vu.size), s_len)
    repeat = np.zeros(vu.size, dtype=bool)
    repeat[row[s_vals == vi[row]]] = True
    vu, vi = vu[~repeat], vi[~repeat]
    if vu.size == 0:
        return None
    users = np.unique(vu)
    if users.size > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    keep = np.isin(vu, users)
    vu, vi = vu[keep], vi[keep]
    t_off_all, t_items_all = user_item_csr(vu, vi, ds.n_users)
    t_vals, t_len = gather_csr(t_off_all, t_items_all, users)
    sv, sl = gather_csr(seen_off, seen_items, users)
    rows = rng.permutation(vu.size)[:MAX_LOSS_ROWS]
    return ValidationSet(
        users=users,
        targets=(np.r_[0, np.cumsum(t_len)].astype(np.int64), t_vals),
        seen=(np.r_[0, np.cumsum(sl)].astype(np.int64), sv),
        loss_users=vu[rows],
        loss_items=vi[rows],
        loss_neg=sampler.sample((rows.size, n_negatives), rng),
    )


def recall_at_k(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    vs: ValidationSet,
    k: int,
    batch_size: int = 1024,
) -> float:
    """Mean over ``vs.users`` of |top-k ∩ targets| / |targets|, TRAIN items excluded.

    Ranking by :func:`ralm.training.ranking.recall_at_k`, the metric is
    :func:`ralm.evaluation.metrics.recall_at_k` on the hit matrix.

    Args:
        score_fn: users int64 (b,) -> scores (b, n_items), higher = better.
        vs: the validation set.
        k: cut-off.
        batch_size: users scored at once.
    """
    return ranking.recall_at_k(score_fn, vs.users, vs.targets, vs.seen, k, batch_size)


@torch.no_grad()
def validate(
    task: UserTrainTask, ds: EncodedDataset, vs: ValidationSet, k: int
) -> dict[str, float]:
    """``{"val_loss", "recall"}`` of the task's model on the validation set (eval mode).

    ``val_loss`` is the task's own loss (the training objective) on the fixed VALID rows and
    negatives; ``recall`` is recall@k over all items.
    """
    was_training = task.training
    task.eval()
    net = task.net
    items = net.item_embedding.weight  # (I, d)
    total = 0.0
    for lo in range(0, vs.loss_users.size, 4096):
        sl = slice(lo, lo + 4096)
        batch = task.make_batch(ds, vs.loss_users[sl], vs.loss_items[sl], neg=vs.loss_neg[sl])
        total += float(task(batch)) * len(batch)
    val_loss = total / max(vs.loss_users.size, 1)

    def score(users: np.ndarray) -> torch.Tensor:
        return net(gather_users(ds, users)) @ items.T  # (b, I)

    recall = recall_at_k(score, vs, k)
    task.train(was_training)
    return {"val_loss": val_loss, "recall": recall}


def popularity_recall(ds: EncodedDataset, vs: ValidationSet, k: int) -> float:
    """recall@k of ranking items by TRAIN click count (the popularity baseline)."""
    pop = torch.from_numpy(ds.item_popularity().astype(np.float64))  # (I,)
    return recall_at_k(lambda u: pop.expand(u.shape[0], -1), vs, k)
