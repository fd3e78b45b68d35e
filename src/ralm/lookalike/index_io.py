"""The one on-disk format of the seed index (training's ``seed_index/`` and serving's versions).

A seed-index folder holds one ``meta.json`` and one safetensors file per row chunk::

    meta.json                     format, format_version, version, created_at, k, h,
                                  n_items, chunk_items, chunks: [{file, rows, sha256}]
    chunk-<sha256[:24]>.safetensors
        item_id_utf8 u8 (N,), item_id_offsets i64 (C+1,)   raw item ids of the C rows
        centroids f32 (C,k,h), mask bool (C,k), sizes i64 (C,k), global_vec f32 (C,h),
        gram f32 (C,k,k), n_seeds i64 (C,), servable bool (C,), clustered_at f64 (C,),
        first_seen f64 (C,)   time of each item's first click (0 = not known: mature)

Format 2 (before ``first_seen``) still loads, with ``first_seen`` 0 for every row; its
chunks are rewritten in format 3 when the index is saved again.

Chunk files are content-addressed (named by their sha256) and never modified after they
are written. Publishing a new version of an index writes only the chunks that changed: a
chunk whose file exists in the previous version's folder (``prev``) is **hard-linked** from
there (copied where the file system cannot link), so versions share unchanged chunks on
disk as they do in memory, and deleting an old version folder never breaks a newer one.

Every folder is built in a temporary sibling and renamed into place with
:func:`ralm.common.atomic.atomic_dir` (fsync of every file and of the folders). Loading
checks, file by file: the sha256 recorded in ``meta.json``, the array names, dtypes and
shapes, and that every float array is finite; any fault raises :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ralm.common.atomic import atomic_dir
from ralm.errors import CheckpointError

FORMAT = "ralm.seed_index"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: no first_seen (read as 0)
FLOAT_ARRAYS = ("centroids", "global_vec", "gram", "clustered_at", "first_seen")


def chunk_shapes(rows: int, k: int, h: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """Expected (shape, dtype) of every array of a chunk of ``rows`` rows."""
    return {
        "centroids": ((rows, k, h), np.float32),
        "mask": ((rows, k), np.bool_),
        "sizes": ((rows, k), np.int64),
        "global_vec": ((rows, h), np.float32),
        "gram": ((rows, k, k), np.float32),
        "n_seeds": ((rows,), np.int64),
        "servable": ((rows,), np.bool_),
        "clustered_at": ((rows,), np.float64),
        "first_seen": ((rows,), np.float64),
        "item_id_offsets": ((rows + 1,), np.int64),
    }


def encode_chunk(item_ids: Sequence[str], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise one chunk (deterministic bytes: the same content gives the same sha256)."""
    raw = [str(i).encode("utf-8") for i in item_ids]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    out: dict[str, np.ndarray] = {
        name: np.ascontiguousarray(arrays[name], dtype=dtype)
        for name, (_, dtype) in chunk_shapes(len(raw), 1, 1).items()
        if name != "item_id_offsets"
    }
    out["item_id_utf8"] = np.frombuffer(b"".join(raw), dtype=np.uint8).copy()
    out["item_id_offsets"] = offsets
    return bytes(st_save(out))


def chunk_file(digest: str) -> str:
    return f"chunk-{digest[:24]}.safetensors"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links: copy
        shutil.copy2(src, dst)


def write_index_dir(
    path: str | Path,
    meta: dict[str, Any],
    chunks: Sequence[tuple[str | None, int, Callable[[], bytes]]],
    prev: str | Path | None = None,
) -> list[str]:
    """Write a seed-index folder atomically; returns the sha256 of every chunk.

    Args:
        path: the folder to (re)place.
        meta: index-level fields (``chunks`` and the format fields are added).
        chunks: per chunk ``(known sha256 or None, rows, encode)``; ``encode()`` gives the
            file bytes and is called only for chunks that cannot be linked from ``prev``.
        prev: folder of the previous version whose chunk files may be hard-linked.
    """
    prev_dir = Path(prev) if prev is not None else None
    entries: list[dict[str, Any]] = []
    with atomic_dir(path) as tmp:
        for digest, rows, encode in chunks:
            name = chunk_file(digest) if digest is not None else None
            if name is not None and (tmp / name).is_file():
                pass  # the same content twice in one index
            elif name is not None and prev_dir is not None and (prev_dir / name).is_file():
                _link_or_copy(prev_dir / name, tmp / name)
            else:
                data = encode()
                digest = hashlib.sha256(data).hexdigest()
                name = chunk_file(digest)
                if not (tmp / name).is_file():
                    (tmp / name).write_bytes(data)
            entries.append({"file": name, "rows": int(rows), "sha256": digest})
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "chunks": entries}
        (tmp / "meta.json").write_text(json.dumps(full), encoding="utf-8")
    return [str(e["sha256"]) for e in entries]


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a seed-index folder, checked for format and fields."""
    root = Path(path)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"seed index {root} is missing meta.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is corrupted: {e}") from e
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_VERSIONS:
        got = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{meta_path}: seed index format {got} is not supported (expected "
            f"{FORMAT_VERSION}); rebuild it with `ralm train lookalike` or re-cluster"
        )
    try:
        for key in ("version", "k", "h", "n_items"):
            meta[key] = int(meta[key])
        meta["created_at"] = float(meta["created_at"])
        chunks = meta["chunks"]
        if not isinstance(chunks, list):
            raise TypeError("chunks is not a list")
        for c in chunks:
            name = str(c["file"])
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"chunk file name {name!r} is not a plain file name")
            c["rows"], c["sha256"] = int(c["rows"]), str(c["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path} is inconsistent: {type(e).__name__}: {e}") from e
    if sum(c["rows"] for c in chunks) != meta["n_items"]:
        raise CheckpointError(
            f"{meta_path}: chunks hold {sum(c['rows'] for c in chunks)} rows, "
            f"n_items says {meta['n_items']}"
        )
    return meta


def read_chunk(
    path: Path, rows: int, sha256: str, k: int, h: int, format_version: int = FORMAT_VERSION
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read and verify one chunk file: checksum, names, shapes, dtypes, finiteness
    (a format-2 chunk gets ``first_seen`` 0)."""
    if not path.is_file():
        raise CheckpointError(f"seed index file {path} is missing")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from e
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise CheckpointError(
            f"{path} is corrupted: sha256 {got[:16]}... differs from meta.json's "
            f"{sha256[:16]}... (truncated or overwritten)"
        )
    try:
        arrays = st_load(data)
    except Exception as e:  # safetensors raises several types on bad bytes
        raise CheckpointError(f"{path} is corrupted: {e}") from e
    if format_version < 3 and "first_seen" not in arrays:
        arrays["first_seen"] = np.zeros(rows, dtype=np.float64)
    for name, (shape, dtype) in chunk_shapes(rows, k, h).items():
        a = arrays.get(name)
        if a is None:
            raise CheckpointError(f"{path} lacks the array {name!r}")
        if a.shape != shape or a.dtype != dtype:
            raise CheckpointError(
                f"{path}: {name} is {a.dtype}{list(a.shape)}, expected "
                f"{np.dtype(dtype)}{list(shape)} (k={k}, h={h}, {rows} rows)"
            )
    for name in FLOAT_ARRAYS:
        bad = ~np.isfinite(arrays[name])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise CheckpointError(f"{path}: {name} has non-finite values (first at row {row})")
    utf8, off = arrays.get("item_id_utf8"), arrays["item_id_offsets"]
    if utf8 is None or utf8.dtype != np.uint8 or utf8.ndim != 1:
        raise CheckpointError(f"{path} lacks the uint8 array 'item_id_utf8'")
    if off[0] != 0 or off[-1] != utf8.size or np.any(np.diff(off) < 0):
        raise CheckpointError(f"{path}: item_id_offsets do not cover item_id_utf8")
    raw = utf8.tobytes()
    try:
        ids = [raw[off[i] : off[i + 1]].decode("utf-8") for i in range(rows)]
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: item ids are not UTF-8: {e}") from e
    return ids, arrays
