"""Merge layers (paper Fig. 3, middle): field stack ``H (B, n, m)`` -> one vector.

Attention merge with the spec's corrected shapes::

    U = tanh(H W1)        W1: (m, a)      U: (B, n, a)
    alpha = softmax(U W2) W2: (a,)        alpha: (B, n), one weight per field
    M = alpha H                           M: (B, m)

The concat merge (paper's ablation, Fig. 5) flattens ``H`` to ``(B, n*m)``.

The attention-weighted concat (``attention_concat``) keeps the paper's per-field attention
``alpha`` but does not average the fields into one ``m``-vector: each field is scaled by
``n * alpha_i`` and the fields are concatenated, ``(B, n*m)``. With uniform attention it is
exactly the concat merge; the attention only re-weights fields per user, so no field's
information is mixed into another's coordinates (the weighted average of the paper's
merge puts every field into the same ``m`` coordinates).
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionMerge(nn.Module):
    """Attention over fields: a softmax weight per field, weighted sum of field vectors.

    Args:
        dim: field embedding dimension ``m``.
        units: attention hidden units ``a``.
    """

    def __init__(self, dim: int, units: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, units, bias=False)  # W1 (m, a)
        self.w2 = nn.Parameter(torch.empty(units))  # W2 (a,)
        nn.init.normal_(self.w2, std=units**-0.5)
        self.out_dim = dim

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """Field attention ``alpha`` (B, n), rows sum to 1, from ``h`` (B, n, m)."""
        u = torch.tanh(self.w1(h))  # (B, n, a)
        return torch.softmax(u @ self.w2, dim=-1)  # (B, n)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(h)  # (B, n)
        return (alpha.unsqueeze(-1) * h).sum(1)  # (B, m); cheaper than B tiny bmm's


class AttentionConcatMerge(AttentionMerge):
    """Field attention as per-field gates on the concatenation: ``(n alpha_i h_i)_i``.

    Args:
        dim: field embedding dimension ``m``.
        units: attention hidden units ``a``.
        n_fields: number of fields ``n``.
    """

    def __init__(self, dim: int, units: int, n_fields: int) -> None:
        super().__init__(dim, units)
        self.n_fields = n_fields
        self.out_dim = dim * n_fields

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate = self.weights(h) * self.n_fields  # (B, n), 1 everywhere when uniform
        return (gate.unsqueeze(-1) * h).flatten(start_dim=1)  # (B, n*m)


class ConcatMerge(nn.Module):
    """Concatenation of the field vectors (ablation baseline).

    Args:
        dim: field embedding dimension ``m``.
        n_fields: number of fields ``n``.
    """

    def __init__(self, dim: int, n_fields: int) -> None:
        super().__init__()
        self.out_dim = dim * n_fields

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(start_dim=1)  # (B, n*m)
