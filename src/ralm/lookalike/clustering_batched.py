"""Batched Lloyd k-means in torch: all items of similar seed count at once.

The alternative to per-item faiss calls (:func:`ralm.lookalike.clustering.cluster_seeds`).
Every item is padded to a length taken from a fixed geometric grid (ratio 1.25, so padding
is < 25%) that depends on its own seed count only; items of one grid length form a bucket,
cut into chunks of about ``max_elements`` floats that stay in the last-level cache across
their Lloyd iterations. Per Lloyd step and chunk:

* assignment: ONE ``baddbmm`` gives ``|c|^2 - 2 x.c`` (``(Ib, S, h) x (Ib, h, k)``; the
  ``-2`` is the GEMM's alpha, ``|x|^2`` is constant per row and not needed for the argmin;
  slots beyond an item's own k get ``+inf``), then ``argmin`` over k;
* update: running cluster sums and sizes per chunk: the first step sums all seeds with
  ``index_add_`` (no one-hot, no second matmul) and ``bincount``; every later step only
  moves the seeds whose cluster changed (``index_add_`` of ``+x`` into the new and ``-x``
  into the old cluster), so a step's update costs what changed, not the whole chunk;
* early stop: an item none of whose assignments changed keeps bitwise the same sums, so
  its centroids are a fixed point and stopping gives exactly the result of running all
  iterations; the output centroids are the exact means of the final assignment (one
  in-order ``index_add_`` over the item's seeds when it is written out), not the running
  sums.

**Determinism per item.** An item's random initial centroids are its seeds with the
largest counter-based hash keys ``splitmix64(splitmix64(item_seed) + j * golden)`` (seed
position ``j``), so they depend only on the item's own seed (``item_seeds``, default
``seed + i``) and seeds; every per-item operation (the batched GEMM of a fixed per-item
shape, the argmin, the in-order ``index_add_`` sums) is independent of which other items
share the chunk. Clustering items in any chunking, order or call gives identical
centroids, sizes and assignments (tested), as the faiss backend does.

Results follow the same conventions as faiss's (exact means of the final assignment,
masked empty clusters, items with <= k seeds keep their seeds as centroids). Per-item k
(``item_k``, e.g. from :func:`ralm.lookalike.clustering.items_k`) masks the unused slots
exactly like the slots of an item with fewer seeds than k.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import torch

from ralm.lookalike.seed_clusters import SeedClusters, small_items
from ralm.lookalike.seed_clusters import check_inputs as _check_inputs

# floats per padded (I_b, S_max, h) chunk: 16 MiB, so a chunk stays in the last-level cache
# across its Lloyd iterations (128 MiB chunks were measured slower)
MAX_BUCKET_ELEMENTS = 1 << 22
GRID_RATIO = 1.25  # consecutive padded lengths differ by at most this: padding waste < 25%

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_keys(item_seeds: np.ndarray, length: int) -> np.ndarray:
    """Random int64 keys >= 0 of seed positions ``0..length-1`` of every item: (I, length).

    Counter-based: key ``[i, j]`` depends only on ``item_seeds[i]`` and ``j`` (the splitmix64
    sequence of the state ``splitmix64(item_seed)``), never on the other items.
    """
    with np.errstate(over="ignore"):
        state = _splitmix64(np.asarray(item_seeds, dtype=np.int64).astype(np.uint64) + _GOLDEN)
        j = np.arange(1, length + 1, dtype=np.uint64) * _GOLDEN  # (length,)
        keys = _splitmix64(state[:, None] + j[None, :])  # (I, length)
    return (keys >> np.uint64(1)).astype(np.int64)


def padded_lengths(counts: np.ndarray) -> np.ndarray:
    """Padded length of every item, from a fixed grid (1, 2, ..., x1.25 each step) >= count."""
    top = int(counts.max()) if counts.size else 1
    grid = [1]
    while grid[-1] < top:
        grid.append(max(grid[-1] + 1, int(np.ceil(grid[-1] * GRID_RATIO))))
    g = np.asarray(grid, dtype=np.int64)
    return g[np.searchsorted(g, counts, side="left")]


def _chunks(
    lengths: np.ndarray, items: np.ndarray, h: int, max_elements: int
) -> list[tuple[int, np.ndarray]]:
    """(padded length, items) chunks: one grid length each, about ``max_elements`` floats."""
    out = []
    for g in np.unique(lengths[items]).tolist():
        members = items[lengths[items] == g]
        per_chunk = max(1, int(max_elements // (g * h)))
        for s in range(0, members.size, per_chunk):
            out.append((int(g), members[s : s + per_chunk]))
    return out


def _per_item(
    values: np.ndarray | None, default: np.ndarray, n_items: int, name: str
) -> np.ndarray:
    if values is None:
        return default
    out = np.asarray(values, dtype=np.int64)
    if out.shape != (n_items,):
        raise ValueError(f"{name} must have shape ({n_items},), got {out.shape}")
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
    item_seeds: np.ndarray | None = None,
    item_k: np.ndarray | None = None,
) -> SeedClusters:
    """k-means of every item's seeds with batched torch Lloyd iterations.

    Args:
        seed_emb: float32 (S, h) seed embeddings grouped by item.
        item_offsets: int64 (I + 1,) CSR offsets.
        k: clusters per item (slots of the output).
        init: optional (I, k, h) warm-start centroids.
        init_mask: optional (I, k) validity of init slots (invalid -> random seeds).
        niter: Lloyd iterations (fewer when no assignment changes any more: same result).
        seed: base seed; item ``i`` uses ``seed + i`` unless ``item_seeds`` is given.
        max_elements: floats per padded (I_b, S_max, h) chunk (small enough that the
            chunk stays in the last-level cache across its iterations).
        item_seeds: optional int64 (I,) seed of every item's random start (so an item's
            clusters do not depend on its position in the call).
        item_k: optional int64 (I,) clusters of every item, 1..k (default k); slots
            ``item_k[i]..k-1`` are masked.
    """
    seed_emb = np.ascontiguousarray(seed_emb, dtype=np.float32)
    item_offsets = np.asarray(item_offsets, dtype=np.int64)
    _check_inputs(seed_emb, item_offsets, k)
    t0 = time.perf_counter()
    n_items, h = item_offsets.size - 1, seed_emb.shape[1]
    if init is not None and init.shape != (n_items, k, h):
        raise ValueError(f"init must have shape {(n_items, k, h)}, got {init.shape}")
    counts = np.diff(item_offsets)
    seeds_of = _per_item(
        item_seeds, seed + np.arange(n_items, dtype=np.int64), n_items, "item_seeds"
    )
    ks = _per_item(item_k, np.full(n_items, k, dtype=np.int64), n_items, "item_k")
    if ks.size and (ks.min() < 1 or ks.max() > k):
        raise ValueError(f"item_k must be in 1..{k}")
    centroids, mask, sizes, assign = small_items(seed_emb, item_offsets, ks, k)

    x_all = torch.from_numpy(seed_emb)
    lengths = padded_lengths(counts)
    inertia = 0.0
    for g, bucket in _chunks(lengths, np.flatnonzero(counts > ks), h, max_elements):
        c, n, lab_v, rows_v, x2 = _lloyd_chunk(
            x_all, item_offsets, counts, bucket, g, k, ks, seeds_of, init, init_mask, niter
        )
        centroids[bucket] = c.numpy()
        sizes[bucket] = n.numpy()
        mask[bucket] = n.numpy() > 0
        assign[rows_v.numpy()] = lab_v.numpy()
        # sum |x - m|^2 = sum |x|^2 - sum_j n_j |m_j|^2 for exact means m (in float64)
        inertia += x2 - float((n * (c * c).sum(-1)).double().sum())
    return SeedClusters(
        centroids, mask, sizes, assign, inertia=inertia, seconds=time.perf_counter() - t0
    )


def _lloyd_chunk(
    x_all: torch.Tensor,
    item_offsets: np.ndarray,
    counts: np.ndarray,
    bucket: np.ndarray,
    g: int,
    k: int,
    ks: np.ndarray,
    seeds_of: np.ndarray,
    init: np.ndarray | None,
    init_mask: np.ndarray | None,
    niter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Lloyd iterations of one chunk of items padded to length ``g``.

    Items whose assignment did not change in a step are at a fixed point (their running
    sums did not change); they are taken out of the iterations (written out with the exact
    means of their assignment: running on would not change a bit) once they make up a
    quarter of the active items, so the GEMMs shrink as items converge. The running sums
    of the others are updated by the seeds that changed cluster only.

    Returns centroids (Ib, k, h), sizes (Ib, k), the cluster of every seed (V,), the seed
    rows (V,) and sum |x|^2 of the chunk's seeds.
    """
    n_b, h = bucket.size, x_all.shape[1]
    cnt = torch.from_numpy(counts[bucket])  # (Ib,)
    within = torch.arange(g)
    valid = within[None, :] < cnt[:, None]  # (Ib, g)
    vidx = valid.reshape(-1).nonzero().squeeze(1)  # (V,) flat padded position of seeds
    # seed rows, the padding pointing at the item's first seed (zeroed after ONE gather)
    src = torch.from_numpy(item_offsets[bucket])[:, None] + torch.where(valid, within, 0)
    rows_v = src.reshape(-1).index_select(0, vidx)  # (V,) seed rows
    x = x_all.index_select(0, src.view(-1))
    if vidx.numel() < n_b * g:
        x.index_fill_(0, (~valid).view(-1).nonzero().squeeze(1), 0.0)
    x = x.view(n_b, g, h)  # (Ib, g, h) the chunk's seeds, zero-padded
    kb = torch.from_numpy(ks[bucket])  # (Ib,)
    slot_ok = torch.arange(k)[None, :] < kb[:, None]  # (Ib, k) slots the item uses
    bias = (  # (Ib, 1, k) +inf on the slots an item does not use
        None
        if bool(slot_ok.all())
        else torch.zeros(n_b, 1, k).masked_fill_(~slot_ok[:, None, :], float("inf"))
    )
    c = _start(x, valid, slot_ok, bucket, g, k, seeds_of, init, init_mask)  # (Ib, k, h)

    out_c = torch.zeros(n_b, k, h)
    out_n = torch.zeros(n_b, k, dtype=torch.long)
    out_lab = torch.zeros(n_b, g, dtype=torch.long)
    act = torch.arange(n_b)  # chunk positions of the items still iterating
    xa, va, ba = x, valid, bias
    prev: torch.Tensor | None = None  # (Ia, g) slots of the last step (padding: dump row)
    d_buf = x.new_empty(n_b, g, k)  # reused every iteration (first Ia rows)
    val_buf = x.new_empty(n_b, g)
    lab_buf = torch.empty(n_b, g, dtype=torch.long)
    sums = x.new_zeros(n_b * k + 1, h)  # running sums of the clusters, + one dump row
    n = torch.zeros(n_b * k + 1, dtype=torch.long)  # running sizes, + the dump row
    for it in range(niter + 1):
        n_a = act.numel()
        d, lab, val = d_buf[:n_a], lab_buf[:n_a], val_buf[:n_a]
        # |c|^2 - 2 x.c (+inf on unused slots): argmin over k = nearest centroid
        c2 = (c * c).sum(-1)[:, None, :]  # (Ia, 1, k)
        if ba is not None:
            c2 = c2 + ba
        torch.baddbmm(c2, xa, c.transpose(1, 2), alpha=-2.0, out=d)
        torch.min(d, dim=-1, out=(val, lab))  # first minimum, as argmin
        slot = (lab + (torch.arange(n_a) * k)[:, None]).masked_fill_(~va, n_a * k)  # (Ia, g)
        if it == niter:  # the last step: only the sizes (the means are summed exactly below)
            n = torch.bincount(slot.view(-1), minlength=n_a * k + 1)
            moved = torch.ones(n_a, dtype=torch.bool)
        elif prev is None:  # the sums and sizes of the whole assignment
            sums.index_add_(0, slot.view(-1), xa.view(-1, h))
            n += torch.bincount(slot.view(-1), minlength=n_a * k + 1)
            moved = torch.ones(n_a, dtype=torch.bool)
        else:  # only the seeds that changed cluster move their vectors between the sums
            changed = slot != prev  # (Ia, g); padding never changes
            ch = changed.view(-1).nonzero().squeeze(1)
            rows = xa.view(-1, h).index_select(0, ch)
            new_s, old_s = slot.view(-1).index_select(0, ch), prev.view(-1).index_select(0, ch)
            with _one_thread():  # small index_add_: a fixed ~0.3 ms per call on 2 threads
                sums.index_add_(0, new_s, rows).index_add_(0, old_s, rows, alpha=-1.0)
                one = torch.ones_like(new_s)
                n.index_add_(0, new_s, one).index_add_(0, old_s, one, alpha=-1)
            moved = changed.any(1)
        n_k = n[:-1].view(n_a, k)
        nonempty = (n_k > 0)[..., None]
        # an item whose assignment did not move is at a fixed point (the same sums, bitwise)
        done = torch.ones(n_a, dtype=torch.bool) if it == niter else ~moved
        n_done = int(done.sum())
        if n_done < n_a:
            means = sums[:-1].view(n_a, k, h) / n_k.clamp(min=1)[..., None].to(sums.dtype)
        if n_done == n_a or 4 * n_done >= n_a:  # write out the finished items, drop them
            # positions, not boolean masks: index_select copies ~3x faster than x[mask]
            di = done.nonzero().squeeze(1)
            fin = act.index_select(0, di)
            # the exact means of the final assignment (not the running sums): one pass
            n_f = n_k.index_select(0, di)
            if n_done == n_a:  # all of them: no copies
                lab_f = lab
                ex = _exact_sums(xa, lab, va, k)
            else:
                lab_f = lab.index_select(0, di)
                ex = _exact_sums(xa.index_select(0, di), lab_f, va.index_select(0, di), k)
            ex /= n_f.clamp(min=1)[..., None]
            out_n.index_copy_(0, fin, n_f)
            out_c.index_copy_(0, fin, torch.where(nonempty.index_select(0, di), ex, 0.0))
            out_lab.index_copy_(0, fin, lab_f)
            if n_done == n_a:
                break
            ki = (~done).nonzero().squeeze(1)
            n_keep = n_a - n_done
            act, xa, va = act.index_select(0, ki), xa.index_select(0, ki), va.index_select(0, ki)
            ba = None if ba is None else ba.index_select(0, ki)
            c = torch.where(
                nonempty.index_select(0, ki), means.index_select(0, ki), c.index_select(0, ki)
            )
            prev = (lab.index_select(0, ki) + (torch.arange(n_keep) * k)[:, None]).masked_fill_(
                ~va, n_keep * k
            )
            sums = torch.cat(
                [sums[:-1].view(n_a, k, h).index_select(0, ki).view(-1, h), sums[-1:].zero_()]
            )
            n = torch.cat([n[:-1].view(n_a, k).index_select(0, ki).view(-1), n[-1:].zero_()])
        else:
            c = torch.where(nonempty, means, c)
            prev = slot
    x2 = float(torch.linalg.vector_norm(x, dim=-1).double().square().sum())  # no (Ib, g, h) temp
    return out_c, out_n, out_lab.view(-1).index_select(0, vidx), rows_v, x2


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread (this thread's setting; restored after).

    ``index_add_`` of a few rows costs a fixed ~0.3 ms per call on two threads (measured,
    torch 2.13 CPU) against ~0.01 ms on one; the sums are the same either way.
    """
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _exact_sums(x: torch.Tensor, lab: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Sums (If, k, h) of every cluster's seeds, in seed order: ``index_add_`` over the
    labels (If, g) of the items' seeds (If, g, h) (the padding to one dump row)."""
    n_f, h = x.shape[0], x.shape[2]
    slot = (lab + (torch.arange(n_f) * k)[:, None]).masked_fill_(~valid, n_f * k)
    sums = x.new_zeros(n_f * k + 1, h).index_add_(0, slot.view(-1), x.reshape(-1, h))
    return sums[:-1].view(n_f, k, h)


def _start(
    x: torch.Tensor,
    valid: torch.Tensor,
    slot_ok: torch.Tensor,
    bucket: np.ndarray,
    g: int,
    k: int,
    seeds_of: np.ndarray,
    init: np.ndarray | None,
    init_mask: np.ndarray | None,
) -> torch.Tensor:
    """Initial centroids (Ib, k, h): the valid warm-start slots, else random distinct seeds
    of the item (its seeds with the largest hash keys, never padding); 0 on unused slots."""
    n_b, h = x.shape[0], x.shape[2]
    ok = slot_ok.clone()  # (Ib, k) slots with a usable warm start
    if init is not None:
        warm = torch.from_numpy(np.asarray(init[bucket], dtype=np.float32))  # (Ib, k, h)
        if init_mask is not None:
            ok &= torch.from_numpy(np.asarray(init_mask[bucket], dtype=bool))
        need = slot_ok & ~ok  # slots to fill with random seeds
        c = warm.masked_fill(~ok[..., None], 0.0)
    else:
        need = slot_ok
        c = x.new_zeros(n_b, k, h)
    if bool(need.any()):
        keys = torch.from_numpy(hash_keys(seeds_of[bucket], g)).masked_fill_(~valid, -1)
        kk = min(k, g)
        pick = keys.topk(kk, dim=1).indices  # (Ib, kk) distinct positions, valid first
        picked = torch.gather(x, 1, pick[..., None].expand(-1, -1, h))  # (Ib, kk, h)
        c[:, :kk] = torch.where(need[:, :kk, None], picked, c[:, :kk])
    return c
