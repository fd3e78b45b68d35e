"""The shared trainer on a tiny regression task with scripted validation metrics."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ralm.errors import RalmError
from ralm.training import trainer as trainer_module
from ralm.training.config import TrainLoopConfig
from ralm.training.threads import torch_threads
from ralm.training.trainer import LoopState, Monitor, NonFiniteLossError, State, Trainer


class Config(TrainLoopConfig):
    epochs: int = 10


class Task(nn.Module):
    """forward(batch) -> MSE of a linear model: the loss is the task's only output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((self.lin(x).squeeze(1) - y) ** 2).mean()


class Data:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.calls: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((lo, hi))
        return self.x[lo:hi], self.y[lo:hi]


class Stage:
    """Scripted validation metric per epoch; records what the trainer asked for."""

    def __init__(self, task: Task, metric: list[float], n: int = 100, nan_at: int = -1) -> None:
        self.task, self.metric, self.n, self.nan_at = task, metric, n, nan_at
        self.weights: list[State] = []
        self.saved: list[tuple[int, bool]] = []
        self.improved: list[int] = []
        self.data: list[Data] = []
        self.resume_state: tuple[LoopState, State | None] | None = None

    def epoch_data(self, epoch: int) -> Data:
        g = torch.Generator().manual_seed(epoch)
        x = torch.randn(self.n, 3, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5])
        if epoch == self.nan_at:
            y[0] = float("nan")
        self.data.append(Data(x, y))
        return self.data[-1]

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        self.weights.append({k: v.clone() for k, v in self.task.state_dict().items()})
        return {"metric": self.metric[epoch]}

    def on_improved(self, epoch: int) -> None:
        self.improved.append(epoch)

    def save(self, state: LoopState, improved: bool) -> None:
        self.saved.append((state.epoch, improved))

    def resume(self) -> tuple[LoopState, State | None]:
        assert self.resume_state is not None
        return self.resume_state


def _fit(stage: Stage, cfg: Config, resume: bool = False, **kw: Any) -> LoopState:
    opt = torch.optim.SGD(stage.task.parameters(), lr=0.05)
    trainer = Trainer(stage.task, opt, stage, cfg, Monitor("metric"), name="toy", **kw)
    return trainer.fit(resume=resume)


def _reference(metric: list[float], epochs: int, patience: int) -> tuple[int, int]:
    """(best epoch, epochs run) by a plain loop over the scripted metric."""
    best, best_e, bad, run = -1e9, -1, 0, 0
    for e in range(epochs):
        run += 1
        if metric[e] > best:
            best, best_e, bad = metric[e], e, 0
        else:
            bad += 1
        if patience and bad >= patience:
            break
    return best_e, run


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_and_best_epoch_match_a_plain_loop(patience: int) -> None:
    metric = [0.1, 0.3, 0.25, 0.2, 0.35, 0.34, 0.33, 0.32, 0.31, 0.3]
    torch.manual_seed(0)
    stage = Stage(Task(), metric)
    state = _fit(stage, Config(patience=patience, batch_size=16))
    best, run = _reference(metric, 10, patience)
    assert state.best_epoch == best and len(state.history) == run == state.epoch
    assert [h["epoch"] for h in state.history] == list(range(1, run + 1))
    assert stage.improved[-1] == best and state.best_record["metric"] == metric[best]
    assert [s[0] for s in stage.saved] == list(range(1, run + 1))
    for k, v in stage.task.state_dict().items():  # the best epoch's weights are returned
        torch.testing.assert_close(v, stage.weights[best][k], rtol=0, atol=0)
    assert not stage.task.training
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_caps_on_steps_and_examples() -> None:
    for kw, steps, n in [
        ({}, 7, 100),
        ({"steps_per_epoch": 3}, 3, 48),
        ({"max_train_examples": 40}, 3, 40),
        ({"steps_per_epoch": 2, "max_train_examples": 40}, 2, 32),
    ]:
        stage = Stage(Task(), [0.0] * 2)
        state = _fit(stage, Config(epochs=2, patience=0, batch_size=16, **kw))
        assert [h["steps"] for h in state.history] == [steps, steps]
        calls = stage.data[0].calls
        assert len(calls) == steps and calls[-1][1] == n and calls[0] == (0, 16)


def test_non_finite_loss_stops_before_anything_is_saved() -> None:
    stage = Stage(Task(), [0.1, 0.2, 0.3], nan_at=1)
    with pytest.raises(NonFiniteLossError, match=r"toy: .*nan at epoch 2/3, step 1/7") as err:
        _fit(stage, Config(epochs=3, patience=0, batch_size=16))
    assert isinstance(err.value, RalmError)
    assert stage.saved == [(1, True)]  # epoch 1 saved, nothing for the diverged epoch


def test_resume_continues_the_counters() -> None:
    metric = [0.5, 0.4, 0.3, 0.6, 0.1]
    stage = Stage(Task(), metric)
    best = {k: torch.full_like(v, 7.0) for k, v in stage.task.state_dict().items()}
    hist = [{"epoch": 1, "metric": 0.5}, {"epoch": 2, "metric": 0.4}]
    stage.resume_state = (LoopState(2, 0.5, 0, 1, hist, dict(hist[0])), best)
    stage.weights = [best, best]  # epochs 1-2 ran before the resume
    state = _fit(stage, Config(epochs=5, patience=2, batch_size=16), resume=True)
    # epoch 3 is the second epoch without improvement: stop, keep epoch 1's weights
    assert len(stage.data) == 1 and state.epoch == 3 and state.best_epoch == 0
    for k, v in stage.task.state_dict().items():
        torch.testing.assert_close(v, best[k])


def test_progress_is_logged_from_the_first_step(caplog, monkeypatch) -> None:
    monkeypatch.setenv("RALM_NO_PROGRESS", "1")
    stage = Stage(Task(), [0.0])
    with caplog.at_level(logging.INFO, logger="ralm.training.trainer"):
        _fit(stage, Config(epochs=1, batch_size=16), log_every_s=0.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "toy epoch 1/1: 100 examples in 7 steps of 16"
    assert lines[1].startswith("toy epoch 1/1: step 1/7, loss ")
    assert lines[-1].startswith("toy epoch 1/1: train loss ")


def test_torch_threads_restores_the_setting() -> None:
    old = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    with torch_threads(0):
        assert torch.get_num_threads() == old


class RandomData(Data):
    """Batches that draw from one random stream (like stage 1's negatives), recording the
    thread that built each one; ``fail_at`` raises while building that batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, fail_at: int = -1) -> None:
        super().__init__(x, y)
        self.rng = np.random.default_rng(0)
        self.threads: list[str] = []
        self.fail_at = fail_at

    def batch(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.calls) == self.fail_at:
            raise ValueError(f"bad row in batch {self.fail_at}")
        x, y = super().batch(lo, hi)
        self.threads.append(threading.current_thread().name)
        noise = torch.from_numpy(self.rng.normal(size=hi - lo).astype(np.float32))
        return x, y + 0.1 * noise


class RandomStage(Stage):
    def __init__(self, task: Task, fail_at: int = -1) -> None:
        super().__init__(task, [0.0, 0.0])
        self.fail_at = fail_at

    def epoch_data(self, epoch: int) -> Data:
        base = super().epoch_data(epoch)
        self.data[-1] = RandomData(base.x, base.y, self.fail_at)
        return self.data[-1]


@pytest.mark.parametrize("ahead", [False, True])
def test_prefetching_builds_the_same_batches_in_order(ahead: bool, monkeypatch) -> None:
    """With a spare core the next batch is built in a worker thread: same batches, same
    draws from the epoch's random stream, same weights as building them in the loop."""
    runs = {}
    for flag in (not ahead, ahead):
        monkeypatch.setattr(trainer_module, "spare_core", lambda flag=flag: flag)
        torch.manual_seed(0)
        stage = RandomStage(Task())
        _fit(stage, Config(epochs=2, patience=0, batch_size=16))
        runs[flag] = stage
        built_by = {t.startswith("ralm-batch") for d in stage.data for t in d.threads}
        assert built_by == {flag}
        assert stage.data[0].calls == [(lo, min(lo + 16, 100)) for lo in range(0, 100, 16)]
    for k, v in runs[True].task.state_dict().items():
        torch.testing.assert_close(v, runs[False].task.state_dict()[k], rtol=0, atol=0)


def test_an_error_building_a_prefetched_batch_reaches_the_caller(monkeypatch) -> None:
    monkeypatch.setattr(trainer_module, "spare_core", lambda: True)
    stage = RandomStage(Task(), fail_at=3)
    with pytest.raises(ValueError, match="bad row in batch 3"):
        _fit(stage, Config(epochs=2, patience=0, batch_size=16))
    assert stage.saved == []


def test_spare_core_counts_threads_and_local_processes(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with torch_threads(1):
        assert trainer_module.spare_core()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this node
        assert not trainer_module.spare_core()
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    with torch_threads(2):
        assert not trainer_module.spare_core()
