"""Loop settings shared by the stage-1 and stage-2 training configs (written once here).

``UserTrainConfig`` (:mod:`ralm.user.config`) and ``LookalikeTrainConfig``
(:mod:`ralm.lookalike.config`) derive from :class:`TrainLoopConfig`; each adds its own
``epochs`` default, ``monitor`` choices and stage-specific sampling settings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainLoopConfig(BaseModel):
    """Settings of the training loop itself (paper: Adam, lr 0.001, batch 256).

    Args:
        epochs: maximum number of epochs (each stage's config sets its own default).
        batch_size: examples per optimisation step.
        lr: Adam learning rate.
        weight_decay: Adam L2 weight decay (dense parameters only in stage 1).
        steps_per_epoch: optional cap on optimisation steps per epoch (examples are
            re-drawn every epoch, so a capped epoch sees a fresh random subset).
        max_train_examples: optional cap on training examples per epoch (same effect as
            ``steps_per_epoch``, stated in examples; the smaller cap wins).
        patience: epochs without improvement of the monitored validation metric before
            stopping (0 = never stop early).
        seed: seed of every random draw (initialisation, examples, negatives, k-means).
        threads: torch intra-op CPU threads while training (0 = leave torch's setting).
            The setting is restored when training returns.
        eval_k: cut-off K of the validation recall@K (full-catalogue ranking).
        val_max_users: at most this many VALID users ranked per epoch (seeded subset).
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(ge=1, description="Maximum epochs.")
    batch_size: int = Field(default=256, ge=1, description="Examples per step (paper: 256).")
    lr: float = Field(default=1e-3, gt=0.0, description="Adam learning rate (paper: 0.001).")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Adam L2 weight decay.")
    steps_per_epoch: int | None = Field(
        default=None,
        ge=1,
        description="Cap on optimisation steps per epoch (None = all examples); validation "
        "and checkpoints then come every that many steps on very large data.",
    )
    max_train_examples: int | None = Field(
        default=None,
        ge=1,
        description="Cap on training examples per epoch (None = all; a fresh random subset "
        "every epoch).",
    )
    patience: int = Field(
        default=3, ge=0, description="Early-stopping patience in epochs (0 = off)."
    )
    seed: int = Field(
        default=0, description="Seed of initialisation, example selection, negatives, k-means."
    )
    threads: int = Field(
        default=1,
        ge=0,
        description="torch CPU threads while training (0 = torch's default). One thread is "
        "fastest for batches of a few hundred rows and never spin-waits on a shared host.",
    )

    eval_k: int = Field(default=50, ge=1, description="K of validation recall@K.")
    val_max_users: int = Field(default=5000, ge=1, description="Max VALID users ranked per epoch.")

    def examples_cap(self) -> int | None:
        """The per-epoch example cap implied by ``steps_per_epoch`` and ``max_train_examples``."""
        caps = [c for c in (self.max_train_examples,) if c is not None]
        if self.steps_per_epoch is not None:
            caps.append(self.steps_per_epoch * self.batch_size)
        return min(caps) if caps else None
