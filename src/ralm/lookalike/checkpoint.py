"""Stage-2 checkpoints: the trained model folder and the resumable training state.

Model folder (``runs/<name>/lookalike/``)::

    config.json          format_version, model config, train config, data sizes, and the
                         sha256 of model.safetensors ("files")
    model.safetensors    best weights (by the monitored validation metric)
    seed_index/          SeedIndex of the best epoch (see ralm.lookalike.seed_index)
    history.json         one record per epoch
    train_state/         last epoch: weights, Adam state, clusters, loop counters (resume);
                         state.json records the sha256 of state.safetensors

Every file is written atomically and durably (``ralm.common.atomic``), so a crash never
leaves a half-written file. Loading verifies the recorded sha256 and that every weight is
finite; a corrupt, changed or mismatching file raises :class:`CheckpointError` naming it.
Folders of format 1 (before checksums) still load, unverified, with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.common.atomic import atomic_write_text as _atomic_write_text
from ralm.common.checksum import sha256_file
from ralm.errors import CheckpointError
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.training.optim import load_keeping_kernel
from ralm.training.weights import load_tensors, save_tensors

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before checksums
MODEL_FILE = "model.safetensors"
STATE_TENSORS = "state.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically and durably (``ralm.common.atomic``)."""
    _atomic_write_text(path, text)


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


def save_model(out_dir: Path, model: LookalikeModel) -> str:
    """Write ``model.safetensors`` atomically; returns its sha256 (for ``config.json``)."""
    save_tensors(out_dir / MODEL_FILE, model.state_dict())
    return sha256_file(out_dir / MODEL_FILE)


def _load_state_into(model: LookalikeModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the model in config.json: {e}") from e


def load_lookalike_model(path: str | Path) -> tuple[LookalikeModel, LookalikeConfig]:
    """Load a trained look-alike model folder (eval mode) and its config."""
    root = Path(path)
    meta = read_json(root / "config.json")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{root / 'config.json'}: format {meta.get('format_version')} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    try:
        cfg = LookalikeConfig(**meta["model"])
    except Exception as e:
        raise CheckpointError(f"{root / 'config.json'}: invalid model config: {e}") from e
    model = LookalikeModel(cfg)
    files = meta.get("files")
    if files is None:
        log.warning("%s was saved without checksums (format 1): not verified", root)
        tensors = load_tensors(root / MODEL_FILE)
    elif not isinstance(files, dict):
        raise CheckpointError(f"{root / 'config.json'}: 'files' is not a name -> sha256 map")
    else:
        tensors = load_tensors(root / MODEL_FILE, files.get(MODEL_FILE), root / "config.json")
    _load_state_into(model, tensors, root / MODEL_FILE)
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
    save_tensors(state_dir / STATE_TENSORS, tensors)
    meta = {
        **counters,
        "param_groups": opt["param_groups"],
        "inertia": clusters.inertia,
        "files": {STATE_TENSORS: sha256_file(state_dir / STATE_TENSORS)},
    }
    atomic_write_text(state_dir / "state.json", json.dumps(meta, indent=2))


def load_train_state(
    state_dir: Path, model: LookalikeModel, optimizer: torch.optim.Optimizer
) -> tuple[SeedClusters, dict[str, Any]]:
    """Restore model and optimizer in place; return the clusters and loop counters."""
    meta = read_json(state_dir / "state.json")
    path = state_dir / STATE_TENSORS
    files = meta.get("files")
    if isinstance(files, dict):
        tensors = load_tensors(path, files.get(STATE_TENSORS), state_dir / "state.json")
    else:  # format 1
        tensors = load_tensors(path)
    _load_state_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = val
    try:
        load_keeping_kernel(optimizer, {"state": opt_state, "param_groups": meta["param_groups"]})
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
