"""The scorer's formulas and its differentiable forms (training), on float tensors.

:func:`local_cos` is ``cos(e, E_local)`` from per-centroid terms without building E_local
(``e . E_local = w . (C e)``, ``|E_local|^2 = w^T G w``, see :mod:`ralm.lookalike.scorer`),
one autograd function over all pairs, ``G w`` one bmm per item; :func:`score_matrix_train`
(all pairs) is the autograd form on it; :func:`score_pairs` (row b: user b, item b, one
item per row) builds E_local itself, cheaper there than a Gram matrix per row. Serving
runs the same numbers through :mod:`ralm.lookalike.scorer_chain`; import every name from
:mod:`ralm.lookalike.scorer`. The training forms round differently from the serving chain
(~1e-7); tests/lookalike/test_scorer_grad.py holds them to their earlier forms' values
and gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ralm.lookalike import train_kernel
from ralm.lookalike.attention import masked_softmax, tanh

EPS = 1e-8
LOG2E = math.log2(math.e)


def gram_matrix(centroids: torch.Tensor) -> torch.Tensor:
    """Per-item Gram matrices ``C C^T``: (..., k, h) -> (..., k, k)."""
    return centroids @ centroids.transpose(-1, -2)


def matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``a @ b`` with its inputs rounded to ``dtype`` (accumulated in float32, the result
    rounded to ``dtype`` once and returned as float32).

    ``dtype`` bfloat16 is stage 2's mixed-precision training (``[lookalike_train]
    matmul_dtype``): on a CPU with native bf16 dot products (AVX512-BF16, AMX) oneDNN runs
    the product 2-3x faster, and through autograd the backward's two products take bf16
    inputs too; everything around the product stays float32.
    """
    if dtype == torch.float32 or a.dtype != torch.float32:
        return a @ b
    return (a.to(dtype) @ b.to(dtype)).float()


def safe_cos(dot: torch.Tensor, norm2_a: torch.Tensor, norm2_b: torch.Tensor) -> torch.Tensor:
    """Cosine from a dot product and squared norms; 0 when either vector is 0."""
    return dot / torch.sqrt(torch.clamp(norm2_a * norm2_b, min=EPS))


def local_cos(
    att_dots: torch.Tensor,
    mask: torch.Tensor,
    gram: torch.Tensor,
    u_norm2: torch.Tensor,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """cos(E_u, E_local) of every user against every item, without building E_local.

    ``w = masked_softmax(tanh(att) + log_prior)``, ``cos = (w . dots) / sqrt(|E_u|^2 w^T G w)``
    (0 for an item without valid centroids), as one autograd function (:class:`_LocalCos`).

    Args:
        att_dots: (2, B, I, k) ``2 (E_u W_l) . c_j`` (twice the attention logits before
            tanh: ``tanh(x) = 2 sigmoid(2x) - 1``, the 2 folded into the users' side) and
            ``E_u . c_j``, stacked: the all-pairs product's output as it comes.
        mask: (I, k) bool valid centroids.
        gram: (I, k, k) Gram matrices of the centroids (symmetric).
        u_norm2: (B, 1) squared norm of E_u.
        log_prior: optional (I, k) log cluster sizes added to the attention logits.
    """
    return _LocalCos.apply(att_dots, mask, gram, u_norm2, log_prior)  # type: ignore[no-any-return]


class _LocalCos(torch.autograd.Function):
    """:func:`local_cos` in a few passes over the (B, I, k) terms, and a hand-written backward.

    The softmax is shift-invariant: ``tanh + lp`` is shifted per item by ``max lp + 1``
    (``tanh <= 1``, so every exponent is <= 0 and the largest is >= -2, no overflow nor an
    all-underflowed row) and ``tanh = 2 sigmoid(2x) - 1`` (see :func:`tanh`), so the weights
    are ``e / sum(e)`` with ``e = exp(2 sigmoid(2x) + lp - max lp - 2)`` (as ``exp2``, ~3x
    faster than torch's ``exp``), and the sums ``w . dots = (e . dots) / sum(e)`` and
    ``w^T G w = (e^T G e) / sum(e)^2`` need no normalised copy of the weights; ``G e`` is
    one (B, k) @ (k, k) product per item (bmm over items), kept for the backward. With
    ``c = g_w . w`` a (B, I) scalar (``g_w = g_num dots + 2 g_quad G w``, G symmetric), the
    softmax's ``w (g_w - c)`` and tanh's ``d tanh / d(2x) = 2 s (1 - s)`` (``s`` the
    sigmoid) are scaled sums of saved buffers, written into one (2, B, I, k) gradient (no
    concatenation of the two halves). Items without a valid centroid are zeroed at the end
    (value and gradient): the old masked softmax's all-zero weights. The same math as
    softmax, tanh and ``w^T G w`` through autograd; the sums round differently
    (tests/lookalike/test_scorer_grad.py holds values and gradients to the earlier form,
    ~1e-16 apart in float64). Torch 2.13, one thread, a stage-2 batch (B 133, I 256, k 20,
    h 128): :func:`score_matrix_train` forward + backward 29 -> 23 ms CPU.
    """

    @staticmethod
    def forward(
        ctx: Any,
        att_dots: torch.Tensor,
        mask: torch.Tensor,
        gram: torch.Tensor,
        u_norm2: torch.Tensor,
        log_prior: torch.Tensor | None,
    ) -> torch.Tensor:
        att2, dots = att_dots[0], att_dots[1]  # (B, I, k)
        any_valid = mask.any(dim=-1)  # (I,)
        off = any_valid[:, None] & ~mask  # (I, k); items without seeds: zeroed at the end
        base = (
            att2.new_zeros(mask.shape) if log_prior is None else log_prior.detach().to(att2.dtype)
        )
        top = base.masked_fill(off, float("-inf")).amax(dim=-1, keepdim=True)  # (I, 1)
        bias = (base - top - 2.0).mul_(LOG2E).masked_fill_(off, float("-inf"))  # (I, k)
        s = torch.sigmoid(att2)  # (B, I, k)  (1 + tanh(att)) / 2
        e = torch.add(bias, s, alpha=2.0 * LOG2E).exp2_()  # exp(tanh + lp - max lp - 1)
        z = e.sum(dim=-1)  # (B, I)  the softmax's denominator
        tmp = torch.mul(e, dots)
        num = tmp.sum(dim=-1).div_(z)  # w . dots
        ge = torch.bmm(e.transpose(0, 1), gram).transpose(0, 1).contiguous()  # (B, I, k)  G e
        quad = torch.mul(ge, e, out=tmp).sum(dim=-1).div_(z * z)  # w^T G w
        prod = u_norm2 * quad
        d = torch.sqrt(torch.clamp(prod, min=EPS))
        ctx.save_for_backward(s, e, ge, dots, z, num, quad, d, prod, any_valid, u_norm2)
        return (num / d).mul_(any_valid)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        s, e, ge, dots, z, num, quad, d, prod, any_valid, u_norm2 = ctx.saved_tensors
        g = grad * any_valid
        g_num = g / d
        g_prod = (-0.5 * g * num / (d * d * d)) * (prod >= EPS)  # clamp: 0 below EPS
        g_u = (g_prod * quad).sum_to_size(u_norm2.shape) if ctx.needs_input_grad[3] else None
        g_quad = g_prod * u_norm2
        c = g_num * num + 2.0 * g_quad * quad  # g_w . w
        # 2 dL/dz = e (a dots + b G e + c'): 2 = tanh's 2 s (1 - s) over sigmoid_backward's
        g_ad = s.new_empty((2, *s.shape))
        t = g_ad[0]  # 2 dL/dz, then (in place) the gradient of the doubled logits
        torch.addcmul((-2.0 * c / z)[..., None], ge, (4.0 * g_quad / (z * z))[..., None], out=t)
        t.addcmul_(dots, (2.0 * g_num / z)[..., None]).mul_(e)
        g_gram = g_lp = None
        if ctx.needs_input_grad[4]:
            g_lp = t.sum(dim=0).mul_(0.5)  # 0 on masked slots (e = 0 there)
        torch.ops.aten.sigmoid_backward.grad_input(t, s, grad_input=t)  # tanh's
        torch.mul(e, (g_num / z)[..., None], out=g_ad[1])  # g_num w
        if ctx.needs_input_grad[2]:  # sum over users of g_quad w w^T
            ew = e * (g_quad / (z * z))[..., None]
            g_gram = torch.bmm(ew.permute(1, 2, 0), e.transpose(0, 1))
        return g_ad, None, g_gram, g_u, g_lp


def combine(
    cos_global: torch.Tensor | None,
    cos_local: torch.Tensor | None,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``s = alpha cos_global + beta cos_local`` (either term may be switched off)."""
    if cos_global is None and cos_local is None:
        raise ValueError("at least one of the global / local terms is required")
    s = 0.0 if cos_global is None else alpha * cos_global
    return s + (0.0 if cos_local is None else beta * cos_local)  # type: ignore[return-value]


def score_matrix_train(
    e_u: torch.Tensor,
    w_local: torch.Tensor,
    centroids: torch.Tensor,
    mask: torch.Tensor,
    global_vec: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    use_local: bool = True,
    use_global: bool = True,
    gram: torch.Tensor | None = None,
    log_prior: torch.Tensor | None = None,
    chunk_items: int = 4096,
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Raw scores of every user against every item, (B, I) in [-1, 1], through autograd.

    The same terms as :func:`score_matrix` (tested equal), written with out-of-place ops
    so listwise training losses can back-propagate; serving uses the prepared path.

    Args:
        e_u: (B, h) transformed target users.
        w_local: (h, h) local-attention matrix W_l.
        centroids: (I, k, h) seed centroids (masked slots ignored).
        mask: (I, k) bool valid centroids.
        global_vec: (I, h) precomputed global-attention vectors.
        alpha: weight of the global term.
        beta: weight of the local term.
        use_local: include the local term.
        use_global: include the global term.
        gram: optional (I, k, k) precomputed ``C C^T`` (e.g. from a SeedIndex).
        log_prior: optional (I, k) log cluster sizes added to the local-attention logits.
        chunk_items: items scored per chunk (bounds the (B, chunk, k) intermediates).
        matmul_dtype: input precision of the all-pairs product (:func:`matmul`; bfloat16 =
            mixed-precision training).
    """
    n_b, h = e_u.shape
    n_i, k, _ = centroids.shape
    u_norm2 = (e_u * e_u).sum(dim=-1)  # (B,)
    q = e_u @ w_local if use_local else None  # (B, h)
    out = []
    for lo in range(0, n_i, max(1, chunk_items)):
        hi = min(n_i, lo + chunk_items)
        c = centroids[lo:hi]  # (Ic, k, h)
        cg = None
        if use_global:
            g = global_vec[lo:hi]  # (Ic, h)
            dot = e_u @ g.T  # (B, Ic)
            cg = safe_cos(dot, u_norm2[:, None], (g * g).sum(dim=-1)[None, :])
        cl = None
        if q is not None:
            gm = gram_matrix(c) if gram is None else gram[lo:hi]  # (Ic, k, k)
            lp = None if log_prior is None else log_prior[lo:hi]  # (Ic, k)
            kernel = train_kernel.kernel_for(c, gm, lp)
            if kernel is not None:  # the compiled chain (same formulas)
                cl = train_kernel.local_cos(
                    kernel, 2.0 * q, e_u, c, mask[lo:hi], gm, u_norm2, lp,
                    lambda a, b: matmul(a, b, matmul_dtype),
                )  # fmt: skip
            else:
                both = torch.cat([2.0 * q, e_u], dim=0)  # (2B, h); 2 q: see local_cos
                r = matmul(both, c.reshape(-1, h).T, matmul_dtype)  # attention logits, dots
                r = r.view(2, n_b, hi - lo, k)
                cl = local_cos(r, mask[lo:hi], gm, u_norm2[:, None], lp)
        out.append(combine(cg, cl, alpha, beta))  # (B, Ic)
    if not out:
        return e_u.new_zeros((n_b, 0))
    return torch.cat(out, dim=1)  # (B, I)


def score_pairs(
    e_u: torch.Tensor,
    w_local: torch.Tensor,
    centroids: torch.Tensor,
    mask: torch.Tensor,
    global_vec: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    use_local: bool = True,
    use_global: bool = True,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw score of user b against item b, (B,). Same math as :func:`score_matrix`.

    Args:
        e_u: (B, h) transformed target users.
        w_local: (h, h) local-attention matrix W_l.
        centroids: (B, k, h) centroids of each row's item (e.g. after leave-self-out).
        mask: (B, k) bool valid centroids.
        global_vec: (B, h) global vectors of each row's item.
        alpha: weight of the global term.
        beta: weight of the local term.
        use_local: include the local term.
        use_global: include the global term.
        log_prior: optional (B, k) log cluster sizes added to the local-attention logits.
    """
    u_norm2 = (e_u * e_u).sum(dim=-1)  # (B,)
    cg = None
    if use_global:
        dot = (e_u * global_vec).sum(dim=-1)  # (B,)
        cg = safe_cos(dot, u_norm2, (global_vec * global_vec).sum(dim=-1))
    cl = None
    if use_local:  # one item per row: E_local itself (B, h) costs less than its Gram matrix
        q = e_u @ w_local  # (B, h)
        att = torch.bmm(q.unsqueeze(1), centroids.transpose(1, 2))  # (B, 1, k)
        w = masked_softmax(tanh(att), mask.unsqueeze(1), _unsqueeze(log_prior))  # (B, 1, k)
        e_local = torch.bmm(w, centroids).squeeze(1)  # (B, h)
        num = (e_u * e_local).sum(dim=-1)  # (B,)
        cl = safe_cos(num, u_norm2, (e_local * e_local).sum(dim=-1))
    return combine(cg, cl, alpha, beta)


def _unsqueeze(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.unsqueeze(1)
