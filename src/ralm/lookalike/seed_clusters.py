"""Per-item seed clusters: the result type shared by every k-means backend, input checks,
and the items that keep their seeds as centroids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SeedClusters:
    """Clusters of every item's seeds.

    Attributes:
        centroids: float32 (I, k, h); masked slots are 0.
        mask: bool (I, k), True = valid centroid.
        sizes: int64 (I, k), seeds per centroid (0 on masked slots).
        assign: int64 (S,), cluster slot of every seed row.
        inertia: total squared distance of seeds to their centroid.
        seconds: wall time of the clustering.
    """

    centroids: np.ndarray
    mask: np.ndarray
    sizes: np.ndarray
    assign: np.ndarray
    inertia: float = 0.0
    seconds: float = 0.0

    @property
    def n_items(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[1])


def check_inputs(seed_emb: np.ndarray, item_offsets: np.ndarray, k: int) -> None:
    if seed_emb.ndim != 2:
        raise ValueError(f"seed_emb must be (S, h), got shape {seed_emb.shape}")
    if item_offsets.ndim != 1 or item_offsets.size < 1:
        raise ValueError("item_offsets must be a 1-d CSR offsets array of length I + 1")
    if item_offsets[0] != 0 or item_offsets[-1] != seed_emb.shape[0]:
        raise ValueError(
            f"item_offsets must start at 0 and end at S={seed_emb.shape[0]}, "
            f"got {item_offsets[0]}..{item_offsets[-1]}"
        )
    if np.any(np.diff(item_offsets) < 0):
        raise ValueError("item_offsets must be non-decreasing")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def small_items(
    seed_emb: np.ndarray, item_offsets: np.ndarray, item_k: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Items with 1..k_i seeds keep their seeds as centroids (vectorised).

    Returns (I, k, h) centroids, (I, k) mask, (I, k) sizes and (S,) assignments, filled for
    those items and zero elsewhere.
    """
    n_items, h = item_offsets.size - 1, seed_emb.shape[1]
    counts = np.diff(item_offsets)
    centroids = np.zeros((n_items, k, h), dtype=np.float32)
    mask = np.zeros((n_items, k), dtype=bool)
    sizes = np.zeros((n_items, k), dtype=np.int64)
    assign = np.zeros(seed_emb.shape[0], dtype=np.int64)
    item_of = np.repeat(np.arange(n_items), counts)  # (S,) item of every seed row
    slot_of = np.arange(seed_emb.shape[0]) - item_offsets[item_of]  # (S,) position in item
    rows = np.flatnonzero(counts[item_of] <= item_k[item_of])
    centroids[item_of[rows], slot_of[rows]] = seed_emb[rows]
    mask[item_of[rows], slot_of[rows]] = True
    sizes[item_of[rows], slot_of[rows]] = 1
    assign[rows] = slot_of[rows]
    return centroids, mask, sizes, assign
