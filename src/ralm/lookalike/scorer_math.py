"""The scorer's formulas and its differentiable forms (training), on float tensors.

:func:`local_cos` is ``cos(e, E_local)`` from per-centroid terms without building E_local
(``e . E_local = w . (C e)``, ``|E_local|^2 = w^T G w``, see :mod:`ralm.lookalike.scorer`);
:func:`score_matrix_train` (all pairs) is the autograd form on it, ``w^T G w`` one bmm per
item (:func:`quad_form`); :func:`score_pairs` (row b: user b, item b, one item per row)
builds E_local itself, cheaper there than a Gram matrix per row. Serving runs the same
numbers through :mod:`ralm.lookalike.scorer_chain`; import every name from
:mod:`ralm.lookalike.scorer`. The training forms round differently from the serving chain
(~1e-7); tests/lookalike/test_scorer_grad.py holds them to their earlier forms' values
and gradients.
"""

from __future__ import annotations

import torch

from ralm.lookalike.attention import masked_softmax, tanh

EPS = 1e-8


def gram_matrix(centroids: torch.Tensor) -> torch.Tensor:
    """Per-item Gram matrices ``C C^T``: (..., k, h) -> (..., k, k)."""
    return centroids @ centroids.transpose(-1, -2)


def safe_cos(dot: torch.Tensor, norm2_a: torch.Tensor, norm2_b: torch.Tensor) -> torch.Tensor:
    """Cosine from a dot product and squared norms; 0 when either vector is 0."""
    return dot / torch.sqrt(torch.clamp(norm2_a * norm2_b, min=EPS))


def local_cos(
    att_logits: torch.Tensor,
    dots: torch.Tensor,
    mask: torch.Tensor,
    gram: torch.Tensor,
    u_norm2: torch.Tensor,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """cos(E_u, E_local) from per-centroid terms, without building E_local.

    Args:
        att_logits: (..., k) ``(E_u W_l) . c_j`` before tanh.
        dots: (..., k) ``E_u . c_j``.
        mask: (..., k) bool valid centroids (broadcastable).
        gram: (..., k, k) Gram matrices of the centroids (broadcastable).
        u_norm2: (...) squared norm of E_u (broadcastable).
        log_prior: optional (..., k) log cluster sizes added to the attention logits.
    """
    w = masked_softmax(tanh(att_logits), mask, log_prior)  # (..., k)
    num = (w * dots).sum(dim=-1)  # (...)  E_u . E_local
    return safe_cos(num, u_norm2, quad_form(w, gram))  # |E_local|^2 = w^T G w


def quad_form(w: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``w^T G w`` over the last axis: w (..., k), gram (..., k, k) broadcastable -> (...).

    All pairs (w (B, I, k) against per-item gram (I, k, k)) run as one (B, k) @ (k, k)
    product per item (bmm over items). A broadcast matmul would copy the Gram matrices
    once per user and run B x I (k, k) @ (k, 1) products: ~3x slower forward and backward
    at stage-2 training shapes (B 51, I 256, k 20). The sums round differently from that
    form (scores ~1e-7 apart, the same math).
    """
    if w.dim() == 3 and gram.dim() == 3 and gram.shape[0] == w.shape[1]:
        wt = w.transpose(0, 1)  # (I, B, k)
        return (torch.bmm(wt, gram) * wt).sum(dim=-1).T  # (B, I)
    gw = torch.matmul(gram, w.unsqueeze(-1)).squeeze(-1)  # (..., k)  G w
    return (w * gw).sum(dim=-1)


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
            both = torch.cat([q, e_u], dim=0)  # (2B, h)
            r = (both @ c.reshape(-1, h).T).view(2 * n_b, hi - lo, k)  # (2B, Ic, k)
            att, dots = r.split([n_b, n_b])  # backward: one cat (slices: 2 zero-fills)
            gm = gram_matrix(c) if gram is None else gram[lo:hi]  # (Ic, k, k)
            lp = None if log_prior is None else log_prior[lo:hi][None]  # (1, Ic, k)
            cl = local_cos(att, dots, mask[lo:hi][None], gm, u_norm2[:, None], lp)
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
