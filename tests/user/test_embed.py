"""Embedding dataset users and new users through one code path; export; CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ralm.cli import app
from ralm.data.batching import UserBatch, gather_users
from ralm.data.encoded import EncodedDataset
from ralm.errors import DataError
from ralm.user.embed import embed_batch, embed_users, field_attention
from ralm.user.export import export_embeddings


def test_embed_users_matches_tower(toy: EncodedDataset, trained) -> None:
    model, _ = trained
    users = np.array([5, 0, 5, 17])
    got = embed_users(model, toy, users, batch_size=3)
    with torch.no_grad():
        ref = model.tower(gather_users(toy, users)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and embed_users(model, toy).shape == (toy.n_users, 16)


def test_exclude_items_changes_only_history(toy: EncodedDataset, trained) -> None:
    model, _ = trained
    off, vals = toy.multivalent["history"]
    item = int(vals[off[3]]) - 1  # a TRAIN click of user 3
    a = embed_users(model, toy, np.array([3]), exclude_items=np.array([item]))
    b = embed_users(model, toy, np.array([3]))
    c = embed_users(model, toy, np.array([3]), exclude_items=np.array([-1]))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(b, c)


def test_new_user_from_raw_codes_uses_same_path(toy: EncodedDataset, trained) -> None:
    model, _ = trained
    off, vals = toy.multivalent["history"]
    u = 11
    bag = torch.from_numpy(np.asarray(vals[off[u] : off[u + 1]])[::-1].copy())
    new = UserBatch(
        univalent={"group_hint": torch.tensor([int(toy.univalent["group_hint"][u])])},
        multivalent={"history": (bag, torch.tensor([0]))},
        continuous=torch.from_numpy(np.asarray(toy.continuous[u : u + 1])),
    )
    np.testing.assert_allclose(
        embed_batch(model, new), embed_users(model, toy, np.array([u])), rtol=1e-5, atol=1e-6
    )
    bad = UserBatch(
        univalent={"group_hint": torch.tensor([99])},
        multivalent=new.multivalent,
        continuous=new.continuous,
    )
    with pytest.raises(DataError, match="group_hint"):
        embed_batch(model, bad)


def test_field_attention_rows_sum_to_one(toy: EncodedDataset, trained) -> None:
    model, _ = trained
    alpha = field_attention(model, toy, np.arange(10))
    assert alpha.shape == (10, len(model.field_names))
    np.testing.assert_allclose(alpha.sum(1), 1.0, rtol=1e-5)


def test_export_files(toy: EncodedDataset, trained, tmp_path: Path) -> None:
    model, _ = trained
    export_embeddings(model, toy, tmp_path / "exp")
    users = np.load(tmp_path / "exp" / "user_embeddings.npy")
    items = np.load(tmp_path / "exp" / "item_embeddings.npy")
    assert users.shape == (toy.n_users, 16) and items.shape == (toy.n_items, 16)
    np.testing.assert_array_equal(np.load(tmp_path / "exp" / "user_ids.npy"), toy.user_ids)
    np.testing.assert_array_equal(np.load(tmp_path / "exp" / "item_ids.npy"), toy.item_ids)
    np.testing.assert_allclose(users[7], embed_users(model, toy, np.array([7]))[0], rtol=1e-5)


def test_cli_train_resume_and_export(toy: EncodedDataset, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RALM_NO_PROGRESS", "1")
    toy.save(tmp_path / "ds")
    runner = CliRunner()
    common = ["--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--dim", "8"]
    r = runner.invoke(app, ["train", "user", *common, "--epochs", "1", "--seed", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "user", *common, "--epochs", "2", "--seed", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert "recall" in r.output
    r = runner.invoke(
        app,
        [
            "export",
            "--data",
            str(tmp_path / "ds"),
            "--user-model",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "exp"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "exp" / "user_embeddings.npy").shape == (toy.n_users, 8)


def test_new_user_via_feature_encoder(toy: EncodedDataset, trained) -> None:
    from ralm.data.feature_encoder import FeatureEncoder

    model, _ = trained
    enc = FeatureEncoder.from_dataset(toy)
    record = enc.decode_user(toy, 23)  # raw values of a known user -> same embedding
    np.testing.assert_allclose(
        embed_batch(model, enc.batch([record])),
        embed_users(model, toy, np.array([23])),
        rtol=1e-5,
        atol=1e-6,
    )
    unseen = enc.batch([{"group_hint": "never-seen", "history": ["i3", "nope"]}, {}])
    emb = embed_batch(model, unseen)  # OOV codes and an empty bag: defined, finite
    assert emb.shape == (2, 16) and np.isfinite(emb).all()


def test_out_of_range_users_are_a_data_error(toy: EncodedDataset, trained) -> None:
    model, _ = trained
    with pytest.raises(DataError, match="user indices"):
        embed_users(model, toy, np.array([0, toy.n_users]))
    with pytest.raises(DataError, match="exclude_items"):
        embed_users(model, toy, np.array([0, 1]), exclude_items=np.array([3]))
