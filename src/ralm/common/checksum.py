"""Per-file sha256 checksums written at save time and verified at load time.

A checkpoint folder lists ``{"file name": "sha256 hex"}`` in its config/manifest; loading
recomputes the digest and refuses a file whose bytes changed (bit rot, a partial copy, an
overwrite), naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from ralm.errors import CheckpointError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_checksums(root: str | Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of the files ``root / name`` that exist."""
    root = Path(root)
    return {n: sha256_file(root / n) for n in names if (root / n).is_file()}


def verify_checksum(path: str | Path, expected: str | None, manifest: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` hashes to ``expected``.

    Args:
        path: the file to check.
        expected: hex sha256 recorded at save time (``None``: not recorded -> error).
        manifest: the file that records the checksum (named in the error).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    if not expected:
        raise CheckpointError(f"{manifest} records no sha256 for {path.name}")
    got = sha256_file(path)
    if got != expected:
        raise CheckpointError(
            f"{path} is corrupted: its sha256 {got[:12]}... differs from {expected[:12]}... "
            f"recorded in {manifest} when it was saved"
        )


def verify_all(root: str | Path, checksums: Mapping[str, str], manifest: str | Path) -> None:
    """Verify every ``name -> sha256`` entry of ``checksums`` under ``root``."""
    for name, digest in checksums.items():
        verify_checksum(Path(root) / name, digest, manifest)
