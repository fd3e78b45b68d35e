"""The user tower (paper Fig. 3): feature embedding -> merge -> MLP -> universal embedding."""

from __future__ import annotations

import torch
from torch import nn

from ralm.data.batching import UserBatch
from ralm.data.encoded import FieldInfo
from ralm.errors import ConfigError
from ralm.user.attention_merge import AttentionConcatMerge, AttentionMerge, ConcatMerge
from ralm.user.config import UserModelConfig
from ralm.user.feature_embedding import FeatureEmbedding


def _mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for width in hidden:
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class UserTower(nn.Module):
    """Maps a :class:`UserBatch` to universal user embeddings ``(B, dim)``.

    Args:
        fields: field infos of the encoded dataset (``ds.fields``).
        config: model hyper-parameters (``dim``, ``attention_units``, ``merge``,
            ``mlp_hidden``, ``exclude_fields``, ``sparse_grad``).
        sparse: sparse table gradients; ``None`` resolves ``config.sparse_grad``.

    Example::

        tower = UserTower(ds.fields, UserModelConfig(dim=64))
        batch = gather_users(ds, np.arange(8))
        emb = tower(batch)                    # (8, 64)
        alpha = tower.field_attention(batch)  # (8, n_fields), rows sum to 1
    """

    def __init__(
        self, fields: list[FieldInfo], config: UserModelConfig, sparse: bool | None = None
    ) -> None:
        super().__init__()
        self.config = config
        if sparse is None:
            sparse = config.use_sparse(max((f.vocab_size for f in fields), default=0))
        self.embedding = FeatureEmbedding(
            fields, config.dim, sparse=sparse, exclude=list(config.exclude_fields)
        )
        self.merge: AttentionMerge | ConcatMerge
        if config.merge == "attention":
            self.merge = AttentionMerge(config.dim, config.attention_units)
        elif config.merge == "attention_concat":
            n = self.embedding.n_fields
            self.merge = AttentionConcatMerge(config.dim, config.attention_units, n)
        else:
            self.merge = ConcatMerge(config.dim, self.embedding.n_fields)
        self.mlp = _mlp(self.merge.out_dim, list(config.mlp_hidden), config.dim)

    @property
    def field_names(self) -> list[str]:
        """Field order of :meth:`field_attention` columns."""
        return self.embedding.field_names

    def forward(self, batch: UserBatch) -> torch.Tensor:
        h = self.embedding(batch)  # (B, n_fields, m)
        merged = self.merge(h)  # (B, m) attention | (B, n_fields*m) concat, attention_concat
        return self.mlp(merged)  # (B, dim)

    def field_attention(self, batch: UserBatch) -> torch.Tensor:
        """Per-field attention weights ``alpha`` (B, n_fields); attention merges only."""
        if not isinstance(self.merge, AttentionMerge):
            raise ConfigError(
                "field attention exists only for merge='attention' or 'attention_concat' "
                "(not concat)"
            )
        return self.merge.weights(self.embedding(batch))  # (B, n_fields)


class UserItemModel(nn.Module):
    """Training wrapper: the user tower plus the item-ID embedding table.

    Scores are dot products ``user (B, d) . item (d,)``; the loss lives in
    :mod:`ralm.user.sampled_softmax`.

    Args:
        fields: field infos of the encoded dataset.
        n_items: number of items (rows of the item table).
        config: model hyper-parameters.
    """

    def __init__(self, fields: list[FieldInfo], n_items: int, config: UserModelConfig) -> None:
        super().__init__()
        if n_items < 1:
            raise ConfigError("the dataset has no items")
        sparse = config.use_sparse(max([n_items, *(f.vocab_size for f in fields)]))
        self.tower = UserTower(fields, config, sparse=sparse)
        self.item_embedding = nn.Embedding(n_items, config.dim, sparse=sparse)  # (I, d)
        nn.init.normal_(self.item_embedding.weight, std=config.dim**-0.5)

    def forward(self, batch: UserBatch) -> torch.Tensor:
        return self.tower(batch)  # (B, d)
