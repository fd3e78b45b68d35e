"""The serving scorer: a batch of users against prepared items (:func:`score_prepared`).

Per tile of items, one matmul gives the attention logits and the dots, and the
post-matmul chain runs in place on per-thread buffers; :func:`_local_by_users` (small B,
one user per row) and :func:`_local_by_slots` (one slot per row) are its two layouts.
Import every name from :mod:`ralm.lookalike.scorer`; the tuning constants (tile size,
layout thresholds) are read here, so a test or benchmark that patches them patches them
on this module.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import torch

from ralm.lookalike import scorer_kernel
from ralm.lookalike.scorer_kernel import pool as _pool
from ralm.lookalike.scorer_terms import ItemTerms, unit_rows

# the chain's buffers per thread, reused across requests (no allocation, no page faults
# and zero-fills of fresh memory per tile); each serving thread owns its own
_WORKSPACE = threading.local()
TILE_ELEMENTS = 160 * 1024  # (tile rows x B) floats per buffer: ~640 KiB, stays in L2
LOG2E = math.log2(math.e)
TINY = 1e-30  # |E_local|^2 of an item without seeds (its dots are 0, so its cosine is 0)
ROW_FORM_BELOW = 16  # B below which u^T G is faster than G u (MKL's batched gemv is slow)
# B in [BY_USERS_FROM, BY_USERS_BELOW): the chain runs on rows of users (_local_by_users),
# else on rows of slots (_local_by_slots): measured the faster layout for each B
BY_USERS_FROM, BY_USERS_BELOW = 2, 24
# the compiled chain (ralm.lookalike.scorer_kernel) runs the local term for every B except,
# at one intra-op thread, B in [KERNEL_FROM, KERNEL_BY_USERS_BELOW) = 2-4 users, where the
# torch chain on rows of users was measured faster (90 vs 116 ms at B = 2, paper shape);
# B = 1 is padded to 8 zero users, whose matmul is faster than the 2-column one
KERNEL_FROM, KERNEL_BY_USERS_BELOW = 2, 5
# (tile rows x padded B) floats per kernel tile: larger than the torch chain's, since the
# kernel reads each row once; at two threads 160K -> 512K elements gave 149 -> 133 ms (B = 32)
KERNEL_TILE_ELEMENTS = 512 * 1024
KERNEL_PART_ITEMS = 32  # fewest items per thread when a tile's chain is split over threads


def _buffer(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat per-thread buffer of at least ``numel`` elements (grown, never shrunk)."""
    bufs: dict[tuple[str, torch.dtype], torch.Tensor] | None = getattr(_WORKSPACE, "bufs", None)
    if bufs is None:
        bufs = _WORKSPACE.bufs = {}
    buf = bufs.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = bufs[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def tile_items(n_b: int, k: int, chunk_items: int = 1024, elements: int | None = None) -> int:
    """Items per tile of :func:`score_prepared`: its (tile*k, B) buffers stay in L2.

    Args:
        n_b: users in the batch.
        k: centroid slots per item.
        chunk_items: upper bound on the tile.
        elements: (tile rows x B) per buffer, default ``TILE_ELEMENTS`` (the kernel's
            chain uses ``KERNEL_TILE_ELEMENTS``).
    """
    per = TILE_ELEMENTS if elements is None else elements
    return max(1, min(chunk_items, max(16, per // (k * max(1, n_b)))))


def use_kernel(n_b: int) -> scorer_kernel.ChainKernel | None:
    """The compiled chain for a batch of ``n_b`` users, or None for the torch chain."""
    if KERNEL_FROM <= n_b < KERNEL_BY_USERS_BELOW and torch.get_num_threads() == 1:
        return None
    return scorer_kernel.load()


@torch.no_grad()
def score_prepared(
    e_u: torch.Tensor,
    w_local: torch.Tensor,
    terms: ItemTerms,
    alpha: float = 0.3,
    beta: float = 0.7,
    use_local: bool = True,
    use_global: bool = True,
    chunk_items: int = 1024,
) -> torch.Tensor:
    """Scores (B, I) of users against prepared items; same numbers as :func:`score_matrix`.

    Inference only (no autograd; training uses :func:`score_pairs`). Per tile of items
    (sized by :func:`tile_items` so its buffers stay in L2 while the chain consumes them),
    one matmul ``(It*k, h) @ (h, 2B)`` into a per-thread buffer (reused across requests:
    no allocation, no zero-filled fresh pages) gives the attention logits and the dots;
    the chain runs in place on it, with ``tanh(x) = 2 sigmoid(2x) - 1`` (torch's sigmoid
    is vectorised, its tanh is ~6x slower on CPU), ``exp(y) = exp2(y log2 e)`` (~2x
    faster than exp), and every constant factor dropped that the cosine's scale
    invariance cancels::

        u = exp2(log2 weight + 2 log2(e) sigmoid(2 q.c))   (It*k, B)  unnormalised softmax
        num = sum_k u * (e.c) beta / |e|,   el = sum_k u * (G u)   (one reduction over k)
        beta cos_local = num / sqrt(el)       (the normaliser Z = sum_k u cancels)

    (equal to :func:`safe_cos` of the normalised terms whenever ``|e|^2 |E_local|^2``
    is above its clamp; an item without seeds, or a zero user, scores 0 either way).
    The global cosine is one ``(I, h) @ (h, B)`` matmul of unit vectors, added at the
    end. Where it builds, the chain after the matmul is one compiled loop per item
    (:mod:`ralm.lookalike.scorer_kernel`, same formulas; :func:`use_kernel` says when).
    torch.compile of this chain was measured faster only with static shapes (a 25 s
    compile per batch size and chunk length) and slower than this with dynamic shapes.

    Args:
        e_u: (B, h) transformed target users.
        w_local: (h, h) local-attention matrix W_l.
        terms: the items' constants from :func:`prepare_items`.
        alpha: weight of the global term.
        beta: weight of the local term.
        use_local: include the local term.
        use_global: include the global term.
        chunk_items: most items per tile (the tile is also bounded to stay in cache).
    """
    if not (use_local or use_global):
        raise ValueError("at least one of the global / local terms is required")
    e_u = e_u.to(torch.float32)
    n_b = e_u.shape[0]
    n_i = terms.n_items
    out = e_u.new_empty((n_b, n_i))  # (B, I)
    if n_i == 0:
        return out
    e_unit = unit_rows(e_u)  # (B, h), 0 for e = 0 (its scores are 0 as in safe_cos)
    if use_local:
        kernel = use_kernel(n_b)
        if kernel is not None:
            _local_kernel(kernel, e_u, e_unit, w_local, terms, beta, chunk_items, out)
        else:
            by_users = BY_USERS_FROM <= n_b < BY_USERS_BELOW
            local = _local_by_users if by_users else _local_by_slots
            local(e_u, e_unit, w_local, terms, beta, chunk_items, out)
    else:
        out.zero_()
    if use_global:  # alpha cos(e, g) for every item at once: (B, h) @ (h, I)
        out.addmm_(e_unit, terms.global_unit.T, alpha=alpha)
    if terms.scale is not None:
        out.mul_(terms.scale[None, :])
    if terms.prior is not None:
        out.add_(terms.prior[None, :])
    return out


def _rhs(
    e_u: torch.Tensor, e_unit: torch.Tensor, w_local: torch.Tensor, beta: float
) -> torch.Tensor:
    """(2B, h) float32 ``[2q ; beta e/|e|]``: 2q folds the 2x of 2 sigmoid(2x) - 1, and
    beta e/|e| folds the cosine's 1/|e| and beta into the dots."""
    q2 = 2.0 * (e_u @ w_local.to(torch.float32))  # (B, h)
    return torch.cat([q2, beta * e_unit], dim=0)  # (2B, h)


def _tile_mm(
    a: torch.Tensor, b: torch.Tensor, r_buf: torch.Tensor, h_buf: torch.Tensor | None
) -> torch.Tensor:
    """``a @ b`` into the front of the float32 buffer ``r_buf`` (a bfloat16 GEMM goes
    through ``h_buf`` first: half-precision table, float32 chain); returns that view."""
    shape = (a.shape[0], b.shape[1])
    n = shape[0] * shape[1]
    res = r_buf[:n].view(shape)
    if h_buf is None:
        torch.mm(a, b, out=res)
    else:
        res.copy_(torch.mm(a, b, out=h_buf[:n].view(shape)))
    return res


def _local_by_users(
    e_u: torch.Tensor,
    e_unit: torch.Tensor,
    w_local: torch.Tensor,
    terms: ItemTerms,
    beta: float,
    chunk_items: int,
    out: torch.Tensor,
) -> None:
    """``beta cos(e, E_local)`` into ``out (B, I)``, for small B: one user per row.

    Per tile, ``(2B, h) @ (h, It*k)`` writes every user's logits and dots as contiguous
    rows of It*k floats, so the chain's element-wise ops run on whole vectors (with the
    slots-major layout of :func:`_local_by_slots`, rows of B < 16 floats would not fill a
    vector register).
    """
    n_b = e_u.shape[0]
    n_i, k = terms.n_items, terms.k
    dt = terms.dtype
    lhs = _rhs(e_u, e_unit, w_local, beta).to(dt).contiguous()  # (2B, h)
    step = tile_items(n_b, k, chunk_items)
    size = min(n_i, step) * k * 2 * n_b
    r_buf = _buffer("r", size, torch.float32)
    g_buf = _buffer("gu", size // 2, torch.float32)
    h_buf = _buffer("half", size, dt) if dt != torch.float32 else None
    log2w = terms.log2_weight.view(1, n_i * k)  # (1, I*k)
    sums = out.new_empty((2 * n_b, n_i))  # [u^T G u ; num] of every (user, item)
    for lo in range(0, n_i, step):
        hi = min(n_i, lo + step)
        m, r = hi - lo, (hi - lo) * k
        table = terms.table[lo * k : hi * k]  # (m*k, h)
        res = _tile_mm(lhs, table.T, r_buf, h_buf)  # (2B, m*k): [logits ; dots]
        u, d = res[:n_b], res[n_b:]  # (B, m*k) each contiguous
        u.sigmoid_()  # (1 + tanh(q.c)) / 2
        torch.add(log2w[:, lo * k : hi * k], u, alpha=2.0 * LOG2E, out=u)
        u.exp2_()  # weight * exp(1 + tanh(q.c)): the unnormalised masked softmax
        d.mul_(u)  # the terms of num = sum_k u (beta e.c / |e|)
        u3 = u.view(n_b, m, k).transpose(0, 1)  # (m, B, k) view
        # (m, B, k) = u^T G (G symmetric), then the terms of u^T G u over u
        gu = torch.bmm(u3, terms.gram[lo:hi], out=g_buf[: r * n_b].view(m, n_b, k))
        torch.mul(gu, u3, out=u3)
        torch.sum(res.view(2 * n_b, m, k), dim=2, out=sums[:, lo:hi])  # (2B, m)
    el = sums[:n_b].clamp_(min=TINY).rsqrt_()  # (B, I) 1 / |E_local| (unnormalised)
    torch.mul(sums[n_b:], el, out=out)


def _local_by_slots(
    e_u: torch.Tensor,
    e_unit: torch.Tensor,
    w_local: torch.Tensor,
    terms: ItemTerms,
    beta: float,
    chunk_items: int,
    out: torch.Tensor,
) -> None:
    """``beta cos(e, E_local)`` into ``out (B, I)``, for larger B: one slot per row.

    One matmul per tile writes ``[logits | dots]`` side by side, ``(It*k, 2B)``, into a
    per-thread buffer and the chain runs in place on its two halves. (Two B-column
    matmuls into separate contiguous buffers were measured 1.5-2x slower at B <= 8: each
    reads the table tile again.)
    """
    n_b = e_u.shape[0]
    n_i, k = terms.n_items, terms.k
    dt = terms.dtype
    rhs = _rhs(e_u, e_unit, w_local, beta).T.to(dt).contiguous()  # (h, 2B)
    step = tile_items(n_b, k, chunk_items)
    size = min(n_i, step) * k * 2 * n_b
    r_buf = _buffer("r", size, torch.float32)
    g_buf = _buffer("gu", size // 2, torch.float32)
    h_buf = _buffer("half", size, dt) if dt != torch.float32 else None
    sums = out.new_empty((n_i, 2, n_b))  # [u^T G u ; num] of every (item, user)
    for lo in range(0, n_i, step):
        hi = min(n_i, lo + step)
        m, r = hi - lo, (hi - lo) * k
        table = terms.table[lo * k : hi * k]  # (m*k, h)
        res = _tile_mm(table, rhs, r_buf, h_buf)  # (m*k, 2B): [logits | dots]
        u, d = res[:, :n_b], res[:, n_b:]  # (m*k, B) views: 2 q.c and beta e.c / |e|
        u.sigmoid_()  # (1 + tanh(q.c)) / 2
        torch.add(terms.log2_weight[lo * k : hi * k], u, alpha=2.0 * LOG2E, out=u)
        u.exp2_()  # weight * exp(1 + tanh(q.c)): the unnormalised masked softmax
        d.mul_(u)  # the terms of num = sum_k u (beta e.c / |e|)
        u3 = u.view(m, k, n_b)  # (m, k, B)
        gram = terms.gram[lo:hi]  # (m, k, k), symmetric
        if n_b < ROW_FORM_BELOW:  # (m, B, k) = u^T G: MKL's batched gemv of G u is slow
            gu = torch.bmm(u3.transpose(1, 2), gram, out=g_buf[: r * n_b].view(m, n_b, k))
            torch.mul(gu.transpose(1, 2), u3, out=u3)  # the terms of u^T G u, over u
        else:
            gu = torch.bmm(gram, u3, out=g_buf[: r * n_b].view(m, k, n_b))  # (m, k, B)
            torch.mul(gu, u3, out=u3)
        # one reduction over k for both sums: (m, k, 2, B) -> (m, 2, B)
        torch.sum(res.view(m, k, 2, n_b), dim=1, out=sums[lo:hi])
    el = sums[:, 0].clamp_(min=TINY).rsqrt_()  # (I, B) 1 / |E_local| (unnormalised)
    torch.mul(sums[:, 1], el, out=out.T)  # (I, B) view of the (B, I) answer


def _local_kernel(
    kernel: scorer_kernel.ChainKernel,
    e_u: torch.Tensor,
    e_unit: torch.Tensor,
    w_local: torch.Tensor,
    terms: ItemTerms,
    beta: float,
    chunk_items: int,
    out: torch.Tensor,
) -> None:
    """``beta cos(e, E_local)`` into ``out (B, I)`` with the compiled chain.

    Per tile the same matmul as :func:`_local_by_slots`, ``(It*k, h) @ (h, 2B)`` into a
    per-thread buffer; then one kernel call per part of the tile (the tile's items split
    over torch's intra-op threads: a ctypes call releases the GIL) writes the tile's
    columns of ``out``.
    """
    n_b = e_u.shape[0]
    n_i, k = terms.n_items, terms.k
    dt = terms.dtype
    lanes = kernel.lanes_for(n_b)
    fn = kernel.fns[lanes]
    n_p = -(-n_b // lanes) * lanes  # B padded with zero users to whole vectors
    rhs = _rhs(e_u, e_unit, w_local, beta)  # (2B, h)
    if n_p > n_b:  # zero columns: their logits and dots are 0, never answered
        pad = rhs.new_zeros((n_p - n_b, rhs.shape[1]))
        rhs = torch.cat([rhs[:n_b], pad, rhs[n_b:], pad])
    rhs = rhs.T.to(dt).contiguous()  # (h, 2Bp)
    step = tile_items(n_p, k, chunk_items, KERNEL_TILE_ELEMENTS)
    size = min(n_i, step) * k * 2 * n_p
    r_buf = _buffer("r", size, torch.float32)
    h_buf = _buffer("half", size, dt) if dt != torch.float32 else None
    weight = terms.weight.to(torch.float32).contiguous()  # (I, k, 1): 0 on masked slots
    gram = terms.gram.to(torch.float32).contiguous()  # (I, k, k)
    if not out.is_contiguous():
        raise ValueError("the kernel writes a contiguous (B, I) answer")
    n_parts = max(1, min(torch.get_num_threads(), step // KERNEL_PART_ITEMS))
    scratch_len = (k + 2) * n_p  # u (k, Bp), num and el (Bp each)
    scratch = [_buffer(f"kernel{j}", scratch_len, torch.float32) for j in range(n_parts)]
    pool = _pool(n_parts - 1) if n_parts > 1 else None
    w_ptr, g_ptr, o_ptr = weight.data_ptr(), gram.data_ptr(), out.data_ptr()
    for lo in range(0, n_i, step):
        hi = min(n_i, lo + step)
        m = hi - lo
        table = terms.table[lo * k : hi * k]  # (m*k, h)
        res = _tile_mm(table, rhs, r_buf, h_buf)  # (m*k, 2Bp): [logits | dots]
        parts = min(n_parts, max(1, m // KERNEL_PART_ITEMS))
        bounds = [lo + (m * j) // parts for j in range(parts + 1)]
        futures: list[Future[None]] = []
        for j in range(parts):
            a, b = bounds[j], bounds[j + 1]
            args = (
                res.data_ptr() + (a - lo) * k * 2 * n_p * 4,
                b - a,
                k,
                n_p,
                n_b,
                w_ptr + a * k * 4,
                g_ptr + a * k * k * 4,
                o_ptr + a * 4,
                n_i,
                scratch[j].data_ptr(),
                TINY,
            )
            if j + 1 < parts and pool is not None:
                futures.append(pool.submit(fn, *args))
            else:
                fn(*args)
        for fut in futures:
            fut.result()
