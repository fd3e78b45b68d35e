"""Seeded, vectorised sampling of non-clicked items (training negatives and AUC pairs)."""

from __future__ import annotations

import numpy as np


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique int64 keys ``user * n_items + item`` for fast membership tests."""
    return np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))


def contains(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Membership of ``query`` keys in the sorted ``keys`` array, bool like ``query``."""
    if keys.size == 0:
        return np.zeros(query.shape, dtype=bool)
    pos = np.searchsorted(keys, query)
    pos = np.minimum(pos, keys.size - 1)
    return keys[pos] == query


def sample_negatives(
    users: np.ndarray,
    n_per_user: int,
    candidates: np.ndarray,
    forbidden: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
    max_rounds: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_per_user`` candidate items per entry of ``users`` that are not forbidden.

    Args:
        users: int (n,) user of each positive (repeats allowed).
        n_per_user: negatives per entry.
        candidates: int (C,) items to draw from (uniformly).
        forbidden: sorted keys (see :func:`pair_keys`) of (user, item) pairs never to return,
            e.g. the user's clicks.
        n_items: number of items (key base).
        rng: seeded generator.
        max_rounds: rejection rounds; entries still forbidden afterwards are dropped
            (only happens for users who clicked almost every candidate).
    Returns:
        (users (m,), items (m,)) with m <= n * n_per_user.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    u = np.repeat(np.asarray(users, dtype=np.int64), n_per_user)
    if cand.size == 0 or u.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    items = cand[rng.integers(0, cand.size, u.size)]
    bad = contains(forbidden, u * n_items + items)
    for _ in range(max_rounds):
        if not bad.any():
            break
        idx = np.flatnonzero(bad)
        items[idx] = cand[rng.integers(0, cand.size, idx.size)]
        bad[idx] = contains(forbidden, u[idx] * n_items + items[idx])
    keep = ~bad
    return u[keep], items[keep]
