"""Stage-1 training examples: (user, clicked item) pairs from the TRAIN split.

Every epoch keeps at most ``max_pos_per_user`` positives per user, re-drawn at random each
epoch when a user has more (paper: 50, so heavy users do not dominate), then shuffles.
Vectorised: one permutation, one stable sort by user, a rank-within-user cut.
"""

from __future__ import annotations

import numpy as np

from ralm.data.encoded import EncodedDataset, Split


def positive_pairs(
    ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)
) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` int64 arrays of the ``label > 0`` rows of the given splits."""
    it = ds.interactions
    m = it.mask(*splits) & (np.asarray(it.label) > 0)
    return np.asarray(it.user[m], dtype=np.int64), np.asarray(it.item[m], dtype=np.int64)


def epoch_examples(
    users: np.ndarray, items: np.ndarray, max_per_user: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of examples: at most ``max_per_user`` random positives per user, shuffled.

    Args:
        users: int64 (n,) user of each positive row.
        items: int64 (n,) item of each positive row.
        max_per_user: cap per user (rows beyond it are dropped at random for this epoch).
        rng: the epoch's random generator.

    Returns:
        ``(users, items)`` of the kept rows, in random order.
    """
    n = users.shape[0]
    perm = rng.permutation(n)  # random order inside each user after the stable sort
    order = perm[np.argsort(users[perm], kind="stable")]  # grouped by user
    su = users[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])  # first row of each user
    counts = np.diff(np.r_[starts, n])
    within = np.arange(n) - np.repeat(starts, counts)  # rank of the row inside its user
    kept = order[within < max_per_user]
    kept = kept[rng.permutation(kept.shape[0])]
    return users[kept], items[kept]


def user_item_csr(
    users: np.ndarray, items: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(offsets (n_users+1,), items)`` of unique items per user."""
    pair = np.unique(users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items)
    width = int(items.max(initial=0)) + 1
    u, i = pair // width, pair % width
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=offsets[1:])
    return offsets, i.astype(np.int64)
