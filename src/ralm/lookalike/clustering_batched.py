"""Batched Lloyd k-means in torch: all items of similar seed count at once.

The alternative to per-item faiss calls (:func:`ralm.lookalike.clustering.cluster_seeds`):
items are sorted by seed count and grouped into buckets whose counts differ by at most 1.25x,
each bucket is padded to ``(I_b, S_max, h)`` and iterated with one batched matmul per
Lloyd step (``|c|^2 - 2 x.c`` as one ``baddbmm``; the sums of the new means with
``index_add_`` over the unpadded seeds, no one-hot). Results
follow the same conventions (exact means of the final assignment, masked empty clusters,
items with <= k seeds keep their seeds). ``benchmarks/bench_lookalike.py`` compares both.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ralm.lookalike.seed_clusters import SeedClusters
from ralm.lookalike.seed_clusters import check_inputs as _check_inputs

# floats per padded (I_b, S_max, h) chunk: 16 MiB, so a chunk stays in the last-level cache
# across its Lloyd iterations (128 MiB chunks were measured slower)
MAX_BUCKET_ELEMENTS = 1 << 22
BUCKET_RATIO = 1.25  # max / min seed count inside a bucket: padding waste < 25%


def _buckets(
    counts: np.ndarray, items: np.ndarray, h: int, max_elements: int = MAX_BUCKET_ELEMENTS
) -> list[np.ndarray]:
    """Groups of items (sorted by count) with max count <= BUCKET_RATIO x min, bounded."""
    order = items[np.argsort(counts[items], kind="stable")]
    out, start = [], 0
    while start < order.size:
        lo = int(counts[order[start]])
        end = start
        while end < order.size and counts[order[end]] <= BUCKET_RATIO * lo:
            end += 1
        per_chunk = max(1, int(max_elements // (BUCKET_RATIO * lo * h)))
        for s in range(start, end, per_chunk):
            out.append(order[s : min(end, s + per_chunk)])
        start = end
    return out


@torch.no_grad()
def lloyd_batched(
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int,
    init: np.ndarray | None = None,
    init_mask: np.ndarray | None = None,
    niter: int = 20,
    seed: int = 0,
    max_elements: int = MAX_BUCKET_ELEMENTS,
) -> SeedClusters:
    """k-means of every item's seeds with batched torch Lloyd iterations.

    Args:
        seed_emb: float32 (S, h) seed embeddings grouped by item.
        item_offsets: int64 (I + 1,) CSR offsets.
        k: clusters per item.
        init: optional (I, k, h) warm-start centroids.
        init_mask: optional (I, k) validity of init slots (invalid -> random seeds).
        niter: Lloyd iterations.
        seed: seed of the random initial centroids.
        max_elements: floats per padded (I_b, S_max, h) chunk (small enough that the
            chunk stays in the last-level cache across its iterations).
    """
    seed_emb = np.ascontiguousarray(seed_emb, dtype=np.float32)
    item_offsets = np.asarray(item_offsets, dtype=np.int64)
    _check_inputs(seed_emb, item_offsets, k)
    t0 = time.perf_counter()
    n_items, h = item_offsets.size - 1, seed_emb.shape[1]
    counts = np.diff(item_offsets)
    centroids = np.zeros((n_items, k, h), dtype=np.float32)
    mask = np.zeros((n_items, k), dtype=bool)
    sizes = np.zeros((n_items, k), dtype=np.int64)
    assign = np.zeros(seed_emb.shape[0], dtype=np.int64)
    item_of = np.repeat(np.arange(n_items), counts)
    slot_of = np.arange(seed_emb.shape[0]) - item_offsets[item_of]
    rows = np.flatnonzero(counts[item_of] <= k)  # small items: seeds are the centroids
    centroids[item_of[rows], slot_of[rows]] = seed_emb[rows]
    mask[item_of[rows], slot_of[rows]] = True
    sizes[item_of[rows], slot_of[rows]] = 1
    assign[rows] = slot_of[rows]

    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(seed_emb)
    inertia = 0.0
    for bucket in _buckets(counts, np.flatnonzero(counts > k), h, max_elements):
        n_b, s_max = bucket.size, int(counts[bucket].max())
        within = torch.arange(s_max)
        valid = within[None, :] < torch.from_numpy(counts[bucket])[:, None]  # (Ib, S)
        src = torch.from_numpy(item_offsets[bucket])[:, None] + within[None, :]
        vflat = valid.reshape(-1)  # (Ib*S,)
        rows_v = src.reshape(-1)[vflat]  # (V,) seed rows of the valid slots
        xv = x_all[rows_v]  # (V, h) the bucket's seeds, unpadded
        x = xv.new_zeros(n_b * s_max, h)
        x[vflat] = xv
        x = x.view(n_b, s_max, h)  # (Ib, S, h) zero-padded
        # random distinct seeds as initial centroids (padding never chosen)
        pick = torch.rand(n_b, s_max, generator=gen).masked_fill(~valid, -1.0).topk(k).indices
        c = torch.gather(x, 1, pick[..., None].expand(-1, -1, h))  # (Ib, k, h)
        if init is not None:
            warm = torch.from_numpy(np.asarray(init[bucket], dtype=np.float32))  # (Ib, k, h)
            ok = (
                torch.ones(n_b, k, dtype=torch.bool)
                if init_mask is None
                else torch.from_numpy(init_mask[bucket])
            )
            c = torch.where(ok[..., None], warm, c)
        base = (torch.arange(n_b) * k)[:, None]  # (Ib, 1) first flat slot of every item
        d = x.new_empty(n_b, s_max, k)  # (Ib, S, k) reused every iteration
        for it in range(niter + 1):
            # |c|^2 - 2 x.c: the argmin over k of the squared distance (|x|^2 is constant
            # per row); the -2 is the GEMM's alpha, not a pass over the array
            c2 = (c * c).sum(-1)[:, None, :]  # (Ib, 1, k)
            torch.baddbmm(c2, x, c.transpose(1, 2), alpha=-2.0, out=d)
            lab = d.argmin(-1)  # (Ib, S)
            slot = (lab + base).reshape(-1)[vflat]  # (V,) flat (item, cluster) of every seed
            sums = xv.new_zeros(n_b * k, h).index_add_(0, slot, xv).view(n_b, k, h)
            n = torch.bincount(slot, minlength=n_b * k).view(n_b, k)  # (Ib, k)
            means = sums / n.clamp(min=1)[..., None].to(sums.dtype)
            if it == niter:  # final exact means of the final assignment
                c = torch.where(n[..., None] > 0, means, 0.0)
                break
            c = torch.where(n[..., None] > 0, means, c)
        centroids[bucket] = c.numpy()
        sizes[bucket] = n.numpy()
        mask[bucket] = n.numpy() > 0
        assign[rows_v.numpy()] = lab.reshape(-1)[vflat].numpy()
        # sum |x - m|^2 = sum |x|^2 - sum_j n_j |m_j|^2 for exact means m (in float64)
        x2 = float((xv.double() ** 2).sum())
        inertia += x2 - float((n.double() * (c.double() ** 2).sum(-1)).sum())
    return SeedClusters(
        centroids, mask, sizes, assign, inertia=inertia, seconds=time.perf_counter() - t0
    )
