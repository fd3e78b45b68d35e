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
"""

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
