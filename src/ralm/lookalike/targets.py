"""Target-user universal embeddings for stage-2 examples (stage 1 is frozen here).

A positive (u, i) needs u's embedding with i removed from u's history; a negative needs
u's plain embedding, which is ``seed_universal[u]``. Both are fixed during stage 2, so the
positives of TRAIN are embedded once (when they fit in memory) and looked up afterwards;
otherwise stage 1 is called per batch through ``target_universal``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

TargetFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class TargetEmbeddings:
    """Universal embeddings of example target users, with the target item excluded.

    Args:
        seed_universal: float32 (n_users, m) embeddings without exclusion.
        target_universal: ``f(users (B,), exclude_items (B,)) -> (B, m)`` from stage 1.
        n_items: number of items (for the (user, item) key).
        pos_keys: sorted unique ``user * n_items + item`` of the positives to cache, or None.
        chunk: users per call of ``target_universal`` while caching.
        progress: show a progress bar while caching.
    """

    def __init__(
        self,
        seed_universal: np.ndarray,
        target_universal: TargetFn,
        n_items: int,
        pos_keys: np.ndarray | None = None,
        chunk: int = 65536,
        progress: bool = False,
    ) -> None:
        self.seed_universal = seed_universal
        self.target_universal = target_universal
        self.n_items = n_items
        self.keys = pos_keys
        self.cache: np.ndarray | None = None
        if pos_keys is not None:
            m = seed_universal.shape[1]
            log.info(
                "embedding %s TRAIN positives once, each without its target (%.1f MiB)",
                f"{pos_keys.size:,}", pos_keys.size * m * 4 / 2**20,
            )  # fmt: skip
            self.cache = np.empty((pos_keys.size, m), dtype=np.float32)  # (P, m)
            steps = range(0, pos_keys.size, chunk)
            for lo in tqdm(steps, desc="embed positives", disable=not progress, leave=False):
                k = pos_keys[lo : lo + chunk]
                u, i = k // n_items, k % n_items
                self.cache[lo : lo + k.size] = target_universal(u, i)
            log.info("cached %d positive target embeddings (%.1f MiB)", pos_keys.size,
                     self.cache.nbytes / 2**20)  # fmt: skip

    def __call__(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(B, m) float32: positives with their item excluded, negatives plain."""
        pos = labels > 0
        if self.cache is None or self.keys is None:
            out = self.target_universal(users, np.where(pos, items, -1))
            return np.asarray(out, dtype=np.float32)
        out = np.asarray(self.seed_universal[users], dtype=np.float32)  # (B, m)
        if pos.any():
            q = users[pos] * self.n_items + items[pos]
            idx = np.searchsorted(self.keys, q)
            idx_c = np.minimum(idx, self.keys.size - 1)
            hit = self.keys[idx_c] == q
            rows = np.flatnonzero(pos)
            out[rows[hit]] = self.cache[idx_c[hit]]
            if not hit.all():  # a positive outside the cache: ask stage 1
                miss = rows[~hit]
                out[miss] = self.target_universal(users[miss], items[miss])
        return out
