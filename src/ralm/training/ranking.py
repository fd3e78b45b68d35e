"""Full-catalogue recall@K of validation users, shared by both stages' validation.

The ranking (score every candidate, mask what must not count, top-K) is done here; the
metric itself is :func:`ralm.evaluation.metrics.recall_at_k` on the hit matrix, the one
used by the evaluation reports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ralm.evaluation import metrics

Csr = tuple[np.ndarray, np.ndarray]


def csr_rows(csr: Csr, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row - lo, values, lengths)`` of CSR rows ``lo:hi``."""
    off, items = csr
    lengths = np.diff(off[lo : hi + 1])
    return np.repeat(np.arange(hi - lo), lengths), items[off[lo] : off[hi]], lengths


def recall_at_k(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    users: np.ndarray,
    targets: Csr,
    seen: Csr,
    k: int,
    batch_size: int = 1024,
    excluded: np.ndarray | None = None,
) -> float:
    """Mean over ``users`` of |top-k ∩ targets| / |targets| over all items.

    Args:
        score_fn: users int64 (b,) -> scores (b, n_items), higher = better.
        users: int64 (V,) evaluated users (each with >= 1 target).
        targets: CSR (offsets (V+1,), items) relevant items of each user.
        seen: CSR (offsets (V+1,), items) items never ranked for that user (e.g. TRAIN).
        k: cut-off.
        batch_size: users scored at once.
        excluded: optional bool (n_items,) items never ranked for anyone (not candidates).
    """
    total = 0.0
    for lo in range(0, users.size, batch_size):
        hi = min(lo + batch_size, users.size)
        scores = score_fn(users[lo:hi]).float().clone()  # (b, I)
        s_row, s_item, _ = csr_rows(seen, lo, hi)
        scores[torch.from_numpy(s_row), torch.from_numpy(s_item)] = float("-inf")
        if excluded is not None:
            scores[:, torch.from_numpy(excluded)] = float("-inf")
        k_eff = min(k, scores.shape[1])
        top = torch.topk(scores, k_eff, dim=1).indices  # (b, k)
        t_row, t_item, t_len = csr_rows(targets, lo, hi)
        is_target = torch.zeros_like(scores, dtype=torch.bool)  # (b, I)
        is_target[torch.from_numpy(t_row), torch.from_numpy(t_item)] = True
        hits = is_target.gather(1, top).numpy()  # (b, k) bool
        total += metrics.recall_at_k(hits, t_len, k_eff) * (hi - lo)
    return total / max(users.size, 1)
