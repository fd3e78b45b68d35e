"""Sorted int64 keys for vectorised set membership of pairs (user, item), (row, code), ...

``np.isin`` hashes and is ~10x slower at batch sizes than one ``searchsorted`` over a
sorted key array, which is what every caller here uses.
"""

from __future__ import annotations

import numpy as np


def pair_keys(a: np.ndarray, b: np.ndarray, base: int, unique: bool = True) -> np.ndarray:
    """Sorted int64 keys ``a * base + b`` (unique unless ``unique=False``; then only sorted)."""
    k = np.asarray(a, np.int64) * int(base) + np.asarray(b, np.int64)
    return np.unique(k) if unique else np.sort(k)


def find_sorted(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of every ``query`` key in the sorted ``keys``, -1 where absent."""
    query = np.asarray(query, np.int64)
    if keys.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, pos, -1).astype(np.int64)


def contains(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Membership of ``query`` keys in the sorted ``keys`` array, bool like ``query``."""
    return find_sorted(keys, query) >= 0
