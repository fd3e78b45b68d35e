"""Stage 2's local cosine over all pairs of a batch, forward and backward, compiled.

The training step scores every click against every item of its batch (the softmax loss's
columns): :func:`ralm.lookalike.scorer_math.local_cos` runs the local attention's chain
(sigmoid, exp2, the weight products, ``G e`` as a batched matmul, the sums over k) as one
torch pass per step over the ``(B, I, k)`` terms, and the backward as as many again. The
compiled kernel (``kernels/chain_body.h``, ``train_fwd`` / ``train_bwd``, built and loaded
by :mod:`ralm.lookalike.scorer_kernel`) does each item's chain in registers and L1,
vectorised over the users, and the backward recomputes the forward's terms instead of
keeping them. Same formulas as :class:`ralm.lookalike.scorer_math._LocalCos` (tested
against it and against float64 autograd in tests/lookalike/test_train_kernel.py);
``RALM_SCORER_KERNEL=off`` keeps the torch form.

The all-pairs product is written by slots, ``(I*k, h) @ (h, 2 Bp)``: one row per (item,
slot) with the B users (padded with zero users to whole vectors) contiguous, the layout
the kernel reads; its backward is autograd's.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ralm.lookalike import scorer_kernel

PART_ITEMS = 32  # fewest items per thread's part of a call
EPS = 1e-8  # the clamp of |e|^2 w^T G w (ralm.lookalike.scorer_math.EPS)


def kernel_for(*tensors: torch.Tensor | None) -> scorer_kernel.ChainKernel | None:
    """The compiled kernel when it applies: loaded, float32 inputs, and no gradient wanted
    for the per-item constants (centroids' Gram matrices, log cluster sizes)."""
    for t in tensors:
        if t is not None and (t.requires_grad or t.dtype != torch.float32):
            return None
    return scorer_kernel.load()


def slot_weights(mask: torch.Tensor, log_prior: torch.Tensor | None) -> torch.Tensor:
    """``exp(lp - max lp - 2)`` per (item, slot), 0 on a masked slot: (I, k) float32.

    The shift by the item's largest valid ``lp`` plus 2 keeps every ``exp(2 s) weight`` in
    (0, 1] (as in ``_LocalCos``); an item without a valid slot has only zero weights, which
    the kernel answers with 0 (value and gradient)."""
    base = mask.new_zeros(mask.shape, dtype=torch.float32) if log_prior is None else log_prior
    base = base.detach().to(torch.float32)
    top = base.masked_fill(~mask, float("-inf")).amax(dim=-1, keepdim=True)  # (I, 1)
    return torch.exp(base - top - 2.0).masked_fill_(~mask, 0.0).contiguous()


def local_cos(
    kernel: scorer_kernel.ChainKernel,
    q2: torch.Tensor,
    e_u: torch.Tensor,
    centroids: torch.Tensor,
    mask: torch.Tensor,
    gram: torch.Tensor,
    u_norm2: torch.Tensor,
    log_prior: torch.Tensor | None,
    matmul: Any,
) -> torch.Tensor:
    """``cos(e_u, E_local)`` of every user and item, (B, I), differentiable in ``q2`` and
    ``e_u`` (through the product) and ``u_norm2`` (B,).

    Args:
        kernel: the loaded kernel (:func:`kernel_for`).
        q2: (B, h) doubled attention queries ``2 e_u W_l``.
        e_u: (B, h) transformed users.
        centroids: (I, k, h) the items' centroids (constants).
        mask: (I, k) bool valid slots.
        gram: (I, k, k) float32 ``C C^T`` (constants).
        u_norm2: (B,) ``|e_u|^2``.
        log_prior: optional (I, k) log cluster sizes (constants).
        matmul: ``(a, b) -> a @ b`` in the step's precision
            (:func:`ralm.lookalike.scorer_math.matmul` with its dtype).
    """
    n_b, h = e_u.shape
    n_i, k, _ = centroids.shape
    lanes = kernel.lanes_for(n_b)
    n_p = -(-n_b // lanes) * lanes  # zero users up to whole vectors
    if n_p > n_b:
        pad = e_u.new_zeros((n_p - n_b, h))
        rhs = torch.cat([q2, pad, e_u, pad])  # (2 Bp, h)
    else:
        rhs = torch.cat([q2, e_u])
    res = matmul(centroids.reshape(n_i * k, h), rhs.T)  # (I*k, 2 Bp): [logits | dots]
    weight = slot_weights(mask, log_prior)
    return _LocalCosKernel.apply(  # type: ignore[no-any-return]
        res.contiguous(), weight, gram.contiguous(), u_norm2, kernel, lanes, n_b
    )


def _parts(n_i: int) -> list[tuple[int, int]]:
    """The items split over torch's intra-op threads (at least ``PART_ITEMS`` each)."""
    n = max(1, min(torch.get_num_threads(), n_i // PART_ITEMS))
    bounds = [(n_i * j) // n for j in range(n + 1)]
    return [(bounds[j], bounds[j + 1]) for j in range(n)]


def _run(calls: list[tuple[Any, tuple[Any, ...]]]) -> None:
    """Run the kernel calls, all but the first on the shared pool (ctypes drops the GIL)."""
    futures: list[Future[None]] = []
    if len(calls) > 1:
        workers = scorer_kernel.pool(len(calls) - 1)
        futures = [workers.submit(fn, *args) for fn, args in calls[1:]]
    fn, args = calls[0]
    fn(*args)
    for f in futures:
        f.result()


class _LocalCosKernel(torch.autograd.Function):
    """The kernel's forward and backward over the by-slots product ``res (I*k, 2 Bp)``:
    gradients for ``res`` (autograd carries them into the product's inputs) and for
    ``u_norm2``; the slot weights and Gram matrices are constants."""

    @staticmethod
    def forward(
        ctx: Any,
        res: torch.Tensor,
        weight: torch.Tensor,
        gram: torch.Tensor,
        u_norm2: torch.Tensor,
        kernel: scorer_kernel.ChainKernel,
        lanes: int,
        n_b: int,
    ) -> torch.Tensor:
        n_i, k = weight.shape
        n_p = res.shape[1] // 2
        un2 = res.new_zeros(n_p)
        un2[:n_b] = u_norm2.detach().reshape(-1)
        out = res.new_empty((n_b, n_i))
        fwd = kernel.train[lanes][0]
        row = k * 2 * n_p * 4  # bytes of one item's rows
        calls, keep = [], []  # keep: the scratch buffers live until the calls return
        for lo, hi in _parts(n_i):
            scratch = res.new_empty(k * n_p)
            keep.append(scratch)
            args = (
                res.data_ptr() + lo * row, hi - lo, k, n_p, n_b,
                weight.data_ptr() + lo * k * 4, gram.data_ptr() + lo * k * k * 4,
                un2.data_ptr(), EPS, out.data_ptr() + lo * 4, n_i, scratch.data_ptr(),
            )  # fmt: skip
            calls.append((fwd, args))
        _run(calls)
        del keep
        ctx.save_for_backward(res, weight, gram, un2)
        ctx.kernel, ctx.lanes, ctx.n_b, ctx.shape = kernel, lanes, n_b, u_norm2.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        res, weight, gram, un2 = ctx.saved_tensors
        n_i, k = weight.shape
        n_p, n_b = res.shape[1] // 2, ctx.n_b
        grad = grad.to(torch.float32).contiguous()
        g_res = torch.empty_like(res)
        gq = res.new_empty((n_b, n_i))
        bwd = ctx.kernel.train[ctx.lanes][1]
        row = k * 2 * n_p * 4
        calls, keep = [], []
        for lo, hi in _parts(n_i):
            scratch = res.new_empty(3 * k * n_p)
            keep.append(scratch)
            args = (
                res.data_ptr() + lo * row, hi - lo, k, n_p, n_b,
                weight.data_ptr() + lo * k * 4, gram.data_ptr() + lo * k * k * 4,
                un2.data_ptr(), EPS, grad.data_ptr() + lo * 4, n_i,
                g_res.data_ptr() + lo * row, gq.data_ptr() + lo * 4, scratch.data_ptr(),
            )  # fmt: skip
            calls.append((bwd, args))
        _run(calls)
        del keep
        g_u = gq.sum(dim=1).reshape(ctx.shape) if ctx.needs_input_grad[3] else None
        return g_res, None, None, g_u, None, None, None
