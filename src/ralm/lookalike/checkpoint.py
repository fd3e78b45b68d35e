"""Stage-2 checkpoints: the trained model folder and the resumable training state.

Model folder (``runs/<name>/lookalike/``)::

    config.json          format_version, model config, train config, data sizes
    model.safetensors    best weights (by validation AUC)
    seed_index/          SeedIndex of the best epoch (see ralm.lookalike.seed_index)
    history.json         one record per epoch
    train_state/         last epoch: weights, Adam state, clusters, loop counters (resume)

Every file is written to a temporary name and renamed into place, so a crash never leaves
a half-written file; a corrupt or mismatching file raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ralm.errors import CheckpointError
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel

FORMAT_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary name and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types on bad bytes
        raise CheckpointError(f"{path} is corrupted or not a safetensors file: {e}") from e


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON checkpoint file, raising CheckpointError when missing or corrupt."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        out = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from e
    if not isinstance(out, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return out


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` (adds the format version)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "config.json", json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2)
    )


def save_model(out_dir: Path, model: LookalikeModel) -> None:
    """Write ``model.safetensors`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(out_dir / "model.safetensors", model.state_dict())


def _load_state_into(model: LookalikeModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the model in config.json: {e}") from e


def load_lookalike_model(path: str | Path) -> tuple[LookalikeModel, LookalikeConfig]:
    """Load a trained look-alike model folder (eval mode) and its config."""
    root = Path(path)
    meta = read_json(root / "config.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{root / 'config.json'}: format {meta.get('format_version')} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    try:
        cfg = LookalikeConfig(**meta["model"])
    except Exception as e:
        raise CheckpointError(f"{root / 'config.json'}: invalid model config: {e}") from e
    model = LookalikeModel(cfg)
    _load_state_into(model, _load_tensors(root / "model.safetensors"), root / "model.safetensors")
    model.eval()
    return model, cfg


def save_train_state(
    state_dir: Path,
    model: LookalikeModel,
    optimizer: torch.optim.Optimizer,
    clusters: SeedClusters,
    counters: dict[str, Any],
) -> None:
    """Everything needed to continue training after the last finished epoch."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, val in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(val)
    for name in ("centroids", "mask", "sizes", "assign"):
        arr = np.ascontiguousarray(getattr(clusters, name))
        tensors[f"clusters.{name}"] = torch.from_numpy(arr)
    _atomic_save_tensors(state_dir / "state.safetensors", tensors)
    meta = {
        **counters,
        "param_groups": opt["param_groups"],
        "inertia": clusters.inertia,
    }
    atomic_write_text(state_dir / "state.json", json.dumps(meta, indent=2))


def load_train_state(
    state_dir: Path, model: LookalikeModel, optimizer: torch.optim.Optimizer
) -> tuple[SeedClusters, dict[str, Any]]:
    """Restore model and optimizer in place; return the clusters and loop counters."""
    meta = read_json(state_dir / "state.json")
    path = state_dir / "state.safetensors"
    tensors = _load_tensors(path)
    _load_state_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = val
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{state_dir}: optimizer state does not match: {e}") from e
    try:
        clusters = SeedClusters(
            centroids=tensors["clusters.centroids"].numpy(),
            mask=tensors["clusters.mask"].numpy(),
            sizes=tensors["clusters.sizes"].numpy(),
            assign=tensors["clusters.assign"].numpy(),
            inertia=float(meta.get("inertia", 0.0)),
        )
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the clusters array {e}") from e
    return clusters, meta
