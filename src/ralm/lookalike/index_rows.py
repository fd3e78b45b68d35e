"""The rows of a seed index: :class:`IndexUpdate` (new rows of some items) and
:class:`IndexChunk` (a block of rows of a :class:`~ralm.lookalike.index_table.SeedIndex`).

Split out of :mod:`ralm.lookalike.index_table` (which re-exports these names; import them
through :mod:`ralm.lookalike.seed_index`). ``ROW_ARRAYS`` names the per-row arrays that both
hold; the on-disk layout of a chunk is :mod:`ralm.lookalike.index_io`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ralm.lookalike import index_io

__all__ = ["CHUNK_ITEMS", "FORMAT_VERSION", "ROW_ARRAYS", "IndexChunk", "IndexUpdate"]

CHUNK_ITEMS = 8192
FORMAT_VERSION = index_io.FORMAT_VERSION
ROW_ARRAYS = (
    "centroids", "mask", "sizes", "global_vec", "gram", "n_seeds", "servable", "clustered_at",
    "first_seen",
)  # fmt: skip


@dataclass(frozen=True)
class IndexUpdate:
    """New clusters of U items, as :func:`index_items` returns them.

    Attributes:
        item_ids: str (U,) raw ids (existing items are replaced, new ones appended).
        centroids: float32 (U, k, h).
        mask: bool (U, k) valid centroids.
        sizes: int64 (U, k) seeds per centroid.
        global_vec: float32 (U, h) global-attention vectors (0 for items without seeds).
        gram: float32 (U, k, k) ``C C^T``.
        n_seeds: int64 (U,) seeds clustered per item.
        servable: bool (U,) may be recommended.
        clustered_at: float64 (U,) unix time of this clustering.
        first_seen: float64 (U,) time of each item's first click (0 = not known: the item
            counts as mature for the audience prior's young-item rule); None = all 0.
        inertia: total squared distance of seeds to their centroid (diagnostics).
        seconds: wall time of the clustering.
    """

    item_ids: np.ndarray
    centroids: np.ndarray
    mask: np.ndarray
    sizes: np.ndarray
    global_vec: np.ndarray
    gram: np.ndarray
    n_seeds: np.ndarray
    servable: np.ndarray
    clustered_at: np.ndarray
    first_seen: np.ndarray = None  # type: ignore[assignment]  # None -> zeros (__post_init__)
    inertia: float = 0.0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.first_seen is None:
            object.__setattr__(self, "first_seen", np.zeros(self.n_items, dtype=np.float64))

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @staticmethod
    def concat(parts: Sequence[IndexUpdate]) -> IndexUpdate:
        """One update from several (e.g. the chunks of a re-clustering cycle)."""
        if len(parts) == 1:
            return parts[0]
        cat = {n: np.concatenate([getattr(p, n) for p in parts]) for n in ("item_ids", *ROW_ARRAYS)}
        return IndexUpdate(
            **cat,
            inertia=sum(p.inertia for p in parts),
            seconds=sum(p.seconds for p in parts),
        )


class IndexChunk:
    """A contiguous block of C rows of a seed index (never modified once built).

    Args:
        item_ids: str (C,).
        arrays: every name of ``ROW_ARRAYS`` with C rows (see :class:`IndexUpdate`).
        digest: sha256 of the chunk's file, when it is known to be on disk.
    """

    def __init__(
        self, item_ids: np.ndarray, arrays: dict[str, np.ndarray], digest: str | None = None
    ) -> None:
        self.item_ids = np.asarray(item_ids, dtype=str)
        self.centroids: np.ndarray = arrays["centroids"]  # (C, k, h)
        self.mask: np.ndarray = arrays["mask"]  # (C, k)
        self.sizes: np.ndarray = arrays["sizes"]  # (C, k)
        self.global_vec: np.ndarray = arrays["global_vec"]  # (C, h)
        self.gram: np.ndarray = arrays["gram"]  # (C, k, k)
        self.n_seeds: np.ndarray = arrays["n_seeds"]  # (C,)
        self.servable: np.ndarray = arrays["servable"]  # (C,)
        self.clustered_at: np.ndarray = arrays["clustered_at"]  # (C,)
        self.first_seen: np.ndarray = arrays["first_seen"]  # (C,)
        self.digest = digest

    def __len__(self) -> int:
        return int(self.centroids.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in ROW_ARRAYS}

    def encode(self) -> bytes:
        return index_io.encode_chunk(self.item_ids.tolist(), self.arrays())

    @cached_property
    def n_unsound(self) -> int:
        """Rows with a non-finite float value (never servable)."""
        bad = ~np.isfinite(self.centroids).all(axis=(1, 2))
        bad |= ~np.isfinite(self.global_vec).all(axis=1) | ~np.isfinite(self.gram).all(axis=(1, 2))
        return int(bad.sum())

    @cached_property
    def servable_rows(self) -> np.ndarray:
        """int64 (R,) local rows that may be recommended."""
        return np.flatnonzero(self.servable).astype(np.int64)

    @cached_property
    def scoring_tensors(self) -> dict[str, torch.Tensor]:
        """Torch tensors of the servable rows only (views when every row is servable)."""
        rows = self.servable_rows
        every = rows.size == len(self)

        def pick(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a if every else a[rows]))

        return {
            "centroids": pick(self.centroids),  # (R, k, h)
            "mask": pick(self.mask),  # (R, k)
            "global_vec": pick(self.global_vec),  # (R, h)
            "gram": pick(self.gram),  # (R, k, k)
            "sizes": pick(self.sizes),  # (R, k)
            "first_seen": pick(self.first_seen),  # (R,) float64
        }


def _empty_rows(n: int, k: int, h: int) -> dict[str, np.ndarray]:
    return {
        name: np.zeros(shape, dtype=dtype)
        for name, (shape, dtype) in index_io.chunk_shapes(n, k, h).items()
        if name != "item_id_offsets"
    }
