"""``ralm train lookalike`` end to end on the toy dataset with a tiny stage-1 model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ralm.cli import app
from ralm.data.encoded import EncodedDataset
from ralm.errors import CheckpointError
from ralm.lookalike.checkpoint import load_lookalike_model
from ralm.lookalike.seed_index import SeedIndex


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, toy: EncodedDataset) -> Path:
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.train import train_user_model

    root = tmp_path_factory.mktemp("run")
    toy.save(root / "data")
    ds = EncodedDataset.load(root / "data")
    tc = UserTrainConfig(epochs=1, batch_size=64)
    train_user_model(ds, UserModelConfig(dim=8), root / "user", tc)
    return root


def _args(root: Path, *extra: str) -> list[str]:
    return [
        "train", "lookalike", "--data", str(root / "data"), "--user-model", str(root / "user"),
        "--out", str(root / "lookalike"), "--k", "3", "--h", "8", "--epochs", "1", *extra,
    ]  # fmt: skip


def test_cli_trains_saves_and_resumes(run_dir: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, _args(run_dir), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "best val AUC" in res.output
    _, cfg = load_lookalike_model(run_dir / "lookalike")
    assert cfg.k == 3 and cfg.m == 8
    index = SeedIndex.load(run_dir / "lookalike" / "seed_index")
    assert index.k == 3 and index.h == 8
    res = runner.invoke(app, [*_args(run_dir), "--epochs", "2", "--resume"])  # last value wins
    assert res.exit_code == 0, res.output
    history = json.loads((run_dir / "lookalike" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]  # epoch 1 ran after the resume
    (run_dir / "lookalike" / "train_state" / "state.json").write_text("{broken")
    res = runner.invoke(app, [*_args(run_dir), "--epochs", "3", "--resume"])
    assert isinstance(res.exception, CheckpointError)


def test_cli_loss_and_monitor_options(run_dir: Path) -> None:
    runner = CliRunner()
    out = run_dir / "lookalike-bce"
    args = [*_args(run_dir), "--out", str(out), "--loss", "bce", "--monitor", "auc"]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["loss"] == "bce" and train["monitor"] == "auc"
    assert train["neg_sampling"] == "log_uniform"  # the CLI default follows the config's
    bad = runner.invoke(app, [*_args(run_dir), "--out", str(out), "--loss", "hinge"])
    assert bad.exit_code != 0 and "loss" in (bad.output + str(bad.exception))


def test_stage1_targets_equal_embed_users_and_check_the_dataset(run_dir: Path) -> None:
    """The CLI's per-batch stage-1 calls (dataset checked once) give ``embed_users``'s
    embeddings bitwise, and still refuse a dataset with another item-id map."""
    import dataclasses

    import numpy as np

    from ralm.cli.train_lookalike import stage1_targets
    from ralm.user.checkpoint import load_user_model
    from ralm.user.embed import embed_users

    ds = EncodedDataset.load(run_dir / "data")
    um = load_user_model(run_dir / "user", ds)
    fn = stage1_targets(um, ds)
    rng = np.random.default_rng(0)
    for b in (1, 7, 256, 5000):  # one and several of embed_users's chunks
        users = rng.integers(0, ds.n_users, b)
        exclude = np.where(rng.random(b) < 0.5, rng.integers(0, ds.n_items, b), -1)
        want = embed_users(um, ds, users, exclude)
        np.testing.assert_array_equal(fn(users, exclude), want)
    other = dataclasses.replace(um, item_digest="0" * 16)  # trained on another item map
    with pytest.raises(CheckpointError):
        stage1_targets(other, ds)(np.array([0]), np.array([-1]))
