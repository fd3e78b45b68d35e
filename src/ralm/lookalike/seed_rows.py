"""Transformed seed rows kept on disk: stage 2's ``seed_emb`` outside the process's memory.

The clustering needs the transformed embedding of every seed row once (item by item), and
leave-self-out (:func:`ralm.lookalike.task.leave_self_out`) needs, per batch, the rows of
the few seeds that are the examples' target users, exactly as the clusters were built from
them. Keeping the float32 (S, h) table in memory for a whole epoch costs S x h x 4 bytes
(3.35 GiB for the 7.0M seed rows of the paper-scale data, another 3.35 GiB while the next
one is built). :class:`SeedRows` writes the table, GEMM block by GEMM block as
:func:`transform_rows` computes it, to an unlinked temporary file (``tempfile``: ``TMPDIR``;
the file disappears when the object is closed or collected, or the process ends). Blocks
are read back with ``pread`` (the clustering reads one chunk of items' rows at a time,
:func:`ralm.lookalike.index_builder.cluster_rows`); scattered rows (leave-self-out's few
per batch) are copied out of a read-only memory map of the file, whose pages are dropped
from the process's resident set (``madvise(MADV_DONTNEED)``) every :data:`DROP_ROWS`
rows read, so that reading random rows for a whole epoch does not grow the process's RSS
towards the table's size. 128 random rows of a 2M-row table: 0.49 ms with one ``pread``
per row, 0.31 ms through the map dropping its pages after every call, 0.07 ms dropping
them every 4,096 rows (the default).

The rows read back are the bytes of the table: bitwise what ``transform_seeds`` returns.
(Recomputing rows from a frozen copy of the layer is not: a GEMM's output row depends on the
number of rows in the call for some shapes, e.g. (25, 10) x (10, 8) vs (1000, 10) x (10, 8)
with MKL.) The operating system's page cache may hold the file; it is not the process's
resident memory and is reclaimed under memory pressure.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from ralm.lookalike.model import LookalikeModel

TRANSFORM_BATCH = 65536  # rows per GEMM of transform_rows (the table)
_MAX_IO = 1 << 30  # bytes per pread/pwrite call
# scattered reads between two drops of the map's pages from the resident set: a read
# maps up to 64 KiB around its row (the kernel's fault-around), so at most 256 MiB
DROP_ROWS = 4096


@torch.no_grad()
def transform_blocks(
    layer: nn.Module,
    seed_universal: np.ndarray,
    users: np.ndarray,
    batch: int = TRANSFORM_BATCH,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(lo, layer(seed_universal[users[lo:lo + batch]]))`` float32 (b, h), one GEMM each."""
    for lo in range(0, users.size, batch):
        u = users[lo : lo + batch]
        x = torch.from_numpy(np.ascontiguousarray(seed_universal[u], dtype=np.float32))
        yield lo, np.ascontiguousarray(layer(x).float().numpy())  # (b, h)


def transform_rows(
    layer: nn.Module,
    seed_universal: np.ndarray,
    users: np.ndarray,
    h: int,
    batch: int = TRANSFORM_BATCH,
) -> np.ndarray:
    """``layer(seed_universal[users])`` as float32 (S, h), in GEMMs of ``batch`` rows."""
    out = np.empty((users.size, h), dtype=np.float32)
    for lo, block in transform_blocks(layer, seed_universal, users, batch):
        out[lo : lo + block.shape[0]] = block
    return out


class SeedRows:
    """A float32 (n_rows, h) table in an unlinked temporary file; rows read on demand.

    Build it with :meth:`of_model` / :meth:`build` (or :meth:`from_array`); read with
    ``rows[idx]`` (any int rows, any order, repeats allowed), :meth:`range` (a contiguous
    block) or :meth:`table` (everything, in memory). :meth:`close` frees the file.

    Args:
        n_rows: rows of the table.
        h: row width.
        folder: folder of the temporary file (default: ``tempfile``'s, i.e. ``TMPDIR``).

    Example::

        rows = SeedRows.of_model(model, universal, seeds.users)  # == transform_seeds(...)
        rows[np.array([3, 17])]  # (2, h)
    """

    def __init__(self, n_rows: int, h: int, folder: str | Path | None = None) -> None:
        self.n_rows, self.h = int(n_rows), int(h)
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by close()
        self._fd = self._file.fileno()
        self._written = 0
        self._map: mmap.mmap | None = None  # read-only map for scattered rows, made on use
        self._view: np.ndarray | None = None  # (n_rows, h) float32 over _map
        self._unmapped_rows = 0  # rows read through the map since its pages were dropped

    # ---- building --------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        layer: nn.Module,
        seed_universal: np.ndarray,
        users: np.ndarray,
        h: int,
        batch: int = TRANSFORM_BATCH,
        folder: str | Path | None = None,
    ) -> SeedRows:
        """The table of :func:`transform_rows` (same GEMMs, same bytes), written block by
        block: only one block of ``batch`` rows is in memory at a time."""
        users = np.asarray(users, dtype=np.int64)
        rows = cls(users.size, h, folder)
        for _, block in transform_blocks(layer, seed_universal, users, batch):
            rows._append(block)
        return rows

    @classmethod
    def of_model(
        cls,
        model: LookalikeModel,
        seed_universal: np.ndarray,
        users: np.ndarray,
        folder: str | Path | None = None,
    ) -> SeedRows:
        """``transform_seeds(model, seed_universal, users)``, on disk."""
        return cls.build(
            model.transform_layer, seed_universal, users, model.config.h, folder=folder
        )

    @classmethod
    def from_array(cls, table: np.ndarray, folder: str | Path | None = None) -> SeedRows:
        """A copy of an in-memory (n, h) table."""
        rows = cls(table.shape[0], table.shape[1], folder)
        rows._append(np.ascontiguousarray(table, dtype=np.float32))
        return rows

    def _append(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.shape[1] != self.h or block.dtype != np.float32:
            raise ValueError(
                f"expected float32 (b, {self.h}) rows, got {block.dtype} {block.shape}"
            )
        if self._written + block.shape[0] > self.n_rows:
            raise ValueError(f"more than {self.n_rows} rows written")
        view = block.reshape(-1).view(np.uint8).data  # the bytes, no copy
        offset = self._written * self.h * 4
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done : done + _MAX_IO], offset + done)
        self._written += block.shape[0]

    # ---- reading ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.h)

    def __len__(self) -> int:
        return self.n_rows

    def _check(self) -> None:
        if self._written != self.n_rows:
            raise ValueError(f"{self._written} of {self.n_rows} rows written")

    def range(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as a float32 (hi - lo, h) array."""
        self._check()
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= self.n_rows:
            raise IndexError(f"rows {lo}:{hi} out of 0:{self.n_rows}")
        out = np.empty((hi - lo, self.h), dtype=np.float32)
        view = out.reshape(-1).view(np.uint8).data  # read straight into it
        offset = lo * self.h * 4
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done : done + _MAX_IO]], offset + done)
            if n <= 0:
                raise OSError(f"short read of the seed-row file at byte {offset + done}")
            done += n
        return out

    def table(self) -> np.ndarray:
        """The whole float32 (n_rows, h) table, in memory."""
        return self.range(0, self.n_rows)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """float32 (R, h): rows ``rows`` (ints, any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.empty((0, self.h), dtype=np.float32)
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise IndexError(f"seed rows out of range 0..{self.n_rows - 1}")
        view = self._mapped()
        out = view[rows]  # a copy (fancy indexing)
        self._unmapped_rows += rows.size
        if self._unmapped_rows >= DROP_ROWS:  # the mapped pages leave this process's RSS
            assert self._map is not None
            self._map.madvise(mmap.MADV_DONTNEED)
            self._unmapped_rows = 0
        return out

    def _mapped(self) -> np.ndarray:
        """The table as a read-only (n_rows, h) array over a memory map of the file."""
        if self._view is None:
            self._check()
            self._map = mmap.mmap(self._fd, self.n_rows * self.h * 4, prot=mmap.PROT_READ)
            self._view = np.frombuffer(self._map, dtype=np.float32).reshape(self.n_rows, self.h)
        return self._view

    def close(self) -> None:
        """Remove the file (reads fail afterwards)."""
        self._view = None  # the map's only exported buffer
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()


SeedEmb = np.ndarray | SeedRows  # the (S, h) table in memory, or on disk
