"""``ralm experiment`` and ``ralm evaluate`` end to end on the toy set (cheap models)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ralm.cli import app
from ralm.data.toy import make_toy_dataset

CONFIG = """
name = "cli-toy"
seeds = [0, 1, 2]
ks = [1, 5]
models = ["random", "popularity", "yahoo"]
[data]
source = "toy"
"""


def test_experiment_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    cfg = tmp_path / "exp.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["experiment", str(cfg), "--out", str(out), "--seeds", "0,1"])
    assert res.exit_code == 0, res.output
    assert "Popularity" in res.output and "warm protocol" in res.output
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]


def test_evaluate_command_on_prepared_dataset(tmp_path):
    data = make_toy_dataset().save(tmp_path / "toy")
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(data), "--out", str(out), "--models", "random,popularity"]
    res = CliRunner().invoke(app, [*args, "--protocols", "cold", "--seeds", "0", "--ks", "1,3"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert list(results["protocols"]) == ["cold"]
    assert set(results["protocols"]["cold"]["summary"]) == {"Random", "Popularity"}


def test_bad_config_is_a_clean_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('models = ["nope"]\n')
    res = CliRunner().invoke(app, ["experiment", str(cfg)])
    assert res.exit_code != 0
    assert "models" in str(res.exception) or "models" in res.output


@pytest.mark.slow  # trains a tiny stage 1 + stage 2
def test_evaluate_from_trained_checkpoints(tmp_path, monkeypatch):
    from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
    from ralm.lookalike.train import train_lookalike
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.embed import embed_users
    from ralm.user.train import train_user_model

    ds = make_toy_dataset()
    data = ds.save(tmp_path / "toy")
    run = tmp_path / "run"
    um = train_user_model(
        ds, UserModelConfig(dim=8, mlp_hidden=[16]), run / "user", UserTrainConfig(epochs=2)
    )
    universal = embed_users(um, ds)
    train_lookalike(
        ds,
        LookalikeConfig(m=8, h=8, k=3),
        universal,
        lambda u, ex: embed_users(um, ds, u, ex),
        out_dir=run / "lookalike",
        train_cfg=LookalikeTrainConfig(epochs=1),
    )
    import ralm.lookalike.train
    import ralm.user.train

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluating checkpoints must not train")

    monkeypatch.setattr(ralm.lookalike.train, "train_lookalike", no_training)
    monkeypatch.setattr(ralm.user.train, "train_user_model", no_training)
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(data), "--out", str(out), "--run", str(run)]
    res = CliRunner().invoke(app, [*args, "--models", "popularity,ralm", "--seeds", "0,1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "results.json").read_text())["protocols"]["warm"]["summary"]
    assert set(summary) == {"Popularity", "RALM"}
    assert len(summary["RALM"]["prec@10"]["values"]) == 2
