"""One training skeleton for both stages (epochs, early stopping, resume, checkpoints).

Public API::

    TrainLoopConfig                     loop settings shared by both stages' train configs
    Trainer, TrainingStage, EpochData   the loop and the stage hooks it calls
    LoopState, Monitor                  loop counters (saved for resume), the best-epoch metric
    train_step                          one step: loss = task(batch), backward, step
    NonFiniteLossError                  raised when a loss or a weight is NaN or infinite
    torch_threads                       context manager for the thread setting
    DistContext, distributed_run        data-parallel context under torchrun (WORLD_SIZE > 1)
    ShardableEpochData, DistributedStage  what epoch data / a stage add for DDP training

Stage 1 (:mod:`ralm.user.train`) and stage 2 (:mod:`ralm.lookalike.train`) each implement
:class:`TrainingStage`; their losses come from ``UserTrainTask`` / ``LookalikeTrainTask``.

The names are imported on first use (PEP 562): ``ralm.training.config`` (what the CLI's
``--help`` needs) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ralm.training.config import TrainLoopConfig
    from ralm.training.distributed import DistContext, distributed_run
    from ralm.training.threads import torch_threads
    from ralm.training.trainer import (
        DistributedStage,
        EpochData,
        LoopState,
        Monitor,
        NonFiniteLossError,
        ShardableEpochData,
        Trainer,
        TrainingStage,
        train_step,
    )

_EXPORTS = {
    "DistContext": "ralm.training.distributed",
    "DistributedStage": "ralm.training.trainer",
    "EpochData": "ralm.training.trainer",
    "LoopState": "ralm.training.trainer",
    "Monitor": "ralm.training.trainer",
    "NonFiniteLossError": "ralm.training.trainer",
    "ShardableEpochData": "ralm.training.trainer",
    "TrainLoopConfig": "ralm.training.config",
    "Trainer": "ralm.training.trainer",
    "TrainingStage": "ralm.training.trainer",
    "distributed_run": "ralm.training.distributed",
    "torch_threads": "ralm.training.threads",
    "train_step": "ralm.training.trainer",
}

__all__ = [
    "DistContext",
    "DistributedStage",
    "EpochData",
    "LoopState",
    "Monitor",
    "NonFiniteLossError",
    "ShardableEpochData",
    "TrainLoopConfig",
    "Trainer",
    "TrainingStage",
    "distributed_run",
    "torch_threads",
    "train_step",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
