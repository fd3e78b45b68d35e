"""Seeded, vectorised sampling of non-clicked items (training negatives and AUC pairs)."""

from __future__ import annotations

import numpy as np

from ralm.common.keys import contains, pair_keys
from ralm.common.sampling import rejection_sample

__all__ = ["contains", "pair_keys", "sample_negatives"]


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
    if cand.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return rejection_sample(
        users,
        n_per_user,
        lambda n: cand[rng.integers(0, cand.size, n)],
        forbidden,
        n_items,
        max_rounds=max_rounds,
    )
