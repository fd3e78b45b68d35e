"""Rejection-sampled negatives: items drawn per user, never a forbidden (user, item) pair."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ralm.common.keys import contains


def rejection_sample(
    users: np.ndarray,
    n_per_user: int,
    draw: Callable[[int], np.ndarray],
    forbidden: np.ndarray,
    n_items: int,
    max_rounds: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_user`` items per entry of ``users`` with ``draw(n) -> items (n,)``, re-drawing
    those whose key ``user * n_items + item`` is in the sorted ``forbidden`` keys.

    Entries still forbidden after ``max_rounds`` re-draws are dropped (only for users who
    clicked almost every candidate). Returns ``(users (m,), items (m,))``, m <= n * n_per_user.
    """
    u = np.repeat(np.asarray(users, dtype=np.int64), n_per_user)
    if u.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    items = np.asarray(draw(u.size), dtype=np.int64)
    bad = contains(forbidden, u * n_items + items)
    for _ in range(max_rounds):
        if not bad.any():
            break
        idx = np.flatnonzero(bad)
        items[idx] = draw(idx.size)
        bad[idx] = contains(forbidden, u[idx] * n_items + items[idx])
    keep = ~bad
    return u[keep], items[keep]
