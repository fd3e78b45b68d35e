"""Per-item seed clustering (paper section 4.2.2): k-means over each item's seed embeddings.

Input is CSR: ``seed_emb (S, h)`` holds the transformed embeddings of all seeds, item ``i``
owning rows ``item_offsets[i]:item_offsets[i+1]``. Output is padded to k slots per item:

* items with more than k seeds run k-means (faiss, one thread, no subsampling:
  ``min_points_per_centroid=1``, ``max_points_per_centroid`` huge), optionally
  warm-started from previous centroids (``init``), followed by one exact assignment and
  mean step, so every centroid is *exactly* the mean of the seeds assigned to it — that is
  what makes leave-self-out exact and cheap (``c' = (n c - e_u) / (n - 1)``);
* items with 1..k seeds keep their seeds as centroids (size 1 each), the rest is masked;
* items with no seeds are fully masked.

Empty clusters (possible with duplicate points) are masked, never left as phantom slots.

Per-item k (:func:`items_k`, ``LookalikeConfig.k_rule = "seeds"``): item i uses
``k_i = min(k, ceil(n_i / seeds_per_cluster))`` clusters of its k slots; the slots
``k_i..k-1`` are masked exactly like the unused slots of an item with fewer seeds than k
(an item with ``n_i <= k_i`` keeps its seeds). Both backends take ``item_k``.
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np
from tqdm.auto import tqdm

from ralm.lookalike.seed_clusters import SeedClusters, check_inputs, small_items

_check_inputs = check_inputs  # the name other modules used
__all__ = [
    "SeedClusters",
    "average_seeds",
    "cluster_items",
    "cluster_seeds",
    "exact_means",
    "items_k",
]

log = logging.getLogger(__name__)

MAX_POINTS_PER_CENTROID = 1 << 30  # faiss subsamples above this: never
K_RULES = ("fixed", "seeds")


def items_k(
    counts: np.ndarray, k: int, rule: str = "fixed", seeds_per_cluster: int = 5
) -> np.ndarray:
    """Clusters of every item: int64 (I,) ``k`` ("fixed") or ``min(k, ceil(n_i / spc))``
    ("seeds", at least 1).

    Args:
        counts: int (I,) seeds per item.
        k: clusters per item (the slots of the index).
        rule: "fixed" or "seeds".
        seeds_per_cluster: seeds per cluster of the "seeds" rule.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if rule == "fixed":
        return np.full(counts.size, k, dtype=np.int64)
    if rule != "seeds":
        raise ValueError(f"k_rule must be one of {K_RULES}, got {rule!r}")
    if seeds_per_cluster < 1:
        raise ValueError(f"seeds_per_cluster must be >= 1, got {seeds_per_cluster}")
    return np.clip(-(-counts // seeds_per_cluster), 1, k).astype(np.int64)


def exact_means(
    x: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the points of each label: (n, h), (n,) -> centroids (k, h), sizes (k,), mask."""
    sizes = np.bincount(labels, minlength=k).astype(np.int64)  # (k,)
    onehot = np.zeros((k, x.shape[0]), dtype=np.float32)
    onehot[labels, np.arange(x.shape[0])] = 1.0
    sums = onehot @ x  # (k, h)
    mask = sizes > 0
    cent = np.zeros_like(sums)
    cent[mask] = sums[mask] / sizes[mask, None]
    return cent, sizes, mask


def _kmeans_one(
    x: np.ndarray, k: int, slots: int, niter: int, seed: int, init: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """faiss k-means of one item's seeds (n > k), then exact assign + mean step into
    ``slots`` >= k slots (the rest masked)."""
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        min_points_per_centroid=1,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        verbose=False,
    )
    km.train(x, init_centroids=init)
    _, lab = km.index.search(x, 1)  # (n, 1) nearest centroid
    labels = lab[:, 0].astype(np.int64)
    cent, sizes, mask = exact_means(x, labels, slots)
    inertia = float(((x - cent[labels]) ** 2).sum())
    return cent, sizes, mask, labels, inertia


def cluster_seeds(
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int,
    init: np.ndarray | None = None,
    seed: int = 0,
    niter: int = 20,
    warm_niter: int = 5,
    init_mask: np.ndarray | None = None,
    progress: bool = False,
    item_seeds: np.ndarray | None = None,
    item_k: np.ndarray | None = None,
) -> SeedClusters:
    """k-means of every item's seeds (see module docstring).

    Args:
        seed_emb: float32 (S, h) transformed seed embeddings, grouped by item.
        item_offsets: int64 (I + 1,) CSR offsets of each item's rows in ``seed_emb``.
        k: clusters per item.
        init: optional (I, k, h) previous centroids to warm-start from.
        seed: k-means seed (item i uses ``seed + i``).
        niter: Lloyd iterations of a cold start.
        warm_niter: Lloyd iterations of a warm start.
        init_mask: optional (I, k) validity of ``init`` slots; invalid slots are replaced by
            seeds of the item (k-means needs k distinct starting points).
        progress: show a tqdm bar.
        item_seeds: optional int64 (I,) k-means seed of every item (replaces
            ``seed + i``), so an item's clusters do not depend on its position in the call.
        item_k: optional int64 (I,) clusters of every item, 1..k (default k); the slots
            ``item_k[i]..k-1`` are masked.
    """
    seed_emb = np.ascontiguousarray(seed_emb, dtype=np.float32)
    item_offsets = np.asarray(item_offsets, dtype=np.int64)
    _check_inputs(seed_emb, item_offsets, k)
    n_items, h = item_offsets.size - 1, seed_emb.shape[1]
    if init is not None and init.shape != (n_items, k, h):
        raise ValueError(f"init must have shape {(n_items, k, h)}, got {init.shape}")
    t0 = time.perf_counter()
    counts = np.diff(item_offsets)
    ks = np.full(n_items, k, dtype=np.int64) if item_k is None else np.asarray(item_k, np.int64)
    if ks.shape != (n_items,) or (ks.size and (ks.min() < 1 or ks.max() > k)):
        raise ValueError(f"item_k must be ({n_items},) values in 1..{k}")
    # items with 1..k_i seeds: the seeds are the centroids (vectorised)
    centroids, mask, sizes, assign = small_items(seed_emb, item_offsets, ks, k)

    inertia = 0.0
    big = np.flatnonzero(counts > ks)
    prev_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # many small problems: one thread each is fastest
    try:
        for i in tqdm(big, desc="k-means", disable=not progress, leave=False):
            lo, hi = int(item_offsets[i]), int(item_offsets[i + 1])
            x = seed_emb[lo:hi]  # (n, h)
            start = None
            ki = int(ks[i])
            item_seed = int(item_seeds[i]) if item_seeds is not None else seed + int(i)
            if init is not None:
                start = np.array(init[i, :ki], dtype=np.float32)  # (k_i, h)
                bad = ~init_mask[i, :ki] if init_mask is not None else np.zeros(ki, dtype=bool)
                if bad.any():
                    rng = np.random.default_rng(item_seed)
                    start[bad] = x[rng.choice(x.shape[0], int(bad.sum()), replace=False)]
            iters = warm_niter if start is not None else niter
            c, s, m, lab, inn = _kmeans_one(x, ki, k, iters, item_seed, start)
            centroids[i], sizes[i], mask[i] = c, s, m
            assign[lo:hi] = lab
            inertia += inn
    finally:
        faiss.omp_set_num_threads(prev_threads)
    seconds = time.perf_counter() - t0
    log.debug("clustered %d items (%d with k-means) in %.2fs", n_items, big.size, seconds)
    return SeedClusters(centroids, mask, sizes, assign, inertia=inertia, seconds=seconds)


def average_seeds(seed_emb: np.ndarray, item_offsets: np.ndarray) -> SeedClusters:
    """The "RALM with average" representation: one centroid per item, the mean of its seeds."""
    seed_emb = np.ascontiguousarray(seed_emb, dtype=np.float32)
    item_offsets = np.asarray(item_offsets, dtype=np.int64)
    _check_inputs(seed_emb, item_offsets, 1)
    t0 = time.perf_counter()
    counts = np.diff(item_offsets)
    n_items = counts.size
    item_of = np.repeat(np.arange(n_items), counts)  # (S,)
    csum = np.zeros((seed_emb.shape[0] + 1, seed_emb.shape[1]), dtype=np.float64)
    np.cumsum(seed_emb, axis=0, dtype=np.float64, out=csum[1:])
    sums = csum[item_offsets[1:]] - csum[item_offsets[:-1]]  # (I, h)
    mean = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)  # (I, h)
    inertia = float(((seed_emb - mean[item_of]) ** 2).sum())
    return SeedClusters(
        centroids=mean[:, None, :],
        mask=(counts > 0)[:, None],
        sizes=counts[:, None].astype(np.int64),
        assign=np.zeros(seed_emb.shape[0], dtype=np.int64),
        inertia=inertia,
        seconds=time.perf_counter() - t0,
    )


def cluster_items(
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int,
    variant: str = "ralm",
    backend: str = "faiss",
    niter: int = 20,
    warm_niter: int = 5,
    init: np.ndarray | None = None,
    init_mask: np.ndarray | None = None,
    seed: int = 0,
    item_seeds: np.ndarray | None = None,
    progress: bool = False,
    k_rule: str = "fixed",
    seeds_per_cluster: int = 5,
) -> SeedClusters:
    """THE clustering dispatch of stage 2: the mean for "average", else k-means by backend.

    Args:
        seed_emb: float32 (S, h) transformed seed embeddings, grouped by item.
        item_offsets: int64 (I + 1,) CSR offsets.
        k: clusters per item (ignored by "average").
        variant: "ralm" (k-means) or "average" (one centroid: the mean of the seeds).
        backend: "faiss" (per-item faiss k-means, :func:`cluster_seeds`) or "torch"
            (batched Lloyd, :func:`ralm.lookalike.clustering_batched.lloyd_batched`).
        niter: Lloyd iterations of a cold start.
        warm_niter: Lloyd iterations of a warm start (``init`` given).
        init: optional (I, k, h) warm-start centroids.
        init_mask: optional (I, k) validity of ``init`` slots.
        seed: k-means seed.
        item_seeds: optional (I,) per-item seeds (default ``seed + i``); with them an
            item's clusters do not depend on the other items in the call (both backends).
        progress: show a progress bar (faiss backend).
        k_rule: "fixed" (k clusters per item) or "seeds" (``min(k, ceil(n_i /
            seeds_per_cluster))``, :func:`items_k`; the other slots masked).
        seeds_per_cluster: seeds per cluster of the "seeds" rule.
    """
    if variant == "average":
        return average_seeds(seed_emb, item_offsets)
    counts = np.diff(np.asarray(item_offsets, dtype=np.int64))
    item_k = None if k_rule == "fixed" else items_k(counts, k, k_rule, seeds_per_cluster)
    if backend == "torch":
        from ralm.lookalike.clustering_batched import lloyd_batched

        return lloyd_batched(
            seed_emb,
            item_offsets,
            k,
            init=init,
            init_mask=init_mask,
            niter=warm_niter if init is not None else niter,
            seed=seed,
            item_seeds=item_seeds,
            item_k=item_k,
        )
    if backend != "faiss":
        raise ValueError(f"kmeans_backend must be 'faiss' or 'torch', got {backend!r}")
    return cluster_seeds(
        seed_emb,
        item_offsets,
        k,
        init=init,
        init_mask=init_mask,
        seed=seed,
        niter=niter,
        warm_niter=warm_niter,
        progress=progress,
        item_seeds=item_seeds,
        item_k=item_k,
    )
