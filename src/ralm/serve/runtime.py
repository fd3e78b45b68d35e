"""What the service needs from stages 1 and 2, as small interfaces.

* :class:`Scorer` is the stage-2 :class:`ralm.lookalike.model.LookalikeModel` (transform,
  global vectors, the ONE scorer, calibration); the service never re-implements its math.
* :class:`UserEmbedder` turns a request's user into a universal (stage-1) embedding: a
  known user by id (exported embedding table), a new user from raw features
  (``FeatureEncoder`` + ``embed_batch``).
* :class:`ServingModel` bundles both with the clustering settings and the optional
  initial seed index produced by training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ralm.lookalike.clustering import SeedClusters, average_seeds, cluster_seeds


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

    def pctr(self, s: torch.Tensor) -> torch.Tensor: ...


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
class InitialIndex:
    """Seed clusters produced by training, used when the service starts with no state.

    Args:
        item_ids: raw ids (I,).
        centroids: float32 (I, k, h).
        mask: bool (I, k).
        sizes: int64 (I, k).
        n_seeds: int64 (I,).
        global_vec: float32 (I, h) precomputed global vectors, or None to compute them.
    """

    item_ids: np.ndarray
    centroids: np.ndarray
    mask: np.ndarray
    sizes: np.ndarray
    n_seeds: np.ndarray
    global_vec: np.ndarray | None = None


@dataclass
class ServingModel:
    """Everything model-side the service runs on.

    Args:
        scorer: the stage-2 model (eval mode).
        embedder: request users -> universal embeddings.
        k: clusters per item (1 for the "average" variant).
        h: transformed dimension.
        variant: "ralm" (k-means clusters) or "average" (mean of seeds).
        kmeans_niter: Lloyd iterations of a cold k-means.
        kmeans_warm_niter: Lloyd iterations of a warm-started k-means.
        initial_index: clusters from training, or None.
        bootstrap_clicks: historical (user_id, item_id, ts) clicks loaded into an empty store.
        fingerprint: identifies the model weights; a state folder whose published index was
            built by other weights is not reused (its centroids live in another space).
    """

    scorer: Scorer
    embedder: UserEmbedder
    k: int
    h: int
    variant: str = "ralm"
    kmeans_niter: int = 20
    kmeans_warm_niter: int = 5
    initial_index: InitialIndex | None = None
    bootstrap_clicks: Callable[[], Any] | None = None
    fingerprint: str = ""

    def cluster(
        self,
        seed_emb: np.ndarray,
        offsets: np.ndarray,
        init: np.ndarray | None = None,
        init_mask: np.ndarray | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> SeedClusters:
        """Stage 2's clustering of every item's seeds (CSR ``offsets``), warm-started."""
        if self.variant == "average":
            return average_seeds(seed_emb, offsets)
        return cluster_seeds(
            seed_emb,
            offsets,
            self.k,
            init=init,
            init_mask=init_mask,
            seed=seed,
            niter=self.kmeans_niter,
            warm_niter=self.kmeans_warm_niter,
            progress=progress,
        )
