"""Loading a real training run for serving: tables, feature path, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset
from ralm.data.feature_encoder import FeatureEncoder
from ralm.errors import CheckpointError, DataError
from ralm.serve.loader import load_serving_model
from ralm.user.checkpoint import read_config

Run = tuple[Path, Path, list[int]]


def test_feature_path_matches_known_user_path(trained_run: Run) -> None:
    run, data, _ = trained_run
    model = load_serving_model(run, data)
    ds = EncodedDataset.load(data)
    enc = FeatureEncoder.from_dataset(ds)
    users = [3, 17, 42]
    known, found = model.embedder.lookup([f"u{u}" for u in users])
    assert found.all()
    fresh = model.embedder.embed_features([enc.decode_user(ds, u) for u in users])
    np.testing.assert_allclose(fresh, known, rtol=1e-4, atol=1e-5)
    assert model.initial_index is not None and model.k == 4 and model.h == 16
    clicks = list(model.bootstrap_clicks())  # type: ignore[misc]
    assert len(clicks) == int((np.asarray(ds.interactions.label) > 0).sum())
    with pytest.raises(DataError, match="unknown field"):
        model.embedder.embed_features([{"no_such_field": 1}])


def test_exported_table_is_used(trained_run: Run, tmp_path: Path) -> None:
    run, data, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ds = EncodedDataset.load(data)
    dim = read_config(run / "user")["config"].dim
    table = np.full((ds.n_users, dim), 0.5, dtype=np.float32)
    (copy / "export").mkdir()
    np.save(copy / "export" / "user_embeddings.npy", table)
    np.save(copy / "export" / "user_ids.npy", np.asarray(ds.user_ids).astype(str))
    emb, found = load_serving_model(copy, data).embedder.lookup(["u5", "nobody"])
    assert found.tolist() == [True, False]
    assert np.all(emb[0] == 0.5) and np.all(emb[1] == 0.0)


def test_missing_stage_is_a_clear_error(trained_run: Run, tmp_path: Path) -> None:
    run, data, _ = trained_run
    (tmp_path / "user").mkdir()
    with pytest.raises(CheckpointError, match="lookalike"):
        load_serving_model(tmp_path, data)
    with pytest.raises(CheckpointError, match=r"meta\.json"):
        load_serving_model(run, tmp_path)


def test_unsound_training_index_is_not_served(trained_run: Run, tmp_path: Path) -> None:
    run, data, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    chunk = next((copy / "lookalike" / "seed_index").glob("chunk-*.safetensors"))
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated
    model = load_serving_model(copy, data)
    assert model.initial_index is None  # re-clustered from the seeds instead
    good = load_serving_model(run, data).initial_index
    assert good is not None and good.n_items > 0
