"""The one training loop of both stages: epochs, early stopping, best epoch, resume, progress.

A stage plugs in through :class:`TrainingStage` (its examples, its between-epoch work and
validation, its checkpoint files); the loss always comes from ``task(batch)``, a
``nn.Module`` whose ``forward`` returns a scalar loss, so a DDP wrapper can take the task as
it is. Per epoch the :class:`Trainer`:

1. asks the stage for the epoch's examples (:meth:`TrainingStage.epoch_data`) and cuts them
   to ``max_train_examples`` / ``steps_per_epoch * batch_size``;
2. runs the steps with a progress bar from the first step (``ralm.common.progress``; when
   bars are off, a log line every ``log_every_s`` seconds), stopping with
   :class:`NonFiniteLossError` on a NaN/inf loss; with a core to spare
   (:func:`ralm.training.threads.spare_core`) the next batch is built in a worker thread
   during each step;
3. calls :meth:`TrainingStage.end_epoch` (stage 2 re-clusters there) for the validation
   record, picks the best epoch on the monitored metric, and checks that every parameter
   is finite;
4. lets the stage checkpoint (:meth:`TrainingStage.save`) and stops after ``patience``
   epochs without improvement.

Nothing is written for an epoch that failed, so a good checkpoint is never overwritten by a
diverged one.

Under ``torchrun`` (:mod:`ralm.training.distributed`, ``WORLD_SIZE > 1``) the same loop runs
data-parallel: the task is wrapped in ``DistributedDataParallel``, each rank trains on its
shard of the epoch's examples (:meth:`ShardableEpochData.shard`, rows ``rank::world``, a
``batch_size / world`` slice of every global batch), the losses are summed over the ranks
before the backward pass (a NaN on any rank stops every rank), rank 0 alone runs
:meth:`TrainingStage.end_epoch` and broadcasts its record (so the best epoch and the
early-stopping decision are the same everywhere), :meth:`DistributedStage.sync_epoch` then
hands rank 0's between-epoch state (stage 2's clusters) to every rank, and rank 0 alone
checkpoints while the others wait at a barrier. Every rank resumes from the run folder.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.errors import RalmError
from ralm.training.config import TrainLoopConfig
from ralm.training.distributed import (
    DistContext,
    check_global_batch,
    current,
    shard_bounds,
    shard_rows,
)
from ralm.training.threads import spare_core

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


class NonFiniteLossError(RalmError):
    """Training diverged: a loss or a parameter became NaN or infinite."""


class Optimizer(Protocol):
    """What the loop needs of an optimiser (``torch.optim.Optimizer`` or a composite)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...


class EpochData(Protocol):
    """One epoch's examples: ``len`` of them, cut into batches on demand (in order)."""

    def __len__(self) -> int: ...

    def batch(self, lo: int, hi: int) -> Any:
        """The batch of examples ``lo:hi`` (called with increasing ``lo``)."""
        ...


class ShardableEpochData(EpochData, Protocol):
    """Epoch data that can keep one rank's rows (needed when training data-parallel)."""

    def shard(self, rows: Any, rank: int, world: int) -> EpochData:
        """The examples ``rows`` (int64, increasing) of this epoch, for rank ``rank``.

        Random draws made while batching (stage 1's negatives) must come from a stream of
        the rank's own (distinct per rank, deterministic per seed and epoch). A shard
        whose ``global_batches`` attribute is True is batched with the global bounds
        instead and marks the rank's rows itself (:func:`rank_batch`).
        """
        ...


class DistributedStage(Protocol):
    """Optional hook of a stage trained data-parallel."""

    def sync_epoch(self, epoch: int, ctx: DistContext) -> None:
        """After rank 0's :meth:`TrainingStage.end_epoch`: give every rank the state the
        next epoch needs (called on every rank, collectives allowed)."""
        ...


class TrainingStage(Protocol):
    """The stage-specific parts the :class:`Trainer` calls."""

    def epoch_data(self, epoch: int) -> EpochData:
        """Examples of epoch ``epoch`` (0-based), drawn from the epoch's own random stream."""
        ...

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Between-epoch work (e.g. re-clustering) and validation: fields of the record."""
        ...

    def on_improved(self, epoch: int) -> None:
        """Keep the stage's own artifacts of a new best epoch (e.g. its clusters)."""
        ...

    def save(self, state: LoopState, improved: bool) -> None:
        """Checkpoint after a finished epoch (best files when ``improved``; resume state)."""
        ...

    def resume(self) -> tuple[LoopState, State | None]:
        """Restore task, optimiser and stage from the run folder.

        Returns:
            The loop state after the last finished epoch and the task state of the best
            epoch (``None`` when no epoch was best yet).
        """
        ...


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks the best epoch.

    Attributes:
        key: record field (``recall``, ``val_loss``, ``val_auc``).
        higher_is_better: direction of improvement.
    """

    key: str
    higher_is_better: bool = True

    def value(self, record: dict[str, Any]) -> float | None:
        """Monitored value oriented so that higher is better; ``None`` without validation."""
        v = record.get(self.key)
        if v is None or not math.isfinite(float(v)):
            return None
        return float(v) if self.higher_is_better else -float(v)


@dataclass
class LoopState:
    """Loop counters saved with every checkpoint (plain JSON types).

    Attributes:
        epoch: epochs finished.
        best: best monitored value (oriented, higher is better), None before validation.
        best_epoch: 0-based index of the best epoch (-1 before the first epoch).
        bad: epochs since the last improvement.
        history: one record per finished epoch.
        best_record: the record of the best epoch.
    """

    epoch: int = 0
    best: float | None = None
    best_epoch: int = -1
    bad: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_record: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
            "history": self.history,
            "best_record": self.best_record,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoopState:
        """Inverse of :meth:`to_json`; unknown keys are ignored."""
        return cls(
            epoch=int(raw.get("epoch", 0)),
            best=None if raw.get("best") is None else float(raw["best"]),
            best_epoch=int(raw.get("best_epoch", -1)),
            bad=int(raw.get("bad", 0)),
            history=list(raw.get("history", [])),
            best_record=dict(raw.get("best_record", {})),
        )


def train_step(task: nn.Module, optimizer: Optimizer, batch: Any) -> float:
    """One optimisation step: ``loss = task(batch)``, backward, step; returns the loss.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite (no update is applied).
    """
    loss = task(batch)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the training loss became {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def rank_batch(data: EpochData, lo: int, hi: int, ctx: DistContext) -> tuple[Any, int]:
    """This rank's batch of global rows ``[lo, hi)`` and its number of rows (``rank::world``).

    A shard batches its local slice (:func:`shard_bounds`), or, when it sets
    ``global_batches`` (a listwise loss whose columns are the whole global batch, stage 2's
    softmax), the global bounds: it then builds the global batch and marks its own rows.
    """
    llo, lhi = shard_bounds(lo, hi, ctx.rank, ctx.world_size)
    if getattr(data, "global_batches", False):
        return data.batch(lo, hi), lhi - llo
    return data.batch(llo, lhi), lhi - llo


def snapshot(module: nn.Module) -> State:
    """A detached copy of a module's state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Trainer:
    """Runs the epochs of one stage.

    Args:
        task: ``nn.Module`` with ``forward(batch) -> scalar loss`` (holds the parameters).
        optimizer: updates the task's parameters.
        stage: the stage hooks.
        cfg: loop settings (the stage's train config).
        monitor: the validation metric picking the best epoch.
        name: label of progress bars and log lines (``stage 1``).
        first_epoch: ``epoch`` value of the first epoch's record (stage 1 counts from 1,
            stage 2 from 0); progress bars and log lines always show ``epoch e/E`` from 1.
        loss_key: record field of the mean training loss.
        log_keys: record fields written in the per-epoch log line.
        log_every_s: seconds between progress log lines when bars are off.
        dist: the data-parallel context (default: the running process group, if any).
    """

    def __init__(
        self,
        task: nn.Module,
        optimizer: Optimizer,
        stage: TrainingStage,
        cfg: TrainLoopConfig,
        monitor: Monitor,
        *,
        name: str,
        first_epoch: int = 1,
        loss_key: str = "train_loss",
        log_keys: tuple[str, ...] = (),
        log_every_s: float = 60.0,
        dist: DistContext | None = None,
    ) -> None:
        self.task = task
        self.optimizer = optimizer
        self.stage = stage
        self.cfg = cfg
        self.epochs = cfg.epochs
        self.monitor = monitor
        self.name = name
        self.first_epoch = first_epoch
        self.loss_key = loss_key
        self.log_keys = log_keys
        self.log_every_s = log_every_s
        self.dist = dist if dist is not None else current()
        self.model: nn.Module = task  # what the steps call (the DDP wrapper when distributed)

    def _wrap(self) -> nn.Module:
        """The task, inside ``DistributedDataParallel`` when more than one process trains."""
        if not self.dist.enabled:
            return self.task
        check_global_batch(self.cfg.batch_size, self.dist)
        from torch.nn.parallel import DistributedDataParallel

        # construction broadcasts rank 0's parameters and buffers: all ranks start equal;
        # a task whose forward leaves some parameters unused says so (ablations)
        unused = bool(getattr(self.task, "ddp_find_unused_parameters", False))
        return DistributedDataParallel(self.task, find_unused_parameters=unused)

    def fit(self, resume: bool = False) -> LoopState:
        """Train (or continue) until ``epochs`` or early stopping; leaves the best weights
        in the task (eval mode) and returns the loop state."""
        state, best = self.stage.resume() if resume else (LoopState(), None)
        best_state = best if best is not None else snapshot(self.task)
        self.model = self._wrap()
        for epoch in range(state.epoch, self.epochs):
            if self._stop_early(state):
                break
            record = self._run_epoch(epoch)
            record.update(self._end_epoch(epoch))
            self._check_parameters(epoch)
            value = self.monitor.value(record)
            improved = value is None or state.best is None or value > state.best
            if improved:
                state.best, state.best_epoch, state.bad = value, epoch, 0
                state.best_record = dict(record)
                best_state = snapshot(self.task)
                self.stage.on_improved(epoch)
            else:
                state.bad += 1
            state.epoch = epoch + 1
            state.history.append(record)
            self._log_epoch(record, improved, state)
            if self.dist.is_main:
                self.stage.save(state, improved)
            self.dist.barrier()  # nobody runs ahead of a checkpoint being written
            if state.epoch < self.epochs and self._stop_early(state):
                break
        self.model = self.task
        self.task.load_state_dict(best_state)
        self.task.eval()
        return state

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """The stage's between-epoch work and validation (rank 0's, broadcast)."""
        ctx = self.dist
        if not ctx.enabled:
            return self.stage.end_epoch(epoch)
        record = self.stage.end_epoch(epoch) if ctx.is_main else {}
        record = ctx.broadcast(record)
        sync = getattr(self.stage, "sync_epoch", None)
        if sync is not None:
            sync(epoch, ctx)
        return record

    def _epoch_rows(self, epoch: int) -> tuple[EpochData, int]:
        """This rank's examples of the epoch and the global example count after the caps."""
        data = self.stage.epoch_data(epoch)
        n = len(data)
        cap = self.cfg.examples_cap()
        if cap is not None:
            n = min(n, cap)
        ctx = self.dist
        if not ctx.enabled:
            return data, n
        shard = getattr(data, "shard", None)
        if shard is None:
            raise TypeError(f"{type(data).__name__} has no shard(rows, rank, world) method")
        # every rank needs rows in every step: a last batch of fewer rows than ranks is
        # left out (at most world - 1 examples; the batch is a multiple of the world)
        short = n % self.cfg.batch_size
        kept = n - short if short < ctx.world_size else n
        if kept < n:
            log.debug("%s: %d example(s) left out of the epoch to split it evenly", self.name,
                      n - kept)  # fmt: skip
        return shard(shard_rows(kept, ctx.rank, ctx.world_size), ctx.rank, ctx.world_size), kept

    def _batch(self, data: EpochData, lo: int, hi: int) -> tuple[Any, int]:
        """The batch of global rows ``[lo, hi)`` this process trains on, and its rows."""
        if not self.dist.enabled:
            return data.batch(lo, hi), hi - lo
        return rank_batch(data, lo, hi, self.dist)

    def _step(self, batch: Any, n_local: int, lo: int, hi: int) -> tuple[float, int]:
        """One step over global rows ``[lo, hi)``: ``(mean loss of the global batch, rows)``.

        Distributed, each rank computes the mean loss of its ``n_r >= 1`` rows, scaled by
        ``n_r * world / (hi - lo)`` (1 except in an uneven last batch): DDP averages the
        gradients over the ranks, so the update is exactly that of the global batch's mean
        loss. The losses are summed over the ranks during the backward pass and checked
        before the optimiser step, so a NaN on any rank stops every rank.
        """
        ctx = self.dist
        if not ctx.enabled:
            return train_step(self.model, self.optimizer, batch), hi - lo
        loss = self.model(batch)
        # the global loss is summed while this rank runs its backward pass (no extra wait)
        pending = ctx.all_sum_async([float(loss.detach()) * n_local])
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (n_local * ctx.world_size / (hi - lo))).backward()
        total = pending()[0]
        if not math.isfinite(total):  # every rank sees the same sum: all stop, none steps
            raise NonFiniteLossError(f"the training loss became {total / (hi - lo)} (some rank)")
        self.optimizer.step()
        return total / (hi - lo), hi - lo

    def _stop_early(self, state: LoopState) -> bool:
        """True (and a log line) when ``patience`` epochs passed without improvement."""
        if not (self.cfg.patience and state.bad >= self.cfg.patience):
            return False
        log.info(
            "%s: early stopping after epoch %d/%d: no improvement of %s for %d epochs "
            "(best: epoch %d)",
            self.name, state.epoch, self.epochs, self.monitor.key, state.bad,
            state.best_epoch + 1,
        )  # fmt: skip
        return True

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        of = f"{epoch + 1}/{self.epochs}"
        data, n = self._epoch_rows(epoch)
        n_steps = -(-n // cfg.batch_size)
        log.info(
            "%s epoch %s: %s examples in %s steps of %d",
            self.name, of, f"{n:,}", f"{n_steps:,}", cfg.batch_size,
        )  # fmt: skip
        self.model.train()
        t0 = last_log = time.perf_counter()
        total, seen = 0.0, 0
        bar = tqdm(
            range(n_steps),
            desc=f"{self.name} epoch {of}",
            disable=progress_disabled() or not self.dist.is_main,
            leave=False,
        )
        bounds = [(lo, min(lo + cfg.batch_size, n)) for lo in range(0, n, cfg.batch_size)]
        # with a core to spare, the next batch is built in a worker thread while this
        # step trains (numpy and torch release the GIL); one worker, so batches are built
        # in order and a stage drawing from one random stream per epoch draws as without it
        with ThreadPoolExecutor(1, thread_name_prefix="ralm-batch") as pool:
            ahead = None
            if bounds and spare_core():
                ahead = pool.submit(self._batch, data, *bounds[0])
            for step in bar:
                lo, hi = bounds[step]
                if ahead is None:
                    batch, n_local = self._batch(data, lo, hi)
                else:
                    batch, n_local = ahead.result()
                    nxt = bounds[step + 1] if step + 1 < n_steps else None
                    ahead = None if nxt is None else pool.submit(self._batch, data, *nxt)
                try:
                    value, rows = self._step(batch, n_local, lo, hi)
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(
                        f"{self.name}: {e} at epoch {of}, step {step + 1}/{n_steps}; "
                        "training stopped and nothing was saved for this epoch (check the "
                        "inputs for NaN/inf values, or lower the learning rate)"
                    ) from None
                del batch
                total += value * rows
                seen = hi
                now = time.perf_counter()
                rate = seen / max(now - t0, 1e-9)
                if not bar.disable:
                    bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{rate:,.0f}")
                elif now - last_log >= self.log_every_s:
                    last_log = now
                    log.info(
                        "%s epoch %s: step %d/%d, loss %.4f, %.0f samples/s",
                        self.name, of, step + 1, n_steps, value, rate,
                    )  # fmt: skip
        bar.close()
        secs = time.perf_counter() - t0
        return {
            "epoch": epoch + self.first_epoch,
            "steps": n_steps,
            self.loss_key: total / max(seen, 1),
            "samples_per_s": seen / max(secs, 1e-9),
            "seconds": secs,
        }

    def _check_parameters(self, epoch: int) -> None:
        for name, p in self.task.named_parameters():
            if not bool(torch.isfinite(p.detach()).all()):
                raise NonFiniteLossError(
                    f"{self.name}: parameter {name} became NaN/inf in epoch "
                    f"{epoch + 1}/{self.epochs}; nothing was saved for this epoch"
                )

    def _log_epoch(self, record: dict[str, Any], improved: bool, state: LoopState) -> None:
        parts = [f"train loss {record[self.loss_key]:.4f}"]
        parts += [f"{k} {record[k]:.4g}" for k in self.log_keys if k in record]
        log.info(
            "%s epoch %d/%d: %s, %.0f samples/s, %.1fs%s",
            self.name, state.epoch, self.epochs, ", ".join(parts), record["samples_per_s"],
            record["seconds"],
            "" if improved else f" (no improvement for {state.bad} epoch(s))",
        )  # fmt: skip
