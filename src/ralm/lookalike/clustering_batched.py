"""Batched Lloyd k-means in torch: all items of similar seed count at once.

The alternative to per-item faiss calls (:func:`ralm.lookalike.clustering.cluster_seeds`):
items are sorted by seed count and grouped into buckets whose counts differ by at most 2x,
each bucket is padded to ``(I_b, S_max, h)`` and iterated with batched matmuls. Results
follow the same conventions (exact means of the final assignment, masked empty clusters,
items with <= k seeds keep their seeds). ``benchmarks/bench_lookalike.py`` compares both.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ralm.lookalike.seed_clusters import SeedClusters
from ralm.lookalike.seed_clusters import check_inputs as _check_inputs

MAX_BUCKET_ELEMENTS = 1 << 25  # floats per padded (I_b, S_max, h) chunk (128 MiB)


def _buckets(counts: np.ndarray, items: np.ndarray, h: int) -> list[np.ndarray]:
    """Groups of items (sorted by count) with max count <= 2x min, bounded in memory."""
    order = items[np.argsort(counts[items], kind="stable")]
    out, start = [], 0
    while start < order.size:
        lo = int(counts[order[start]])
        end = start
        while end < order.size and counts[order[end]] <= 2 * lo:
            end += 1
        per_chunk = max(1, MAX_BUCKET_ELEMENTS // (2 * lo * h))
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
    for bucket in _buckets(counts, np.flatnonzero(counts > k), h):
        n_b, s_max = bucket.size, int(counts[bucket].max())
        within = torch.arange(s_max)
        valid = within[None, :] < torch.from_numpy(counts[bucket])[:, None]  # (Ib, S)
        src = torch.from_numpy(item_offsets[bucket])[:, None] + within[None, :]
        x = x_all[torch.where(valid, src, 0)] * valid[..., None]  # (Ib, S, h)
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
        x2 = (x * x).sum(-1, keepdim=True)  # (Ib, S, 1)
        for it in range(niter + 1):
            d = x2 - 2 * x @ c.transpose(1, 2) + (c * c).sum(-1)[:, None, :]  # (Ib, S, k)
            lab = d.argmin(-1)  # (Ib, S)
            onehot = torch.nn.functional.one_hot(lab, k).to(x.dtype) * valid[..., None]
            n = onehot.sum(1)  # (Ib, k)
            sums = onehot.transpose(1, 2) @ x  # (Ib, k, h)
            if it == niter:  # final exact means of the final assignment
                c = torch.where(n[..., None] > 0, sums / n.clamp(min=1)[..., None], 0.0)
                break
            c = torch.where(n[..., None] > 0, sums / n.clamp(min=1)[..., None], c)
        centroids[bucket] = c.numpy()
        sizes[bucket] = n.long().numpy()
        mask[bucket] = n.numpy() > 0
        lab_np, valid_np = lab.numpy(), valid.numpy()
        assign[src.numpy()[valid_np]] = lab_np[valid_np]
        resid = ((x - torch.gather(c, 1, lab[..., None].expand(-1, -1, h))) ** 2).sum(-1)
        inertia += float((resid * valid).sum())
    return SeedClusters(
        centroids, mask, sizes, assign, inertia=inertia, seconds=time.perf_counter() - t0
    )
