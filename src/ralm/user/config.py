"""Typed configuration of stage 1: the model (:class:`UserModelConfig`) and its training
(:class:`UserTrainConfig`), with the paper's defaults written once here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ralm.training.config import TrainLoopConfig

SPARSE_AUTO_ROWS = 10_000


class UserModelConfig(BaseModel):
    """Architecture of the user tower and the item table (what a checkpoint must match).

    Defaults follow the paper (embedding dim 128, field attention) where it states them and
    the evidence does not contradict it (the merge: docs/USER_MODEL.md, "Merge").

    Args:
        dim: embedding dimension ``m`` of every field and of the universal user embedding.
        attention_units: hidden units ``a`` of the attention merge (W1 is ``m x a``).
        merge: ``attention_concat`` (default: the paper's field attention ``alpha`` gates each
            field, ``n alpha_i h_i``, and the gated fields are concatenated), ``attention``
            (the paper's merge, ``M = alpha H``: a weighted average of the fields in one
            ``m``-space) or ``concat`` (ablation, paper Fig. 5). The paper's average lost to
            both others on every data set measured (docs/USER_MODEL.md, "Merge").
        mlp_hidden: hidden layer sizes of the MLP after the merge (output is ``dim``).
        exclude_fields: dataset fields left out of the tower (ablations; a derived field
            that leaks the target, see docs/USER_MODEL.md).
        sparse_grad: how the embedding tables are built: sparse gradients + lazy Adam
            (``SparseAdam``) for the tables, dense Adam for the rest; ``None`` = on when the
            largest table has >= ``SPARSE_AUTO_ROWS`` rows. Changes no parameter shape.
    """

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(
        default=128, ge=1, description="Embedding dim m of fields and user output (paper)."
    )
    attention_units: int = Field(
        default=64, ge=1, description="Attention hidden units a (W1: m x a)."
    )
    merge: Literal["attention", "concat", "attention_concat"] = Field(
        default="attention_concat",
        description="Field merge: the paper's field attention as per-field gates on "
        "the concatenation (default), the paper's attention-weighted average, or plain "
        "concatenation.",
    )
    mlp_hidden: list[int] = Field(
        default_factory=lambda: [256], description="MLP hidden sizes after the merge."
    )
    exclude_fields: list[str] = Field(
        default_factory=list,
        description="Dataset fields left out of the tower (ablation, or a field derived from "
        "click history that contains the training target).",
    )
    sparse_grad: bool | None = Field(
        default=None,
        description="Sparse gradients + lazy Adam (SparseAdam) for embedding tables: only rows "
        "used in a step move. None = auto: on when the largest table has >= "
        "10,000 rows (5.8x faster at 43.5k items; dense Adam is faster on small tables).",
    )

    @field_validator("mlp_hidden")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError(f"mlp_hidden sizes must be >= 1, got {v}")
        return v

    def use_sparse(self, largest_table_rows: int) -> bool:
        """Whether embedding tables get sparse gradients (resolves ``sparse_grad=None``)."""
        if self.sparse_grad is None:
            return largest_table_rows >= SPARSE_AUTO_ROWS
        return self.sparse_grad

    def architecture(self) -> dict[str, object]:
        """The fields that determine parameter shapes (must match to load or resume)."""
        return {
            "dim": self.dim,
            "attention_units": self.attention_units,
            "merge": self.merge,
            "mlp_hidden": list(self.mlp_hidden),
            "exclude_fields": sorted(self.exclude_fields),
        }


class UserTrainConfig(TrainLoopConfig):
    """Stage-1 training: sampled softmax over log-uniform negatives (paper eq. 3), Adam.

    Defaults follow the paper (Adam, lr 0.001, batch 256, 10 negatives per positive, at most
    50 positives per user) where it states them, and common sampled-softmax practice where it
    is silent. The loop settings (``batch_size``, ``lr``, ``weight_decay``,
    ``steps_per_epoch``, ``max_train_examples``, ``patience``, ``seed``, ``threads``,
    ``eval_k``, ``val_max_users``) come
    from :class:`ralm.training.config.TrainLoopConfig`.

    Args:
        epochs: maximum number of epochs.
        n_negatives: sampled negatives per positive (paper: 10).
        max_pos_per_user: positives kept per user per epoch, re-drawn each epoch (paper: 50).
        remove_accidental_hits: mask negatives equal to the positive.
        logq_correction: subtract log Q(item) from sampled logits (Bengio & Senecal); on by
            default, the paper is silent.
        monitor: validation metric for early stopping and the best checkpoint.
    """

    epochs: int = Field(default=20, ge=1, description="Maximum epochs.")
    n_negatives: int = Field(default=10, ge=1, description="Negatives per positive (paper: 10).")
    max_pos_per_user: int = Field(
        default=50, ge=1, description="Positives per user per epoch (paper)."
    )
    remove_accidental_hits: bool = Field(
        default=True, description="Mask negatives equal to the positive."
    )
    logq_correction: bool = Field(
        default=True,
        description="Subtract log Q(item) from sampled logits (without it the model learns "
        "p(item|user)/Q(item), which ranks popular items too low over the full catalogue).",
    )
    monitor: Literal["recall", "loss"] = Field(
        default="recall",
        description="Validation metric for early stopping: recall@K or sampled loss.",
    )


def split_legacy_config(raw: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """Split a pre-split ``UserModelConfig`` dict into (model fields, training fields).

    Args:
        raw: a config dict that may mix model and training settings (checkpoints written
            before the split, format version 1).
    """
    model = {k: v for k, v in raw.items() if k in UserModelConfig.model_fields}
    train = {k: v for k, v in raw.items() if k in UserTrainConfig.model_fields}
    unknown = sorted(set(raw) - set(model) - set(train))
    if unknown:
        raise ValueError(f"unknown stage-1 config fields {unknown}")
    return model, train
