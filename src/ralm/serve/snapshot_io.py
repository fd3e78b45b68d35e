"""Published index versions on disk, so a restart serves without re-clustering.

Layout of ``<state_dir>/index/v00000042/``::

    tensors.safetensors   centroids (I,k,h), mask (I,k) u8, global_vec (I,h), sizes (I,k),
                          n_seeds (I,), servable (I,) u8, clustered_at (I,) f64
    item_ids.npy          raw item ids (str)
    meta.json             version, k, h, created_at, format

A version is written into a temporary folder, fsynced, then renamed into place (an atomic
rename), so a crash mid-write leaves either the complete folder or none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ralm.errors import CheckpointError
from ralm.serve.index_holder import IndexSnapshot

log = logging.getLogger(__name__)

FORMAT = "ralm.serve.index/1"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_snapshot(snap: IndexSnapshot, root: str | Path) -> Path:
    """Write ``snap`` under ``root/v{version:08d}`` atomically; returns that folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"v{snap.version:08d}"
    if final.exists():
        return final
    tmp = root / f".tmp-v{snap.version:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cen, mask, glb = snap.table()  # (I, k, h), (I, k), (I, h)
    tensors = {
        "centroids": cen.contiguous(),
        "mask": mask.to(torch.uint8).contiguous(),
        "global_vec": glb.contiguous(),
        "sizes": torch.from_numpy(np.ascontiguousarray(snap.sizes)),
        "n_seeds": torch.from_numpy(np.ascontiguousarray(snap.n_seeds)),
        "servable": snap.servable.to(torch.uint8).contiguous(),
        "clustered_at": torch.from_numpy(np.ascontiguousarray(snap.clustered_at)),
    }
    save_file(tensors, str(tmp / "tensors.safetensors"))
    np.save(tmp / "item_ids.npy", np.asarray(snap.item_ids, dtype=str))
    meta = {
        "format": FORMAT,
        "version": snap.version,
        "k": snap.k,
        "h": snap.h,
        "n_items": snap.n_items,
        "created_at": snap.created_at,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(root)
    log.info("saved index version %d (%d items) to %s", snap.version, snap.n_items, final)
    return final


def load_snapshot(path: str | Path, chunk_items: int = 8192) -> IndexSnapshot:
    """Read a folder written by :func:`save_snapshot` (CheckpointError when damaged)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}/meta.json: unknown index format {meta.get('format')}")
        t = load_file(str(path / "tensors.safetensors"))
        item_ids = np.load(path / "item_ids.npy", allow_pickle=False)
    except CheckpointError:
        raise
    except Exception as e:  # missing file, bad JSON, corrupted safetensors
        raise CheckpointError(f"published index {path} is unreadable: {e}") from e
    snap = IndexSnapshot.from_arrays(
        version=int(meta["version"]),
        item_ids=[str(i) for i in item_ids],
        centroids=t["centroids"],
        mask=t["mask"].bool(),
        global_vec=t["global_vec"],
        sizes=t["sizes"].numpy(),
        n_seeds=t["n_seeds"].numpy(),
        servable=t["servable"].bool().numpy(),
        clustered_at=t["clustered_at"].numpy(),
        chunk_items=chunk_items,
    )
    if snap.k != int(meta["k"]) or snap.h != int(meta["h"]):
        raise CheckpointError(f"{path}: tensors do not match meta.json (k, h)")
    return snap


def prune_versions(root: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest version folders (and stale temporaries)."""
    root = Path(root)
    if not root.is_dir():
        return
    versions = sorted(p for p in root.glob("v*") if p.is_dir())
    for p in versions[: max(0, len(versions) - keep)]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-v*"):
        shutil.rmtree(p, ignore_errors=True)
