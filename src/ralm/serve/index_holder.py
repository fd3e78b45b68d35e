"""Immutable index snapshots and the holder that swaps them atomically.

A :class:`IndexSnapshot` is never mutated after construction. The centroid table is split
into row chunks (``chunk_items`` items each); a new version shares every chunk it did not
change with the previous one, so publishing a re-cluster of a few items copies only the
chunks holding them, and the table itself exists once in memory, shared by all threads
(a chunk built from a big array is a view, not a copy). A request reads
``holder.current()`` once and finishes on that object, so it never sees a half-updated
index, and the old version is freed when its last request ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ralm.lookalike.scorer import gram_matrix


@dataclass(frozen=True)
class IndexChunk:
    """A contiguous run of item rows of the seed index.

    Args:
        centroids: float32 (C, k, h) transformed seed centroids.
        mask: bool (C, k), True where the centroid exists (items with < k seeds).
        global_vec: float32 (C, h) precomputed global-attention vector of each item.
        gram: float32 (C, k, k) per-item Gram matrices ``C C^T`` (the scorer uses them so
            no request recomputes them).
        sizes: int64 (C, k) seeds per centroid (the scorer's attention size prior).
    """

    centroids: torch.Tensor
    mask: torch.Tensor
    global_vec: torch.Tensor
    gram: torch.Tensor
    sizes: torch.Tensor

    def __len__(self) -> int:
        return int(self.centroids.shape[0])


@dataclass(frozen=True)
class ItemUpdate:
    """New clusters of U items (existing ones are replaced, new ones appended).

    Args:
        item_ids: U raw item ids.
        centroids: float32 (U, k, h).
        mask: bool (U, k).
        global_vec: float32 (U, h).
        sizes: int64 (U, k) seeds per cluster.
        n_seeds: int64 (U,) embeddable seeds that were clustered.
        servable: bool (U,) whether the item may be recommended.
        clustered_at: unix time of this clustering.
    """

    item_ids: Sequence[str]
    centroids: torch.Tensor
    mask: torch.Tensor
    global_vec: torch.Tensor
    sizes: np.ndarray
    n_seeds: np.ndarray
    servable: np.ndarray
    clustered_at: float


@dataclass(frozen=True)
class IndexSnapshot:
    """One published version of the seed index (read-only).

    Args:
        version: strictly increasing version number.
        created_at: unix time of publication.
        item_ids: raw item id of every row (I,).
        row_of: raw item id -> row.
        chunks: the centroid table, split in row chunks covering rows 0..I-1 in order.
        servable: bool tensor (I,), rows that may be recommended.
        sizes: int64 (I, k) cluster sizes.
        n_seeds: int64 (I,) seeds clustered per item.
        clustered_at: float64 (I,) unix time of each item's last clustering.
        k: clusters per item.
        h: transformed embedding dimension.
        chunk_items: rows per chunk (the last one may be shorter).
    """

    version: int
    created_at: float
    item_ids: tuple[str, ...]
    row_of: dict[str, int]
    chunks: tuple[IndexChunk, ...]
    servable: torch.Tensor
    sizes: np.ndarray
    n_seeds: np.ndarray
    clustered_at: np.ndarray
    k: int
    h: int
    chunk_items: int = 8192

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_servable(self) -> int:
        return int(self.servable.sum())

    @classmethod
    def empty(cls, k: int, h: int, version: int = 0, chunk_items: int = 8192) -> IndexSnapshot:
        """An index with no items."""
        return cls(
            version=version,
            created_at=time.time(),
            item_ids=(),
            row_of={},
            chunks=(),
            servable=torch.zeros(0, dtype=torch.bool),
            sizes=np.zeros((0, k), np.int64),
            n_seeds=np.zeros(0, np.int64),
            clustered_at=np.zeros(0, np.float64),
            k=k,
            h=h,
            chunk_items=chunk_items,
        )

    @classmethod
    def from_arrays(
        cls,
        version: int,
        item_ids: Sequence[str],
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor,
        sizes: np.ndarray,
        n_seeds: np.ndarray,
        servable: np.ndarray,
        clustered_at: np.ndarray | float,
        chunk_items: int = 8192,
    ) -> IndexSnapshot:
        """Wrap whole-table arrays; chunks are views of ``centroids`` (no copy)."""
        n, k, h = centroids.shape  # (I, k, h)
        if not (len(item_ids) == mask.shape[0] == global_vec.shape[0] == n):
            raise ValueError("item_ids, centroids, mask and global_vec disagree on item count")
        gram = gram_matrix(centroids)  # (I, k, k)
        sizes_t = torch.as_tensor(np.asarray(sizes, np.int64))  # (I, k)
        chunks = tuple(
            IndexChunk(
                centroids[s : s + chunk_items],
                mask[s : s + chunk_items],
                global_vec[s : s + chunk_items],
                gram[s : s + chunk_items],
                sizes_t[s : s + chunk_items],
            )
            for s in range(0, n, chunk_items)
        )
        ids = tuple(str(i) for i in item_ids)
        return cls(
            version=version,
            created_at=time.time(),
            item_ids=ids,
            row_of={i: r for r, i in enumerate(ids)},
            chunks=chunks,
            servable=torch.as_tensor(np.asarray(servable, dtype=bool)),
            sizes=np.asarray(sizes, np.int64),
            n_seeds=np.asarray(n_seeds, np.int64),
            clustered_at=np.broadcast_to(np.asarray(clustered_at, np.float64), (n,)).copy(),
            k=k,
            h=h,
            chunk_items=chunk_items,
        )

    def updated(self, version: int, upd: ItemUpdate) -> IndexSnapshot:
        """A new snapshot with ``upd`` applied; ``self`` is left untouched.

        Only the chunks holding updated rows are copied; new items are appended.
        """
        if version <= self.version:
            raise ValueError(f"version {version} must exceed the current {self.version}")
        row_of = dict(self.row_of)
        item_ids = list(self.item_ids)
        rows = np.empty(len(upd.item_ids), dtype=np.int64)
        for j, item_id in enumerate(upd.item_ids):
            r = row_of.get(item_id)
            if r is None:
                r = len(item_ids)
                row_of[item_id] = r
                item_ids.append(item_id)
            rows[j] = r
        n_new = len(item_ids)
        k, h = self.k, self.h
        chunks = list(self.chunks)
        upd_gram = gram_matrix(upd.centroids)  # (U, k, k)
        touched = np.unique(rows // self.chunk_items)
        for c in touched.tolist():
            start = c * self.chunk_items
            length = min(self.chunk_items, n_new - start)
            if c < len(chunks):
                old = chunks[c]
                cen = torch.zeros(length, k, h, dtype=old.centroids.dtype)  # (C, k, h)
                msk = torch.zeros(length, k, dtype=torch.bool)  # (C, k)
                glb = torch.zeros(length, h, dtype=old.global_vec.dtype)  # (C, h)
                grm = torch.zeros(length, k, k, dtype=old.gram.dtype)  # (C, k, k)
                siz = torch.zeros(length, k, dtype=torch.int64)  # (C, k)
                cen[: len(old)] = old.centroids
                msk[: len(old)] = old.mask
                glb[: len(old)] = old.global_vec
                grm[: len(old)] = old.gram
                siz[: len(old)] = old.sizes
            else:
                cen = torch.zeros(length, k, h, dtype=upd.centroids.dtype)
                msk = torch.zeros(length, k, dtype=torch.bool)
                glb = torch.zeros(length, h, dtype=upd.global_vec.dtype)
                grm = torch.zeros(length, k, k, dtype=upd.centroids.dtype)
                siz = torch.zeros(length, k, dtype=torch.int64)
            sel = np.flatnonzero(rows // self.chunk_items == c)
            local = torch.as_tensor(rows[sel] - start)
            sel_t = torch.as_tensor(sel)
            cen[local] = upd.centroids[sel_t]
            msk[local] = upd.mask[sel_t]
            glb[local] = upd.global_vec[sel_t]
            grm[local] = upd_gram[sel_t]
            siz[local] = torch.as_tensor(np.asarray(upd.sizes, np.int64))[sel_t]
            chunk = IndexChunk(cen, msk, glb, grm, siz)
            if c < len(chunks):
                chunks[c] = chunk
            else:
                chunks.append(chunk)

        def grown(a: np.ndarray, fill: float | int | bool) -> np.ndarray:
            out = np.full((n_new, *a.shape[1:]), fill, dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        servable = grown(self.servable.numpy(), False)
        sizes, n_seeds = grown(self.sizes, 0), grown(self.n_seeds, 0)
        clustered_at = grown(self.clustered_at, 0.0)
        servable[rows] = np.asarray(upd.servable, dtype=bool)
        sizes[rows] = np.asarray(upd.sizes, np.int64)
        n_seeds[rows] = np.asarray(upd.n_seeds, np.int64)
        clustered_at[rows] = upd.clustered_at
        return IndexSnapshot(
            version=version,
            created_at=time.time(),
            item_ids=tuple(item_ids),
            row_of=row_of,
            chunks=tuple(chunks),
            servable=torch.from_numpy(servable),
            sizes=sizes,
            n_seeds=n_seeds,
            clustered_at=clustered_at,
            k=k,
            h=h,
            chunk_items=self.chunk_items,
        )

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Centroids (R, k, h) and mask (R, k) of the given rows (copies of R rows only)."""
        rows = np.asarray(rows, dtype=np.int64)
        cen = torch.zeros(rows.size, self.k, self.h)  # (R, k, h)
        msk = torch.zeros(rows.size, self.k, dtype=torch.bool)  # (R, k)
        for c, chunk in enumerate(self.chunks):
            sel = np.flatnonzero(rows // self.chunk_items == c)
            if sel.size:
                local = torch.as_tensor(rows[sel] - c * self.chunk_items)
                cen[torch.as_tensor(sel)] = chunk.centroids[local].float()
                msk[torch.as_tensor(sel)] = chunk.mask[local]
        return cen, msk

    def table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole table as (centroids (I, k, h), mask (I, k), global_vec (I, h)) copies."""
        if not self.chunks:
            return (
                torch.zeros(0, self.k, self.h),
                torch.zeros(0, self.k, dtype=torch.bool),
                torch.zeros(0, self.h),
            )
        return (
            torch.cat([c.centroids for c in self.chunks]),
            torch.cat([c.mask for c in self.chunks]),
            torch.cat([c.global_vec for c in self.chunks]),
        )


class IndexHolder:
    """Holds the current :class:`IndexSnapshot`; publishing is one reference swap.

    Args:
        initial: the first snapshot.
    """

    def __init__(self, initial: IndexSnapshot) -> None:
        self._lock = threading.Lock()
        self._current = initial

    def current(self) -> IndexSnapshot:
        """The snapshot to use for a whole request (read it once per request)."""
        with self._lock:
            return self._current

    @property
    def version(self) -> int:
        return self.current().version

    def publish(self, snapshot: IndexSnapshot) -> None:
        """Make ``snapshot`` current; its version must exceed the current one."""
        with self._lock:
            if snapshot.version <= self._current.version:
                raise ValueError(
                    f"cannot publish version {snapshot.version}: current is "
                    f"{self._current.version} (versions strictly increase)"
                )
            self._current = snapshot
