"""The in-memory seed index (imported through :mod:`ralm.lookalike.seed_index`).

Per item: centroids (k, h), mask, cluster sizes, global-attention vector, Gram matrix
``C C^T`` (so |E_local| costs O(k^2) per pair, see :mod:`ralm.lookalike.scorer`), seed
count, whether it may be recommended (``servable``) and when it was clustered.

A :class:`SeedIndex` is immutable. Its rows are split into chunks of ``chunk_items`` items
(:class:`IndexChunk`); :meth:`SeedIndex.updated` applies an :class:`IndexUpdate` (changed
items replaced, new items appended) and returns a new index that *shares* every chunk it
did not touch, in memory and, through :meth:`SeedIndex.save` with ``prev``, on disk (see
:mod:`ralm.lookalike.index_io` for the one on-disk format). ``version`` is the clustering
generation (the re-clustering job increments it).

The ONE builder is :func:`ralm.lookalike.index_builder.index_items`. The row types
(:class:`IndexUpdate`, :class:`IndexChunk`, ``ROW_ARRAYS``) live in
:mod:`ralm.lookalike.index_rows` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ralm.errors import CheckpointError
from ralm.lookalike import index_io
from ralm.lookalike.index_rows import CHUNK_ITEMS as CHUNK_ITEMS  # re-exported
from ralm.lookalike.index_rows import FORMAT_VERSION as FORMAT_VERSION
from ralm.lookalike.index_rows import ROW_ARRAYS as ROW_ARRAYS
from ralm.lookalike.index_rows import IndexChunk as IndexChunk
from ralm.lookalike.index_rows import IndexUpdate as IndexUpdate
from ralm.lookalike.index_rows import _empty_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedIndex:
    """Per-item seed clusters and precomputed attention terms, ready for scoring.

    Whole-table views (``centroids``, ``mask``, ... ``item_ids``) are computed once on
    first use (a copy when the index has several chunks); scoring and updates work on
    ``chunks`` directly.

    Attributes:
        chunks: row chunks covering rows 0..I-1 in order (each ``chunk_items`` long but
            the last).
        k: clusters per item.
        h: transformed embedding dimension.
        version: clustering generation (incremented by every re-clustering).
        created_at: unix time of creation.
        chunk_items: rows per chunk.
    """

    chunks: tuple[IndexChunk, ...]
    k: int
    h: int
    version: int = 1
    created_at: float = field(default_factory=time.time)
    chunk_items: int = CHUNK_ITEMS

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def empty(cls, k: int, h: int, version: int = 0, chunk_items: int = CHUNK_ITEMS) -> SeedIndex:
        """An index with no items."""
        return cls((), k, h, version=version, chunk_items=chunk_items)

    @classmethod
    def from_update(
        cls, upd: IndexUpdate, version: int = 1, chunk_items: int = CHUNK_ITEMS
    ) -> SeedIndex:
        """Wrap whole-table arrays; the chunks are views of them (no copy)."""
        n, k, h = upd.centroids.shape
        chunks = tuple(
            IndexChunk(
                upd.item_ids[s : s + chunk_items],
                {a: getattr(upd, a)[s : s + chunk_items] for a in ROW_ARRAYS},
            )
            for s in range(0, n, chunk_items)
        )
        index = cls(chunks, k, h, version=version, chunk_items=chunk_items)
        for a in ROW_ARRAYS:  # whole-table views: the given arrays themselves
            index.__dict__[a] = getattr(upd, a)
        index.__dict__["item_ids"] = np.asarray(upd.item_ids, dtype=str)
        return index

    # ---- sizes and whole-table views -------------------------------------------------
    @property
    def n_items(self) -> int:
        return sum(len(c) for c in self.chunks)

    @cached_property
    def n_servable(self) -> int:
        return int(sum(c.servable_rows.size for c in self.chunks))

    @cached_property
    def n_unsound(self) -> int:
        """Items with non-finite arrays (they are never scored)."""
        return int(sum(c.n_unsound for c in self.chunks))

    @cached_property
    def row_of(self) -> dict[str, int]:
        """Raw item id -> row."""
        return {str(i): r for r, i in enumerate(self.item_ids.tolist())}

    @cached_property
    def servable_rows(self) -> np.ndarray:
        """int64 (R,) rows that the scorer sees, in order."""
        parts = [c.servable_rows + j * self.chunk_items for j, c in enumerate(self.chunks)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _whole(self, name: str) -> np.ndarray:
        if not self.chunks:
            return _empty_rows(0, self.k, self.h)[name]
        if len(self.chunks) == 1:
            return getattr(self.chunks[0], name)
        return np.concatenate([getattr(c, name) for c in self.chunks])

    @cached_property
    def item_ids(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, dtype=str)
        return np.concatenate([c.item_ids for c in self.chunks])

    @cached_property
    def centroids(self) -> np.ndarray:
        return self._whole("centroids")

    @cached_property
    def mask(self) -> np.ndarray:
        return self._whole("mask")

    @cached_property
    def sizes(self) -> np.ndarray:
        return self._whole("sizes")

    @cached_property
    def global_vec(self) -> np.ndarray:
        return self._whole("global_vec")

    @cached_property
    def gram(self) -> np.ndarray:
        return self._whole("gram")

    @cached_property
    def n_seeds(self) -> np.ndarray:
        return self._whole("n_seeds")

    @cached_property
    def servable(self) -> np.ndarray:
        return self._whole("servable")

    @cached_property
    def clustered_at(self) -> np.ndarray:
        return self._whole("clustered_at")

    @cached_property
    def first_seen(self) -> np.ndarray:
        return self._whole("first_seen")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Torch views of what ``LookalikeModel.score`` takes: ``model.score(e_u, **t)``."""
        return {
            "centroids": torch.from_numpy(self.centroids),
            "mask": torch.from_numpy(self.mask),
            "global_vec": torch.from_numpy(self.global_vec),
            "gram": torch.from_numpy(self.gram),
            "sizes": torch.from_numpy(self.sizes),
        }

    def row(self, r: int) -> tuple[IndexChunk, int]:
        """The chunk holding row ``r`` and the row's position in it."""
        c, local = divmod(int(r), self.chunk_items)
        return self.chunks[c], local

    def gather(self, rows: np.ndarray, names: Sequence[str] = ROW_ARRAYS) -> dict[str, np.ndarray]:
        """Copies of the given rows (R,) of each named array, read chunk by chunk."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {n: np.empty((rows.size, *getattr(self.chunks[0], n).shape[1:]),
                           dtype=getattr(self.chunks[0], n).dtype)
               for n in names} if self.chunks else {}  # fmt: skip
        if rows.size == 0:
            return out or {n: _empty_rows(0, self.k, self.h)[n] for n in names}
        which = rows // self.chunk_items
        for c in np.unique(which).tolist():
            sel = np.flatnonzero(which == c)
            local = rows[sel] - c * self.chunk_items
            for n in names:
                out[n][sel] = getattr(self.chunks[c], n)[local]
        return out

    # ---- incremental updates ---------------------------------------------------------
    def updated(self, upd: IndexUpdate, version: int | None = None) -> SeedIndex:
        """A new index with ``upd`` applied; ``self`` is left untouched.

        Only the chunks holding updated rows are rebuilt (the others are shared); new
        items are appended (filling the last chunk, then new ones).

        Args:
            upd: new rows (item ids may be new or existing).
            version: the new version (default: ``self.version + 1``); must exceed ours.
        """
        version = self.version + 1 if version is None else int(version)
        if version <= self.version:
            raise ValueError(f"version {version} must exceed the current {self.version}")
        if upd.n_items and upd.centroids.shape[1:] != (self.k, self.h):
            raise ValueError(
                f"update has (k, h) = {upd.centroids.shape[1:]}, index has {(self.k, self.h)}"
            )
        row_of = self.row_of
        n_old = self.n_items
        rows = np.empty(upd.n_items, dtype=np.int64)
        new_ids: dict[str, int] = {}
        for j, item_id in enumerate(upd.item_ids.tolist()):
            r = row_of.get(item_id)
            if r is None:
                r = new_ids.setdefault(item_id, n_old + len(new_ids))
            rows[j] = r
        n_new = n_old + len(new_ids)
        appended = np.asarray(list(new_ids), dtype=str)
        chunks = list(self.chunks)
        which = rows // self.chunk_items
        for c in np.unique(which).tolist():
            start = c * self.chunk_items
            length = min(self.chunk_items, n_new - start)
            arrays = _empty_rows(length, self.k, self.h)
            ids = np.empty(length, dtype=object)
            if c < len(chunks):
                old = chunks[c]
                for a in ROW_ARRAYS:
                    arrays[a][: len(old)] = getattr(old, a)
                ids[: len(old)] = old.item_ids
            if start + length > n_old:  # rows appended to this chunk
                lo = max(start, n_old)
                ids[lo - start : length] = appended[lo - n_old : start + length - n_old]
            sel = np.flatnonzero(which == c)
            local = rows[sel] - start
            for a in ROW_ARRAYS:
                arrays[a][local] = getattr(upd, a)[sel]
            chunk = IndexChunk(ids.astype(str), arrays)
            if c < len(chunks):
                chunks[c] = chunk
            else:
                chunks.append(chunk)
        out = SeedIndex(
            tuple(chunks), self.k, self.h, version=version, chunk_items=self.chunk_items
        )
        ids_all = np.concatenate([self.item_ids, appended]) if new_ids else self.item_ids
        out.__dict__["item_ids"] = ids_all
        if new_ids:
            out.__dict__["row_of"] = {**row_of, **new_ids}
        else:
            out.__dict__["row_of"] = row_of  # never mutated: safe to share
        return out

    def with_servable(
        self, rule: Callable[[IndexChunk], np.ndarray], version: int | None = None
    ) -> SeedIndex:
        """A copy whose ``servable`` flags are ``rule(chunk)`` (bool (C,)) per chunk.

        Chunks whose flags do not change are shared; the others share their arrays.
        """
        chunks = []
        for c in self.chunks:
            flags = np.asarray(rule(c), dtype=bool)
            if np.array_equal(flags, c.servable):
                chunks.append(c)
            else:
                chunks.append(IndexChunk(c.item_ids, {**c.arrays(), "servable": flags}))
        return dataclasses.replace(
            self, chunks=tuple(chunks), version=self.version if version is None else version
        )

    def with_version(self, version: int) -> SeedIndex:
        """The same rows under another version number."""
        out = dataclasses.replace(self, version=int(version))
        for name in ("item_ids", "row_of"):
            if name in self.__dict__:
                out.__dict__[name] = self.__dict__[name]
        return out

    # ---- disk ------------------------------------------------------------------------
    def save(self, path: str | Path, prev: str | Path | None = None) -> Path:
        """Write atomically to the folder ``path`` (see :mod:`ralm.lookalike.index_io`).

        Args:
            path: target folder (replaced atomically if it exists).
            prev: folder of an earlier version: chunk files it holds are hard-linked, so
                only changed chunks are written.
        """
        meta = {
            "version": int(self.version),
            "created_at": float(self.created_at),
            "k": self.k,
            "h": self.h,
            "n_items": self.n_items,
            "chunk_items": self.chunk_items,
        }
        digests = index_io.write_index_dir(
            path, meta, [(c.digest, len(c), c.encode) for c in self.chunks], prev
        )
        for c, d in zip(self.chunks, digests, strict=True):
            c.digest = d
        log.info("wrote seed index v%d (%d items) to %s", self.version, self.n_items, path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SeedIndex:
        """Load and verify a seed index; CheckpointError naming the file when it is unsound."""
        root = Path(path)
        meta = index_io.read_meta(root)
        k, h = meta["k"], meta["h"]
        chunks = []
        fmt = int(meta["format_version"])
        for entry in meta["chunks"]:
            p = root / entry["file"]
            ids, arrays = index_io.read_chunk(p, entry["rows"], entry["sha256"], k, h, fmt)
            # a chunk of an older format is written anew (not linked) when saved again
            digest = entry["sha256"] if fmt == index_io.FORMAT_VERSION else None
            chunks.append(IndexChunk(np.asarray(ids, dtype=str), arrays, digest))
        chunk_items = int(meta.get("chunk_items", CHUNK_ITEMS))
        if any(len(c) != chunk_items for c in chunks[:-1]) or (
            chunks and not 0 < len(chunks[-1]) <= chunk_items
        ):
            raise CheckpointError(f"{root / 'meta.json'}: chunks are not {chunk_items} rows each")
        index = cls(tuple(chunks), k, h, meta["version"], meta["created_at"], chunk_items)
        if len(index.row_of) != index.n_items:
            raise CheckpointError(f"{root}: duplicate item ids")
        return index
