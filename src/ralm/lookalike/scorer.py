"""The ONE look-alike scorer, used by training, evaluation and the online service.

Score of a transformed target user ``e`` against an item with centroids ``C (k, h)``, mask
``m (k,)`` and global vector ``g (h,)`` (spec section 2)::

    s = alpha * cos(e, g) + beta * cos(e, E_local),
    E_local = w C,   w = masked_softmax(tanh((e W_l) C^T) + log n)  (k,)

``log n`` (log cluster sizes, optional ``log_prior``) makes a centroid that stands for n
seeds weigh like those n seeds would: with singleton clusters the formula is the paper's
attention over seeds, and clustering stays an approximation of it (LookalikeConfig
``size_prior``).

E_local is never materialised. With the per-item Gram matrix ``G = C C^T (k, k)``::

    e . E_local   = w . (C e)          |E_local|^2 = w^T G w

so scoring B users against I items costs one ``(I*k, h) @ (h, 2B)`` matmul plus
O(B I k^2), and the largest intermediate is (I_chunk, k, 2B) instead of (B, I, h).

Serving: :func:`prepare_items` computes the per-item constants once per index version
(:class:`ItemTerms`: flat centroid table, optionally in bfloat16, Gram matrices,
slot weights with the mask and size prior folded in, |g|^2, the seed-count prior) and
:func:`score_prepared` scores a batch of users against them (the all-pairs form, B users
x I items, inference only; :func:`score_matrix` = both). :func:`score_pairs` is the
aligned, differentiable form (row b scores user b against item b, used in training where
every example has its own leave-self-out centroids), on the same formulas: tests check
both against a naive per-(user, item) loop and against each other.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from ralm.lookalike.attention import masked_softmax

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
    w = masked_softmax(torch.tanh(att_logits), mask, log_prior)  # (..., k)
    num = (w * dots).sum(dim=-1)  # (...)  E_u . E_local
    gw = torch.matmul(gram, w.unsqueeze(-1)).squeeze(-1)  # (..., k)  G w
    el_norm2 = (w * gw).sum(dim=-1)  # (...)  |E_local|^2 = w^T G w
    return safe_cos(num, u_norm2, el_norm2)


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


@dataclass(frozen=True)
class ItemTerms:
    """Per-item constants of the scorer, computed once per index version (or chunk).

    Everything that does not depend on the user is here, so a request only runs the
    matmuls and the post-matmul chain. Built by :func:`prepare_items` (or
    ``LookalikeModel.prepare_items``, which adds the model's priors); scored by
    :func:`score_prepared`. The terms belong to one model's weights (the seed-count prior
    holds gamma): rebuild them when the model changes.

    Attributes:
        table: (I*k, h) the centroids as one row per (item, slot), in the serving dtype
            (float32, or bfloat16 for the half-precision table).
        k: centroid slots per item.
        weight: (I, k, 1) float32 attention multiplier of every slot: its cluster size
            (``exp(log n)``, the size prior) or 1, and 0 on masked slots. The masked
            softmax becomes ``w = weight * exp(tanh(logit)) / sum(...)``, with no mask
            logic per request.
        log_weight: (I, k, 1) float32 ``log(weight)`` (-inf on masked slots).
        log2_weight: (I*k, 1) float32 ``log2(weight)`` (-inf on masked slots), what the
            chain adds to the logits before its ``exp2`` (torch's exp2 is ~2x its exp).
        gram: (I, k, k) float32 ``C C^T``.
        global_vec: (I, h) float32 global-attention vectors.
        global_norm2: (I,) float32 ``|g|^2``.
        global_unit: (I, h) float32 ``g / |g|`` (0 for g = 0): the global cosine is one
            matmul against the users' unit vectors.
        prior: optional (I,) float32 score offset (the audience-size prior).
        scale: optional (I,) float32 multiplier of the look-alike score, applied before
            ``prior`` (the "shrink" prior's trust in an item's evidence).
    """

    table: torch.Tensor
    k: int
    weight: torch.Tensor
    log_weight: torch.Tensor
    log2_weight: torch.Tensor
    gram: torch.Tensor
    global_vec: torch.Tensor
    global_norm2: torch.Tensor
    global_unit: torch.Tensor
    prior: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    @property
    def n_items(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    def rows(self, lo: int, hi: int) -> ItemTerms:
        """Views of items ``lo:hi`` (no copy)."""
        return ItemTerms(
            table=self.table[lo * self.k : hi * self.k],
            k=self.k,
            weight=self.weight[lo:hi],
            log_weight=self.log_weight[lo:hi],
            log2_weight=self.log2_weight[lo * self.k : hi * self.k],
            gram=self.gram[lo:hi],
            global_vec=self.global_vec[lo:hi],
            global_norm2=self.global_norm2[lo:hi],
            global_unit=self.global_unit[lo:hi],
            prior=None if self.prior is None else self.prior[lo:hi],
            scale=None if self.scale is None else self.scale[lo:hi],
        )


# float16 is not offered: torch has no fast CPU float16 GEMM (measured 20x the float32
# floor at batch 32), while bfloat16 runs on oneDNN's AVX512-BF16 kernels
TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their norm, clamped like :func:`safe_cos` (0 rows stay 0): (N, h)."""
    return x / torch.sqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=EPS))


@torch.no_grad()
def prepare_items(
    centroids: torch.Tensor,
    mask: torch.Tensor,
    global_vec: torch.Tensor,
    gram: torch.Tensor | None = None,
    log_prior: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    dtype: torch.dtype | str = torch.float32,
    scale: torch.Tensor | None = None,
) -> ItemTerms:
    """Per-item constants of :func:`score_prepared` (see :class:`ItemTerms`).

    Args:
        centroids: (I, k, h) float32 seed centroids (masked slots ignored).
        mask: (I, k) bool valid centroids.
        global_vec: (I, h) global-attention vectors.
        gram: optional (I, k, k) precomputed ``C C^T`` (computed when None).
        log_prior: optional (I, k) log cluster sizes added to the attention logits.
        prior: optional (I,) score offset added to every user's score of the item.
        dtype: dtype of the centroid table: float32, or bfloat16 (half the memory
            traffic; Gram matrices, global vectors and the chain stay float32).
        scale: optional (I,) multiplier of each item's look-alike score (before ``prior``).
    """
    if isinstance(dtype, str):
        if dtype not in TABLE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TABLE_DTYPES)}, got {dtype!r}")
        dtype = TABLE_DTYPES[dtype]
    if dtype not in TABLE_DTYPES.values():
        raise ValueError(f"centroid table dtype must be float32 or bfloat16, got {dtype}")
    n_i, k, h = centroids.shape
    flat = centroids.reshape(n_i * k, h)  # (I*k, h), a view when contiguous
    table = flat.to(dtype).contiguous()
    if gram is None:
        gram = gram_matrix(centroids.to(torch.float32))  # (I, k, k)
    weight = mask.to(torch.float32)  # (I, k)
    if log_prior is not None:
        weight = weight * torch.exp(log_prior.to(torch.float32))
    g = global_vec.to(torch.float32).contiguous()  # (I, h)
    weight = weight.unsqueeze(-1).contiguous()  # (I, k, 1)
    return ItemTerms(
        table=table,
        k=k,
        weight=weight,
        log_weight=torch.log(weight),  # (I, k, 1), -inf on masked slots
        log2_weight=torch.log2(weight).reshape(n_i * k, 1),  # (I*k, 1)
        gram=gram.to(torch.float32).contiguous(),
        global_vec=g,
        global_norm2=(g * g).sum(dim=-1),  # (I,)
        global_unit=_unit_rows(g).contiguous(),  # (I, h)
        prior=None if prior is None else prior.to(torch.float32).contiguous(),
        scale=None if scale is None else scale.to(torch.float32).contiguous(),
    )


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


def _buffer(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat per-thread buffer of at least ``numel`` elements (grown, never shrunk)."""
    bufs: dict[tuple[str, torch.dtype], torch.Tensor] | None = getattr(_WORKSPACE, "bufs", None)
    if bufs is None:
        bufs = _WORKSPACE.bufs = {}
    buf = bufs.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = bufs[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def tile_items(n_b: int, k: int, chunk_items: int = 1024) -> int:
    """Items per tile of :func:`score_prepared`: its (tile*k, B) buffers stay in L2.

    Args:
        n_b: users in the batch.
        k: centroid slots per item.
        chunk_items: upper bound on the tile.
    """
    return max(1, min(chunk_items, max(16, TILE_ELEMENTS // (k * max(1, n_b)))))


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
    end. torch.compile of this chain was measured faster only with static shapes (a 25 s
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
    e_unit = _unit_rows(e_u)  # (B, h), 0 for e = 0 (its scores are 0 as in safe_cos)
    if use_local:
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
        res = r_buf[: r * 2 * n_b].view(2 * n_b, r)  # (2B, m*k): [logits ; dots]
        if h_buf is None:
            torch.mm(lhs, table.T, out=res)
        else:  # bfloat16 GEMM, float32 chain
            res.copy_(torch.mm(lhs, table.T, out=h_buf[: r * 2 * n_b].view(2 * n_b, r)))
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
        res = r_buf[: r * 2 * n_b].view(r, 2 * n_b)  # (m*k, 2B): [logits | dots]
        if h_buf is None:
            torch.mm(table, rhs, out=res)
        else:  # bfloat16 GEMM, float32 chain
            res.copy_(torch.mm(table, rhs, out=h_buf[: r * 2 * n_b].view(r, 2 * n_b)))
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


def score_matrix(
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
    chunk_items: int = 1024,
) -> torch.Tensor:
    """Raw scores of every user against every item, (B, I) in [-1, 1].

    :func:`prepare_items` then :func:`score_prepared` (a caller that scores the same items
    many times should keep the prepared terms instead).

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
        chunk_items: items scored per chunk.
    """
    terms = prepare_items(centroids, mask, global_vec, gram=gram, log_prior=log_prior)
    return score_prepared(
        e_u, w_local, terms, alpha, beta, use_local, use_global, chunk_items=chunk_items
    )


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
            r = (c.reshape(-1, h) @ both.T).reshape(hi - lo, k, 2 * n_b)  # (Ic, k, 2B)
            r = r.permute(2, 0, 1)  # (2B, Ic, k)
            gm = gram_matrix(c) if gram is None else gram[lo:hi]  # (Ic, k, k)
            lp = None if log_prior is None else log_prior[lo:hi][None]  # (1, Ic, k)
            cl = local_cos(r[:n_b], r[n_b:], mask[lo:hi][None], gm, u_norm2[:, None], lp)
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
    if use_local:
        q = e_u @ w_local  # (B, h)
        att = torch.einsum("bh,bkh->bk", q, centroids)  # (B, k)
        dots = torch.einsum("bh,bkh->bk", e_u, centroids)  # (B, k)
        cl = local_cos(att, dots, mask, gram_matrix(centroids), u_norm2, log_prior)
    return combine(cg, cl, alpha, beta)
