"""Data-parallel training with 2 real processes (``torch.distributed.run``, gloo, loopback).

Each launch runs :mod:`ddp_worker` on 2 ranks; each rank writes its final weights, their
hash and its history. The one-process references run the same worker code in this process.

Measured tolerances (toy data, 3 epochs, global batch 64):

* the shared Trainer with stage 1's task and negatives fixed per example: per-epoch loss
  within 4e-8 relative of one process (checked at rtol 1e-5), weights within 1e-6;
* stage 2 end to end: per-epoch loss equal to 7 digits, validation AUC equal (checked at
  rtol 1e-4 / atol 1e-4), with the pointwise BCE loss and with the listwise softmax loss
  (every rank builds the global batch's columns);
* one listwise stage-2 step: loss and DDP-averaged gradients of the 2 ranks equal to the
  one-process loss and gradients of the full batch (checked at rtol 1e-5);
* stage 1 end to end: each rank draws its own eq. 3 negatives, so the curve is a different
  sample of the same process: per-epoch loss within 0.5% of one process (checked at 2e-2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist
from safetensors.torch import load_file

import ralm
from ralm.data.toy import make_toy_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo"),
]

HERE = Path(__file__).parent
WORKER = HERE / "ddp_worker.py"
TIMING = {"samples_per_s", "seconds", "kmeans_s"}


def _env() -> dict[str, str]:
    src = str(Path(ralm.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", RALM_NO_PROGRESS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node N ARGS`` (free port)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", *args,
    ]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]


def launch(mode: str, out: Path, results: Path, epochs: int, *extra: str) -> list[dict[str, Any]]:
    """Two ranks of ``mode``; returns both ranks' results (weights under ``weights``)."""
    torchrun(str(WORKER), mode, str(out), str(results), str(epochs), *extra)
    return [_read(results, r) for r in range(2)]


def single(mode: str, out: Path, results: Path, epochs: int) -> dict[str, Any]:
    """The one-process run of ``mode`` in this process."""
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    module, history = ddp_worker.RUNS[mode](out, epochs, False)
    ddp_worker.write_results(results, module, history)
    return _read(results, 0)


def _read(results: Path, rank: int) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((results / f"rank{rank}.json").read_text())
    raw["weights"] = {
        k: v.numpy() for k, v in load_file(results / f"rank{rank}.safetensors").items()
    }
    return raw


def _curve(res: dict[str, Any], key: str) -> np.ndarray:
    return np.array([r[key] for r in res["history"]], dtype=np.float64)


def _same_ranks(ranks: list[dict[str, Any]]) -> None:
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["hash"] == ranks[1]["hash"]  # every rank holds the same weights
    strip = [[{k: v for k, v in h.items() if k not in TIMING} for h in r["history"]] for r in ranks]
    assert strip[0] == strip[1]  # and the same (broadcast) records


def _no_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_trainer_two_ranks_follow_the_one_process_run(tmp_path: Path) -> None:
    two = launch("trainer", tmp_path / "o2", tmp_path / "r2", 3)
    _same_ranks(two)
    one = single("trainer", tmp_path / "o1", tmp_path / "r1", 3)
    assert one["world"] == 1
    # rank 0's validation record decides: every rank stopped early after epoch 2 of 3
    assert len(one["history"]) == len(two[0]["history"]) == len(two[1]["history"]) == 2
    np.testing.assert_allclose(_curve(two[0], "train_loss"), _curve(one, "train_loss"), rtol=1e-5)
    assert [r["steps"] for r in two[0]["history"]] == [r["steps"] for r in one["history"]]
    assert one["weights"].keys() == two[0]["weights"].keys()
    for k, w in one["weights"].items():
        np.testing.assert_allclose(two[0]["weights"][k], w, rtol=1e-4, atol=1e-6, err_msg=k)
    # training moved the weights (the comparison is not between two untouched inits)
    assert one["history"][0]["train_loss"] > one["history"][-1]["train_loss"]


def test_a_nan_loss_on_one_rank_stops_every_rank_before_the_update(tmp_path: Path) -> None:
    """Rank 1's loss turns NaN at its 20th step (epoch 2, step 4 of 16): the loss sum of
    that step (taken during the backward pass) is NaN on both ranks, both raise the same
    error and neither applies the step, so the weights stay finite and equal."""
    two = launch("trainer_nan", tmp_path / "o2", tmp_path / "r2", 3)
    errors = [r["history"][0]["error"] for r in two]
    assert errors[0] == errors[1] and errors[0] is not None, errors
    assert "some rank" in errors[0] and "epoch 2/3, step 4/16" in errors[0], errors[0]
    assert two[0]["hash"] == two[1]["hash"]
    for w in two[0]["weights"].values():
        assert np.isfinite(w).all()


def test_user_ddp_same_weights_rank0_checkpoint_curve_and_resume(tmp_path: Path) -> None:
    from ralm.user.checkpoint import load_user_model

    full = launch("user", tmp_path / "full", tmp_path / "rf", 3)
    _same_ranks(full)
    # rank 0's checkpoint holds the weights every rank returned (the best epoch)
    ds = make_toy_dataset(n_users=300, n_items=60, seed=0)
    saved = load_user_model(tmp_path / "full", ds)
    np.testing.assert_array_equal(
        saved.item_embedding.numpy(), full[0]["weights"]["item_embedding"]
    )
    assert not list((tmp_path / "full").glob("*.tmp*"))  # atomic writes left no temporaries

    one = single("user", tmp_path / "one", tmp_path / "r1", 3)
    np.testing.assert_allclose(_curve(full[0], "train_loss"), _curve(one, "train_loss"), rtol=2e-2)

    # resume under DDP: 2 epochs, then continue to 3 == 3 uninterrupted epochs
    launch("user", tmp_path / "part", tmp_path / "rp", 2)
    resumed = launch("user", tmp_path / "part", tmp_path / "rr", 3, "--resume")
    _same_ranks(resumed)
    assert resumed[0]["hash"] == full[0]["hash"]
    assert _no_timing(resumed[0]["history"]) == _no_timing(full[0]["history"])


def test_lookalike_ddp_matches_one_process_and_resumes(tmp_path: Path) -> None:
    two = launch("lookalike", tmp_path / "o2", tmp_path / "r2", 3)
    _same_ranks(two)
    assert (tmp_path / "o2" / "seed_index").is_dir()
    one = single("lookalike", tmp_path / "o1", tmp_path / "r1", 3)
    np.testing.assert_allclose(_curve(two[0], "loss"), _curve(one, "loss"), rtol=1e-4)
    np.testing.assert_allclose(_curve(two[0], "val_auc"), _curve(one, "val_auc"), atol=1e-4)
    np.testing.assert_allclose(_curve(two[0], "inertia"), _curve(one, "inertia"), rtol=1e-3)
    # the re-clustering ran once per epoch (rank 0) plus the initial clustering
    assert [h["recluster_calls"] for h in two[0]["history"]] == [4, 4, 4]
    assert two[0]["history"][0]["recluster_calls"] == one["history"][0]["recluster_calls"]

    launch("lookalike", tmp_path / "p", tmp_path / "rp", 2)
    resumed = launch("lookalike", tmp_path / "p", tmp_path / "rr", 3, "--resume")
    _same_ranks(resumed)
    assert resumed[0]["hash"] == two[0]["hash"]
    np.testing.assert_allclose(_curve(resumed[0], "loss"), _curve(two[0], "loss"), rtol=1e-6)


def test_softmax_step_spans_every_rank_loss_and_gradients(tmp_path: Path) -> None:
    """One listwise step: each rank scores its clicks against every item of the global
    batch (built on every rank), so loss and gradients are the one-process ones."""
    two = launch("softmax_step", tmp_path / "o2", tmp_path / "r2", 1)
    one = single("softmax_step", tmp_path / "o1", tmp_path / "r1", 1)
    assert one["world"] == 1 and [r["world"] for r in two] == [2, 2]
    rec1, rec2 = one["history"][0], [r["history"][0] for r in two]
    assert rec2[0]["clicks_no_clicks"] == 10 and rec2[1]["clicks_no_clicks"] == 0
    for key in ("loss_odd", "loss_no_clicks"):
        assert rec2[0][key] == rec2[1][key] == pytest.approx(rec1[key], rel=1e-6), key
    assert one["weights"].keys() == two[0]["weights"].keys() == two[1]["weights"].keys()
    moved = 0
    for k, g in one["weights"].items():
        for r in range(2):
            np.testing.assert_allclose(two[r]["weights"][k], g, rtol=1e-5, atol=1e-7, err_msg=k)
        moved += int(np.abs(g).max() > 1e-6)
    # every parameter group learns (transform, attention, temperature, calibration)
    assert moved >= len(one["weights"]) - 2, moved


def test_lookalike_softmax_ddp_matches_one_process(tmp_path: Path) -> None:
    two = launch("lookalike_softmax", tmp_path / "o2", tmp_path / "r2", 3)
    _same_ranks(two)
    one = single("lookalike_softmax", tmp_path / "o1", tmp_path / "r1", 3)
    np.testing.assert_allclose(_curve(two[0], "loss"), _curve(one, "loss"), rtol=1e-4)
    np.testing.assert_allclose(_curve(two[0], "val_auc"), _curve(one, "val_auc"), atol=1e-4)
    np.testing.assert_allclose(_curve(two[0], "inertia"), _curve(one, "inertia"), rtol=1e-3)
    assert one["history"][0]["loss"] > one["history"][-1]["loss"]  # it trained


def test_cli_trains_both_stages_under_torchrun(tmp_path: Path) -> None:
    from ralm.lookalike.checkpoint import load_lookalike_model

    make_toy_dataset(n_users=300, n_items=40, seed=0).save(tmp_path / "data")
    data, user, look = tmp_path / "data", tmp_path / "user", tmp_path / "look"
    torchrun(
        "-m", "ralm", "train", "user", "--data", str(data), "--out", str(user),
        "--epochs", "1", "--dim", "8", "--batch-size", "64",
    )  # fmt: skip
    assert (user / "model.safetensors").is_file()
    torchrun(
        "-m", "ralm", "train", "lookalike", "--data", str(data), "--user-model", str(user),
        "--out", str(look), "--k", "3", "--h", "8", "--epochs", "2", "--batch-size", "64",
        "--no-global",  # an ablation: parameters outside the graph (find_unused_parameters)
    )  # fmt: skip
    model, cfg = load_lookalike_model(look)
    assert not cfg.use_global and sum(p.numel() for p in model.parameters()) > 0
    assert (look / "seed_index").is_dir()
