"""Stage-1 checkpoints: safe to load, clear errors when corrupted or mismatched.

A run folder (``runs/<name>/user/``) holds::

    model.safetensors   best weights (tower.* and item_embedding.weight)
    config.json         format version, UserModelConfig ("config"), UserTrainConfig
                        ("train"), field infos, item count and an item-id digest, best
                        validation metrics, per-epoch history, and the sha256 of every
                        other file ("files")
    last.safetensors    weights after the last finished epoch         (resume only)
    train_state.pt      optimizer state, epoch, early-stopping state  (resume only,
                        loaded with ``torch.load(weights_only=True)``)

Nothing is unpickled: weights are safetensors, metadata is JSON. Every file is written
atomically and durably (``ralm.common.atomic``); loading verifies each file's sha256 and
that every weight is finite, so a changed byte or a NaN weight is a
:class:`CheckpointError` naming the file, never a silently broken model. Folders of format
1 (before checksums) still load, unverified, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from ralm.common.atomic import atomic_write, atomic_write_text
from ralm.common.checksum import sha256_file, verify_checksum
from ralm.data.encoded import EncodedDataset, FieldInfo
from ralm.errors import CheckpointError
from ralm.training.weights import load_tensors, save_tensors
from ralm.user.config import UserModelConfig, UserTrainConfig, split_legacy_config
from ralm.user.tower import UserItemModel, UserTower

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before the config split and checksums
KIND = "ralm.user"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LAST_FILE = "last.safetensors"
STATE_FILE = "train_state.pt"


def item_digest(item_ids: np.ndarray) -> str:
    """A short digest of the item-id map (detects a checkpoint used on other data)."""
    h = hashlib.sha1()
    for s in np.asarray(item_ids).astype(str):
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class UserModel:
    """A trained stage-1 model, ready for inference.

    Attributes:
        tower: the user tower, in eval mode.
        item_embedding: float32 (n_items, d) item-ID embeddings.
        config: the model architecture.
        fields: field infos the tower was built for.
        item_digest: digest of the training dataset's item-id map.
        metrics: best validation metrics (``recall``, ``val_loss``, ``epoch``, ...).
        history: per-epoch training/validation records.
        train_config: the training settings it was trained with (None when unknown).
    """

    tower: UserTower
    item_embedding: torch.Tensor
    config: UserModelConfig
    fields: list[FieldInfo]
    item_digest: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    train_config: UserTrainConfig | None = None

    @property
    def n_items(self) -> int:
        return int(self.item_embedding.shape[0])

    @property
    def field_names(self) -> list[str]:
        return self.tower.field_names

    def check_dataset(self, ds: EncodedDataset) -> None:
        """Raise :class:`CheckpointError` unless ``ds`` has this model's fields and items."""
        check_compatible(self.fields, self.n_items, self.item_digest, ds)


def dataset_item_digest(ds: EncodedDataset) -> str:
    """:func:`item_digest` of ``ds.item_ids``, hashed once per item-id array of ``ds``.

    Every ``embed_users`` call checks its dataset, and stage 2 and evaluation embed per
    batch: hashing every item id each time cost 54 ms a call at 43,500 items. The digest is
    kept on the dataset object beside the array it was computed from, so a new array
    (``ds.item_ids = ...``) is hashed again.
    """
    cached = ds.__dict__.get("_item_digest")
    if cached is None or cached[0] is not ds.item_ids:
        cached = (ds.item_ids, item_digest(ds.item_ids))
        ds.__dict__["_item_digest"] = cached
    return str(cached[1])


def check_compatible(
    fields: list[FieldInfo], n_items: int, digest: str, ds: EncodedDataset, where: str = "model"
) -> None:
    """Raise :class:`CheckpointError` when the dataset's fields/items differ from a model's."""
    if n_items != ds.n_items:
        raise CheckpointError(f"{where} has {n_items} items, dataset {ds.name!r} {ds.n_items}")
    want = [(f.name, f.kind, f.vocab_size) for f in fields]
    have = [(f.name, f.kind, f.vocab_size) for f in ds.fields]
    if want != have:
        raise CheckpointError(
            f"{where} was trained on fields {want} but dataset {ds.name!r} has {have}"
        )
    if digest and digest != dataset_item_digest(ds):
        raise CheckpointError(f"{where} was trained on a different item-id map than {ds.name!r}")


def save_weights(net: UserItemModel, path: Path) -> str:
    """Write the state dict of ``net`` to a safetensors file (atomically); returns its sha256."""
    save_tensors(path, net.state_dict())
    return sha256_file(path)


def save_config(
    out_dir: Path,
    config: UserModelConfig,
    ds: EncodedDataset,
    metrics: dict[str, float],
    history: list[dict[str, float]],
    train_config: UserTrainConfig | None = None,
    files: dict[str, str] | None = None,
) -> None:
    """Write ``config.json`` (configs, field infos, item count/digest, metrics, history).

    Args:
        files: ``{file name: sha256}`` of the folder's other files, verified at load.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "dataset": ds.name,
        "config": config.model_dump(),
        "train": train_config.model_dump() if train_config is not None else None,
        "fields": [f.to_json() for f in ds.fields],
        "n_items": ds.n_items,
        "item_digest": item_digest(ds.item_ids),
        "metrics": metrics,
        "history": history,
        "files": dict(files or {}),
    }
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(meta, indent=2))


def read_config(path: str | Path) -> dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint folder."""
    root = Path(path)
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{root} is not a user-model checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is corrupted: {e}") from e
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise CheckpointError(f"{cfg_path} is not a stage-1 user-model config")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{cfg_path}: format {meta.get('format_version')} unsupported (want {FORMAT_VERSION})"
        )
    try:
        raw = dict(meta["config"])
        train = meta.get("train")
        if "train" not in meta:  # written before the model/training split
            raw, train = split_legacy_config(raw)
        meta["config"] = UserModelConfig(**raw)
        meta["train"] = UserTrainConfig(**train) if train is not None else None
        meta["fields"] = [FieldInfo(**f) for f in meta["fields"]]
        meta["n_items"] = int(meta["n_items"])
        files = meta.get("files")
        if files is not None and not (
            isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
        ):
            raise ValueError("'files' must map file names to sha256 strings")
    except (KeyError, TypeError, ValueError, ValidationError) as e:
        raise CheckpointError(f"{cfg_path} has an invalid entry: {e}") from e
    return meta


def load_weights(
    net: UserItemModel,
    path: Path,
    sha256: str | None = None,
    manifest: Path | None = None,
) -> None:
    """Load a safetensors state dict into ``net``; any mismatch is a CheckpointError.

    Args:
        net: the model to fill.
        path: the weights file.
        sha256: its checksum recorded at save time.
        manifest: the ``config.json`` that recorded it (``None``: a format-1 folder, the
            checksum is not verified).
    """
    state = load_tensors(path, sha256, manifest)  # missing / changed / corrupt / non-finite
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path} does not match the config: missing {missing}, extra {extra}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, config expects "
                f"{tuple(own[k].shape)}"
            )
    net.load_state_dict(state)


def file_manifest(root: Path, meta: dict[str, Any]) -> tuple[dict[str, str], Path | None]:
    """``(checksums, manifest path)`` of a folder; ``(.., None)`` for format 1 (unverified)."""
    files = meta.get("files")
    if files is None:
        log.warning("%s was saved without checksums (format 1): not verified", root)
        return {}, None
    return dict(files), root / CONFIG_FILE


def load_user_model(path: str | Path, ds: EncodedDataset | None = None) -> UserModel:
    """Load the best model of a stage-1 run folder.

    Args:
        path: the run folder (holding ``config.json`` and ``model.safetensors``).
        ds: optional dataset to check compatibility against (fields, item ids).

    Raises:
        CheckpointError: missing, corrupted or mismatched files.
    """
    root = Path(path)
    meta = read_config(root)
    net = UserItemModel(meta["fields"], meta["n_items"], meta["config"])
    files, manifest = file_manifest(root, meta)
    load_weights(net, root / MODEL_FILE, files.get(MODEL_FILE), manifest)
    net.eval()
    model = UserModel(
        tower=net.tower,
        item_embedding=net.item_embedding.weight.detach().clone(),
        config=meta["config"],
        fields=meta["fields"],
        item_digest=str(meta.get("item_digest", "")),
        metrics=dict(meta.get("metrics", {})),
        history=list(meta.get("history", [])),
        train_config=meta["train"],
    )
    if ds is not None:
        model.check_dataset(ds)
    log.info("loaded user model from %s (%d items, dim %d)", root, model.n_items, model.config.dim)
    return model


def save_train_state(path: Path, optimizer: Any, state: dict[str, Any]) -> str:
    """Optimizer state + loop state (plain types) for resume; readable with weights_only.

    Returns:
        The sha256 of the written file.
    """
    blob = {"optimizer": optimizer.state_dict(), "loop": json.dumps(state)}
    atomic_write(path, lambda p: torch.save(blob, p))
    return sha256_file(path)


def load_train_state(
    path: Path, sha256: str | None = None, manifest: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(optimizer_state, loop_state)`` saved by :func:`save_train_state` (checksum
    verified when ``manifest`` is given)."""
    if manifest is not None:
        verify_checksum(path, sha256, manifest)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["optimizer"], json.loads(blob["loop"])
    except Exception as e:  # corrupted pickle, wrong keys, bad JSON
        raise CheckpointError(f"{path} is corrupted or not a stage-1 train state: {e}") from e
