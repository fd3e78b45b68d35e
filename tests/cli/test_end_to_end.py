"""One TOML file drives both training stages for real (toy data, tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from ralm.cli import app
from ralm.data.toy import make_toy_dataset
from ralm.lookalike.checkpoint import load_lookalike_model

torch.set_num_threads(1)


def test_config_file_reaches_both_trainers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RALM_NO_PROGRESS", "1")
    data = make_toy_dataset(n_users=200, n_items=30, clicks_per_user=10, seed=3).save(
        tmp_path / "data"
    )
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "[user]\ndim = 8\nmlp_hidden = [16]\n"
        "[user_train]\nepochs = 2\nbatch_size = 64\npatience = 0\n"
        "[lookalike]\nk = 3\nh = 8\n"
        "[lookalike_train]\nepochs = 1\nneg_ratio = 2\n"
    )
    runner = CliRunner()
    user = tmp_path / "user"
    argv = ["train", "user", "--data", str(data), "--out", str(user), "--config", str(cfg)]
    res = runner.invoke(app, [*argv, "--epochs", "1"])  # the flag beats the file's 2
    assert res.exit_code == 0, res.output
    meta = json.loads((user / "config.json").read_text())
    assert (meta["config"]["dim"], meta["config"]["mlp_hidden"]) == (8, [16])  # from the file
    assert (meta["train"]["epochs"], meta["train"]["batch_size"]) == (1, 64)  # flag, file
    assert len(meta["history"]) == 1
    res = runner.invoke(
        app,
        [
            "train", "lookalike", "--data", str(data), "--user-model", str(user),
            "--out", str(tmp_path / "lookalike"), "--config", str(cfg), "--h", "4",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    _, lk = load_lookalike_model(tmp_path / "lookalike")
    assert (lk.m, lk.k, lk.h) == (8, 3, 4)  # m from stage 1, k from the file, h from the flag
