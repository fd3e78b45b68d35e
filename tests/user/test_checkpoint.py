"""Checkpoints round-trip and fail clearly when corrupted or mismatched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.data.toy import make_toy_dataset
from ralm.errors import CheckpointError
from ralm.user.checkpoint import UserModel, load_user_model
from ralm.user.embed import embed_users

from .helpers import train_tiny


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def test_roundtrip_gives_same_embeddings(toy: EncodedDataset, trained) -> None:
    model, run = trained
    loaded = load_user_model(run, toy)
    assert isinstance(loaded, UserModel) and not loaded.tower.training
    np.testing.assert_array_equal(embed_users(model, toy), embed_users(loaded, toy))
    torch.testing.assert_close(model.item_embedding, loaded.item_embedding)
    assert loaded.metrics["epoch"] == model.metrics["epoch"]
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "last.safetensors",
        "model.safetensors",
        "train_state.pt",
    ]


def test_corrupted_weights(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_user_model(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_user_model(run)


def test_corrupted_or_missing_config(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    (run / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_user_model(run)
    (run / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_user_model(run)


def test_config_weights_mismatch(trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["dim"] = 24
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_user_model(run)
    meta["config"]["merge"] = "concat"
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing"):
        load_user_model(run)


def test_dataset_mismatch(trained) -> None:
    other = make_toy_dataset(n_users=300, n_items=61, seed=0)
    with pytest.raises(CheckpointError, match="items"):
        load_user_model(trained[1], other)
    renamed = make_toy_dataset(n_users=300, n_items=60, seed=0)
    renamed.item_ids = np.asarray([f"x{j}" for j in range(60)])
    with pytest.raises(CheckpointError, match="item-id map"):
        load_user_model(trained[1], renamed)
    fewer_groups = make_toy_dataset(n_users=300, n_items=60, n_groups=4, seed=0)
    with pytest.raises(CheckpointError, match="fields"):
        load_user_model(trained[1], fewer_groups)


def test_resume_errors(toy: EncodedDataset, trained, tmp_path: Path) -> None:
    run = _copy(trained[1], tmp_path)
    with pytest.raises(CheckpointError, match="architecture"):
        train_tiny(toy, run, epochs=4, dim=8, resume=True)
    with pytest.raises(CheckpointError, match="optimizer"):
        train_tiny(toy, run, epochs=4, sparse_grad=True, resume=True)
    (run / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="train_state"):
        train_tiny(toy, run, epochs=4, resume=True)
    with pytest.raises(CheckpointError, match="cannot resume"):
        train_tiny(toy, tmp_path / "empty", epochs=1, resume=True)


def test_excluded_fields_survive_the_checkpoint(toy: EncodedDataset, tmp_path: Path) -> None:
    model = train_tiny(toy, tmp_path / "run", epochs=1, exclude_fields=["group_hint"])
    loaded = load_user_model(tmp_path / "run", toy)
    assert loaded.field_names == ["history", "continuous"]
    np.testing.assert_array_equal(embed_users(model, toy), embed_users(loaded, toy))


def test_dataset_item_digest_is_hashed_once_per_item_array(monkeypatch) -> None:
    """The per-batch dataset checks hash the item ids once per dataset; a new item-id
    array is hashed again, so a changed map is still refused."""
    import ralm.user.checkpoint as ckpt

    ds = make_toy_dataset(n_users=300, n_items=60, seed=0)
    want = ckpt.item_digest(ds.item_ids)
    calls: list[int] = []
    real = ckpt.item_digest
    monkeypatch.setattr(ckpt, "item_digest", lambda ids: calls.append(1) or real(ids))
    assert [ckpt.dataset_item_digest(ds) for _ in range(3)] == [want] * 3
    assert len(calls) == 1
    ds.item_ids = np.asarray([f"x{j}" for j in range(60)])
    assert ckpt.dataset_item_digest(ds) == real(ds.item_ids) != want
    assert len(calls) == 2
    with pytest.raises(CheckpointError, match="item-id map"):
        ckpt.check_compatible(ds.fields, ds.n_items, want, ds)
