"""One training skeleton for both stages (epochs, early stopping, resume, checkpoints).

Public API::

    TrainLoopConfig                     loop settings shared by both stages' train configs
    Trainer, TrainingStage, LoopState   the loop and the stage hooks it calls
    NonFiniteLossError                  raised when a step's loss is NaN or infinite
    torch_threads                       context manager for the thread setting
"""
