"""Feature embedding (paper Fig. 3, bottom): one vector of dim ``m`` per user field.

- univalent categorical field -> ``nn.Embedding`` lookup;
- multivalent categorical field -> ``nn.EmbeddingBag(mode="mean")`` over its values
  (order-invariant by construction; an EMPTY bag gives the zero vector, never NaN);
- all continuous fields -> concatenated, one linear layer to ``m``, counted as one field.

Code 0 is the OOV / missing value and has its own learned row (it is not padding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ralm.data.batching import UserBatch
from ralm.data.encoded import FieldInfo
from ralm.errors import ConfigError

CONTINUOUS_FIELD = "continuous"
# dense-gradient bags over a small vocabulary (B x V at most this many floats): forward by
# EmbeddingBag (one pass over the values), backward as one (V, B) @ (B, d) matmul
# (EmbeddingBag's dense backward sorts every value; the matmul form of the forward cost a
# (B, V) @ (V, d) matmul: both slower on the ML-100K history bag, issue 9)
BAG_MATMUL_MAX = 1 << 20


def bag_share_matrix(
    values: torch.Tensor, offsets: torch.Tensor, n_codes: int, dtype: torch.dtype
) -> torch.Tensor:
    """The (B, V) matrix ``M`` with ``M[b, v]`` = share of code v in bag b (1/len per value).

    Args:
        values: int64 (N,) codes of all bags, concatenated.
        offsets: int64 (B,) start of every bag in ``values``.
        n_codes: vocabulary size V.
        dtype: float dtype of ``M``.
    Returns:
        (B, V) bag shares: ``M @ weight`` is the bag means (an empty bag is a zero row).
    """
    n_b, n_v = offsets.numel(), values.numel()
    lengths = torch.diff(offsets, append=offsets.new_tensor([n_v]))  # (B,)
    rows = torch.repeat_interleave(torch.arange(n_b), lengths, output_size=n_v)  # (N,)
    share = (1.0 / lengths.clamp(min=1).to(dtype))[rows]  # (N,)
    m = torch.zeros(n_b, n_codes, dtype=dtype)  # (B, V)
    m.index_put_((rows, values), share, accumulate=True)
    return m


def bag_mean_matmul(
    weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """``EmbeddingBag(mode="mean")`` as ``M @ weight`` with ``M (B, V)`` the bag shares.

    Args:
        weight: (V, d) table.
        values: int64 (N,) codes of all bags, concatenated.
        offsets: int64 (B,) start of every bag in ``values``.
    Returns:
        (B, d) bag means; an empty bag gives zeros.
    """
    return bag_share_matrix(values, offsets, weight.shape[0], weight.dtype) @ weight  # (B, d)


class _BagMeanMatmulGrad(torch.autograd.Function):
    """Mean bag: EmbeddingBag forward, weight gradient ``M^T @ grad`` (one matmul)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(values, offsets)
        ctx.n_codes = weight.shape[0]
        return F.embedding_bag(values, weight, offsets, mode="mean")  # (B, d)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        values, offsets = ctx.saved_tensors
        m = bag_share_matrix(values, offsets, ctx.n_codes, grad.dtype)  # (B, V)
        return m.T @ grad, None, None  # (V, d)


def bag_mean(weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``EmbeddingBag(mode="mean")`` whose weight gradient is one dense matmul.

    The forward is ``F.embedding_bag`` (the same means); the backward builds the bag-share
    matrix ``M`` (B, V) and returns ``M^T @ grad``, the gradient of ``M @ weight``. For
    dense-gradient tables with ``B x V`` small (``BAG_MATMUL_MAX``).

    Args:
        weight: (V, d) table.
        values: int64 (N,) codes of all bags, concatenated.
        offsets: int64 (B,) start of every bag in ``values``.
    Returns:
        (B, d) bag means; an empty bag gives zeros.
    """
    out: torch.Tensor = _BagMeanMatmulGrad.apply(weight, values, offsets)
    return out


class FeatureEmbedding(nn.Module):
    """Embeds every user field into a stack ``H`` of shape ``(B, n_fields, dim)``.

    Args:
        fields: the encoded dataset's field infos (order defines the field order of ``H``:
            categorical fields in their declared order, then one ``continuous`` field if
            the schema has continuous features).
        dim: embedding dimension ``m``.
        sparse: produce sparse gradients for the tables (for ``torch.optim.SparseAdam``).
        exclude: names of fields left out (their batch entries are ignored), e.g. a field
            derived from click history that would leak the training target.

    Example::

        emb = FeatureEmbedding(ds.fields, dim=128)
        h = emb(gather_users(ds, np.arange(4)))  # (4, n_fields, 128)
    """

    def __init__(
        self,
        fields: list[FieldInfo],
        dim: int,
        sparse: bool = False,
        exclude: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.dim = dim
        unknown = sorted(set(exclude) - {f.name for f in fields})
        if unknown:
            raise ConfigError(
                f"excluded fields {unknown} are not fields of the dataset "
                f"({[f.name for f in fields]})"
            )
        self.categorical = [
            f for f in fields if f.kind in ("univalent", "multivalent") and f.name not in exclude
        ]
        continuous = [f for f in fields if f.kind == "continuous"]
        self.n_continuous_in = len(continuous)
        self.continuous_cols = [i for i, f in enumerate(continuous) if f.name not in exclude]
        self.n_continuous = len(self.continuous_cols)
        for f in fields:
            if f.kind not in ("univalent", "multivalent", "continuous"):
                raise ConfigError(f"field {f.name!r}: unknown kind {f.kind!r}")
            if f.kind != "continuous" and f.vocab_size < 1:
                raise ConfigError(f"field {f.name!r}: vocab_size must be >= 1 (code 0 = OOV)")
        tables: list[nn.Module] = []
        for f in self.categorical:
            if f.kind == "univalent":
                tables.append(nn.Embedding(f.vocab_size, dim, sparse=sparse))
            else:
                tables.append(nn.EmbeddingBag(f.vocab_size, dim, mode="mean", sparse=sparse))
        self.tables = nn.ModuleList(tables)
        for t in self.tables:
            nn.init.normal_(t.weight, std=dim**-0.5)  # type: ignore[arg-type]
        self.continuous_fc = nn.Linear(self.n_continuous, dim) if self.n_continuous else None
        if not self.categorical and self.continuous_fc is None:
            raise ConfigError("no user feature field left (none declared, or all excluded)")

    @property
    def field_names(self) -> list[str]:
        """Names of the rows of ``H`` (the continuous block is one field, ``continuous``)."""
        names = [f.name for f in self.categorical]
        return [*names, CONTINUOUS_FIELD] if self.continuous_fc is not None else names

    @property
    def n_fields(self) -> int:
        return len(self.field_names)

    def forward(self, batch: UserBatch) -> torch.Tensor:
        """Returns ``H`` of shape ``(B, n_fields, dim)``."""
        vecs: list[torch.Tensor] = []
        for f, table in zip(self.categorical, self.tables, strict=True):
            if f.kind == "univalent":
                vecs.append(table(batch.univalent[f.name]))  # (B, d)
            else:
                values, offsets = batch.multivalent[f.name]
                assert isinstance(table, nn.EmbeddingBag)
                if not table.sparse and offsets.numel() * f.vocab_size <= BAG_MATMUL_MAX:
                    vecs.append(bag_mean(table.weight, values, offsets))  # (B, d)
                else:
                    vecs.append(table(values, offsets))  # (B, d), empty bag -> zeros
        if self.continuous_fc is not None:
            x = batch.continuous  # (B, n_continuous_in)
            if self.n_continuous != self.n_continuous_in:
                x = x[:, self.continuous_cols]  # (B, n_continuous)
            vecs.append(self.continuous_fc(x))  # (B, d)
        return torch.stack(vecs, dim=1)  # (B, n_fields, d)
