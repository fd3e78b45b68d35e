"""``ralm experiment`` and ``ralm evaluate`` end to end on the toy set (cheap models)."""

from __future__ import annotations

import json

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
