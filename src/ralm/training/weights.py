"""Safe weight files: finite checks and verified safetensors loading for both stages."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ralm.common.atomic import atomic_write
from ralm.common.checksum import verify_checksum
from ralm.errors import CheckpointError


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or +-inf."""
    return [
        k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write tensors to a safetensors file atomically and durably (``ralm.common.atomic``)."""
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(state, str(p)))


def load_tensors(
    path: str | Path,
    sha256: str | None = None,
    manifest: str | Path | None = None,
    *,
    require_finite: bool = True,
) -> dict[str, torch.Tensor]:
    """Load a safetensors file, verifying its checksum and that every weight is finite.

    Args:
        path: the ``.safetensors`` file.
        sha256: checksum recorded at save time; verified when ``manifest`` is given.
        manifest: the config/manifest file that recorded ``sha256`` (``None`` = a legacy
            checkpoint without checksums: not verified).
        require_finite: refuse NaN / inf weights.

    Raises:
        CheckpointError: missing file, checksum mismatch, unreadable or non-finite weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    if manifest is not None:
        verify_checksum(path, sha256, manifest)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types on bad bytes
        raise CheckpointError(f"{path} is corrupted or not a safetensors file: {e}") from e
    if require_finite:
        bad = non_finite(tensors)
        if bad:
            raise CheckpointError(f"{path} holds non-finite (NaN/inf) weights in {bad[:5]}")
    return tensors
