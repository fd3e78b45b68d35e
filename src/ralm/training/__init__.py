"""One training skeleton for both stages (epochs, early stopping, resume, checkpoints).

Public API::

    TrainLoopConfig                     loop settings shared by both stages' train configs
    Trainer, TrainingStage, EpochData   the loop and the stage hooks it calls
    LoopState, Monitor                  loop counters (saved for resume), the best-epoch metric
    train_step                          one step: loss = task(batch), backward, step
    NonFiniteLossError                  raised when a loss or a weight is NaN or infinite
    torch_threads                       context manager for the thread setting

Stage 1 (:mod:`ralm.user.train`) and stage 2 (:mod:`ralm.lookalike.train`) each implement
:class:`TrainingStage`; their losses come from ``UserTrainTask`` / ``LookalikeTrainTask``.
"""

from ralm.training.config import TrainLoopConfig
from ralm.training.threads import torch_threads
from ralm.training.trainer import (
    EpochData,
    LoopState,
    Monitor,
    NonFiniteLossError,
    Trainer,
    TrainingStage,
    train_step,
)

__all__ = [
    "EpochData",
    "LoopState",
    "Monitor",
    "NonFiniteLossError",
    "TrainLoopConfig",
    "Trainer",
    "TrainingStage",
    "torch_threads",
    "train_step",
]
