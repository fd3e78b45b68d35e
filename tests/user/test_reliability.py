"""Stage 1 never saves or loads a broken model: non-finite loss, changed bytes, NaN weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ralm.common.checksum import sha256_file
from ralm.data.toy import make_toy_dataset
from ralm.errors import CheckpointError, RalmError
from ralm.training.trainer import NonFiniteLossError
from ralm.user.checkpoint import load_user_model

from .helpers import train_tiny


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def test_overwritten_bytes_in_weights_are_refused(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    path = run / "model.safetensors"
    blob = bytearray(path.read_bytes())
    mid = len(blob) // 2  # inside the tensor data: the header stays valid
    blob[mid : mid + 1000] = np.random.default_rng(0).integers(0, 256, 1000, np.uint8).tobytes()
    path.write_bytes(bytes(blob))
    load_file(str(path))  # still a readable safetensors file: only the checksum can tell
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        load_user_model(run)


def test_nan_weights_are_refused_even_with_a_matching_checksum(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    path = run / "model.safetensors"
    state = load_file(str(path))
    state["item_embedding.weight"][3, 0] = float("nan")
    save_file(state, str(path))
    meta = json.loads((run / "config.json").read_text())
    meta["files"]["model.safetensors"] = sha256_file(path)
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*non-finite.*item_embedding"):
        load_user_model(run)


def test_checksums_are_recorded_for_every_file(trained) -> None:
    run = trained[1]
    files = json.loads((run / "config.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "last.safetensors", "train_state.pt"}
    for name, digest in files.items():
        assert sha256_file(run / name) == digest


def test_changed_resume_state_is_refused(toy, trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    path = run / "last.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"last\.safetensors"):
        train_tiny(toy, run, epochs=4, resume=True)


def _nan_dataset():
    ds = make_toy_dataset(n_users=300, n_items=60, seed=0)
    ds.continuous[:] = np.nan  # e.g. an inf in the raw column normalised to NaN
    return ds


def test_non_finite_loss_stops_with_a_clear_error_and_saves_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, step 1/") as err:
        train_tiny(_nan_dataset(), run, epochs=2)
    assert isinstance(err.value, RalmError)  # the CLI prints it in one line, exit 2
    assert not (run / "model.safetensors").exists()
    assert not (run / "config.json").exists()


def test_non_finite_loss_never_overwrites_a_good_checkpoint(toy, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_tiny(toy, run, epochs=1, patience=0)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    good = load_user_model(run, toy)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2/3, step 1/"):
        train_tiny(_nan_dataset(), run, epochs=3, patience=0, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    again = load_user_model(run, toy)
    torch.testing.assert_close(again.item_embedding, good.item_embedding, rtol=0, atol=0)


def test_format_1_folder_still_loads_unverified(toy, trained, tmp_path: Path, caplog) -> None:
    """A run folder written before the config split and checksums (mixed config, no files)."""
    run = _copy(trained[1], tmp_path)
    meta = json.loads((run / "config.json").read_text())
    meta["format_version"] = 1
    meta["config"] = {**meta.pop("train"), **meta["config"]}
    del meta["files"]
    (run / "config.json").write_text(json.dumps(meta))
    loaded = load_user_model(run, toy)
    assert loaded.config.dim == trained[0].config.dim
    assert loaded.train_config is not None and loaded.train_config.epochs == 3
    torch.testing.assert_close(loaded.item_embedding, trained[0].item_embedding)
    assert "without checksums" in caplog.text
