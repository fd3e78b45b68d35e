"""What the service needs from stages 1 and 2, as small interfaces.

* :class:`Scorer` is the stage-2 :class:`ralm.lookalike.model.LookalikeModel` (transform,
  global vectors, the ONE scorer, calibration); the service never re-implements its math.
* :class:`UserEmbedder` turns a request's user into a universal (stage-1) embedding: a
  known user by id (exported embedding table), a new user from raw features
  (``FeatureEncoder`` + ``embed_batch``).
* :class:`ServingModel` bundles both with the optional initial seed index produced by
  training (one :class:`ralm.lookalike.seed_index.SeedIndex`, the same type serving
  publishes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import SeedIndex


class Scorer(Protocol):
    """The subset of ``LookalikeModel`` the service calls."""

    def transform(self, universal: torch.Tensor) -> torch.Tensor: ...

    def item_global(
        self, centroids: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def score(
        self,
        e_u: torch.Tensor,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor,
        gram: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        chunk_items: int = 4096,
    ) -> torch.Tensor: ...

    def prepare_items(
        self,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor,
        gram: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        dtype: torch.dtype | str = torch.float32,
        age: torch.Tensor | None = None,
    ) -> Any: ...

    def score_prepared(
        self, e_u: torch.Tensor, terms: Any, chunk_items: int = 1024
    ) -> torch.Tensor: ...

    def pctr(self, s: torch.Tensor) -> torch.Tensor: ...


def young_age(scorer: Any) -> float:
    """The scorer's young-item age in seconds (0 = no young-item rule)."""
    cfg = getattr(scorer, "config", None)
    if float(getattr(cfg, "young_boost", 1.0)) <= 1.0:
        return 0.0
    return max(float(getattr(cfg, "young_age", 0.0)), 0.0)


def item_age(scorer: Any, first_seen: torch.Tensor, now: float) -> torch.Tensor | None:
    """float64 (R,) seconds from each item's first click (``first_seen``, 0 = not known:
    mature) to ``now``, for a scorer with the young-item rule; None without the rule."""
    if young_age(scorer) <= 0:
        return None
    fs = first_seen.to(torch.float64)
    return torch.where(fs > 0, now - fs, torch.full_like(fs, math.inf))


class UserEmbedder(Protocol):
    """Universal embeddings of request users."""

    dim: int

    def lookup(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(emb float32 (B, m), found bool (B,))``; rows of unknown users are zero."""
        ...

    def embed_features(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Embeddings float32 (B, m) of raw feature records (unknown values -> OOV).

        Raises ``ralm.errors.DataError`` naming the field for malformed values.
        """
        ...


class TableEmbedder:
    """Known users from an embedding table, new users through a feature function.

    Lookups use a sorted copy of the id array and ``np.searchsorted`` (no per-user Python
    dict, so 3 million users cost one int64 array).

    Args:
        user_ids: raw id of every table row (n,).
        table: float32 (n, m) universal embeddings (a memory map is fine).
        feature_fn: raw feature records -> float32 (B, m); None = features not supported.
    """

    def __init__(
        self,
        user_ids: np.ndarray,
        table: np.ndarray,
        feature_fn: Callable[[Sequence[Mapping[str, Any]]], np.ndarray] | None = None,
    ) -> None:
        if table.ndim != 2 or table.shape[0] != len(user_ids):
            raise ValueError(f"table {table.shape} does not match {len(user_ids)} user ids")
        ids = np.asarray(user_ids).astype(str)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        self._table = table
        self._feature_fn = feature_fn
        self.dim = int(table.shape[1])

    def __len__(self) -> int:
        return int(self._sorted.shape[0])

    def lookup(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(list(user_ids), dtype=str)
        out = np.zeros((q.size, self.dim), dtype=np.float32)  # (B, m)
        if q.size == 0 or self._sorted.size == 0:
            return out, np.zeros(q.size, dtype=bool)
        pos = np.searchsorted(self._sorted, q)
        pos_c = np.minimum(pos, self._sorted.size - 1)
        found = self._sorted[pos_c] == q
        rows = self._order[pos_c[found]]
        o = np.argsort(rows)  # read the (possibly memory-mapped) table in row order
        got = np.empty((rows.size, self.dim), dtype=np.float32)
        got[o] = self._table[rows[o]]
        out[found] = got
        return out, found

    def embed_features(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self._feature_fn is None:
            from ralm.errors import DataError

            raise DataError("features: this model cannot embed users from raw features")
        return np.asarray(self._feature_fn(records), dtype=np.float32)


@dataclass
class ServingModel:
    """Everything model-side the service runs on.

    The clustering settings (variant, k, k-means backend, Lloyd iterations) are the stage-2
    model's own (``scorer.config``): the re-clustering job calls stage 2's builder
    :func:`ralm.lookalike.index_builder.index_items` with this model, so an index is
    re-clustered online exactly as training clustered it.

    Args:
        scorer: the stage-2 model (eval mode).
        embedder: request users -> universal embeddings.
        initial_index: the seed index produced by training, or None.
        bootstrap_clicks: historical (user_id, item_id, ts) clicks loaded into an empty store.
        fingerprint: identifies the model weights; a state folder whose published index was
            built by other weights is not reused (its centroids live in another space).
    """

    scorer: LookalikeModel
    embedder: UserEmbedder
    initial_index: SeedIndex | None = None
    bootstrap_clicks: Callable[[], Any] | None = None
    fingerprint: str = ""

    @property
    def k(self) -> int:
        """Clusters stored per item (1 for the "average" variant)."""
        return int(self.scorer.config.n_clusters)

    @property
    def h(self) -> int:
        """Transformed embedding dimension."""
        return int(self.scorer.config.h)

    def unsound(self) -> str | None:
        """Why the model cannot be trusted (non-finite weights), or None."""
        bad = [n for n, p in self.scorer.named_parameters() if not bool(torch.isfinite(p).all())]
        bad += [n for n, b in self.scorer.named_buffers() if not bool(torch.isfinite(b).all())]
        return f"model: non-finite weights in {', '.join(bad[:5])}" if bad else None
