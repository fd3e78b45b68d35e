"""The scorer's per-item constants (:class:`ItemTerms`), built once per index version.

:func:`prepare_items` computes them; :func:`ralm.lookalike.scorer_chain.score_prepared`
scores a batch of users against them. Import every name from :mod:`ralm.lookalike.scorer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ralm.lookalike.scorer_math import EPS, gram_matrix


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


def unit_rows(x: torch.Tensor) -> torch.Tensor:
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
        global_unit=unit_rows(g).contiguous(),  # (I, h)
        prior=None if prior is None else prior.to(torch.float32).contiguous(),
        scale=None if scale is None else scale.to(torch.float32).contiguous(),
    )
