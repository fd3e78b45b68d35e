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

Modules (every name is imported from here): :mod:`ralm.lookalike.scorer_math` (the
formulas: :func:`gram_matrix`, :func:`safe_cos`, :func:`local_cos`, :func:`combine`, and
the differentiable :func:`score_matrix_train`, :func:`score_pairs`),
:mod:`ralm.lookalike.scorer_terms` (:class:`ItemTerms`, :func:`prepare_items`) and
:mod:`ralm.lookalike.scorer_chain` (:func:`score_prepared`, its tiles and per-thread
buffers; the chain after its matmul runs as the compiled loop of
:mod:`ralm.lookalike.scorer_kernel` where it builds, see :func:`use_kernel`);
:func:`score_matrix` is here.
"""

from __future__ import annotations

import torch

from ralm.lookalike.scorer_chain import (
    BY_USERS_BELOW,
    BY_USERS_FROM,
    KERNEL_BY_USERS_BELOW,
    KERNEL_FROM,
    KERNEL_TILE_ELEMENTS,
    LOG2E,
    ROW_FORM_BELOW,
    TILE_ELEMENTS,
    TINY,
    score_prepared,
    tile_items,
    use_kernel,
)
from ralm.lookalike.scorer_math import (
    EPS,
    combine,
    gram_matrix,
    local_cos,
    safe_cos,
    score_matrix_train,
    score_pairs,
)
from ralm.lookalike.scorer_terms import TABLE_DTYPES, ItemTerms, prepare_items, unit_rows

__all__ = [
    "BY_USERS_BELOW",
    "BY_USERS_FROM",
    "EPS",
    "KERNEL_BY_USERS_BELOW",
    "KERNEL_FROM",
    "KERNEL_TILE_ELEMENTS",
    "LOG2E",
    "ROW_FORM_BELOW",
    "TABLE_DTYPES",
    "TILE_ELEMENTS",
    "TINY",
    "ItemTerms",
    "combine",
    "gram_matrix",
    "local_cos",
    "prepare_items",
    "safe_cos",
    "score_matrix",
    "score_matrix_train",
    "score_pairs",
    "score_prepared",
    "tile_items",
    "unit_rows",
    "use_kernel",
]


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
