"""Per-epoch validation of stage 1 on VALID clicks.

Two numbers:
- sampled-softmax loss of fixed (seeded) VALID rows with fixed negatives, comparable
  across epochs;
- recall@K over ALL items: for every evaluated user, rank all items by ``user . item``,
  drop the user's TRAIN clicks, and count how many of their VALID clicks (not already in
  TRAIN) land in the top K. Mean over users of ``hits / |targets|``.
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
from ralm.user.examples import positive_pairs, user_item_csr
from ralm.user.sampled_softmax import sampled_softmax_loss
from ralm.user.sampler import LogUniformSampler
from ralm.user.tower import UserItemModel

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


def _csr_rows(csr: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[np.ndarray, ...]:
    off, items = csr
    lengths = np.diff(off[lo : hi + 1])
    return np.repeat(np.arange(hi - lo), lengths), items[off[lo] : off[hi]], lengths


def recall_at_k(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    vs: ValidationSet,
    k: int,
    batch_size: int = 1024,
) -> float:
    """Mean over ``vs.users`` of |top-k ∩ targets| / |targets|, TRAIN items excluded.

    Args:
        score_fn: users int64 (b,) -> scores (b, n_items), higher = better.
        vs: the validation set.
        k: cut-off.
        batch_size: users scored at once.
    """
    total = 0.0
    for lo in range(0, vs.users.size, batch_size):
        hi = min(lo + batch_size, vs.users.size)
        scores = score_fn(vs.users[lo:hi]).float().clone()  # (b, I)
        s_row, s_item, _ = _csr_rows(vs.seen, lo, hi)
        scores[torch.from_numpy(s_row), torch.from_numpy(s_item)] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices  # (b, k)
        t_row, t_item, t_len = _csr_rows(vs.targets, lo, hi)
        is_target = torch.zeros_like(scores, dtype=torch.bool)  # (b, I)
        is_target[torch.from_numpy(t_row), torch.from_numpy(t_item)] = True
        hits = is_target.gather(1, top).sum(1).double()  # (b,)
        total += float((hits / torch.from_numpy(t_len).double()).sum())
    return total / max(vs.users.size, 1)


@torch.no_grad()
def validate(
    net: UserItemModel,
    ds: EncodedDataset,
    vs: ValidationSet,
    k: int,
    sampler: LogUniformSampler | None = None,
    logq: bool = False,
) -> dict[str, float]:
    """``{"val_loss", "recall"}`` of the model on the validation set (eval mode)."""
    was_training = net.training
    net.eval()
    items = net.item_embedding.weight  # (I, d)
    losses = []
    for lo in range(0, vs.loss_users.size, 4096):
        u = vs.loss_users[lo : lo + 4096]
        pos_np, neg_np = vs.loss_items[lo : lo + 4096], vs.loss_neg[lo : lo + 4096]
        user_vec = net(gather_users(ds, u, exclude_items=pos_np))  # (b, d)
        pos, neg = torch.from_numpy(pos_np), torch.from_numpy(neg_np)
        use_q = logq and sampler is not None
        pos_q = torch.from_numpy(sampler.log_prob(pos_np)) if use_q and sampler else None
        neg_q = torch.from_numpy(sampler.log_prob(neg_np)) if use_q and sampler else None
        loss = sampled_softmax_loss(
            user_vec, items, pos, neg, pos_log_q=pos_q, neg_log_q=neg_q, reduction="sum"
        )
        losses.append(loss)
    val_loss = float(torch.stack(losses).sum()) / max(vs.loss_users.size, 1)

    def score(users: np.ndarray) -> torch.Tensor:
        return net(gather_users(ds, users)) @ items.T  # (b, I)

    recall = recall_at_k(score, vs, k)
    net.train(was_training)
    return {"val_loss": val_loss, "recall": recall}


def popularity_recall(ds: EncodedDataset, vs: ValidationSet, k: int) -> float:
    """recall@k of ranking items by TRAIN click count (the popularity baseline)."""
    pop = torch.from_numpy(ds.item_popularity().astype(np.float64))  # (I,)
    return recall_at_k(lambda u: pop.expand(u.shape[0], -1), vs, k)
