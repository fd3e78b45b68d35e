"""Stage-2 training: iterative k-means + gradient training (paper section 4.2.4).

The loop (epochs, caps, early stopping, best epoch, resume, progress, non-finite guard) is
:class:`ralm.training.Trainer` running :class:`~ralm.lookalike.task.LookalikeTrainTask`;
the stage-2 parts are :class:`~ralm.lookalike.stage.LookalikeStage`. Each epoch: (1) sample
negatives, (2) train on (user, item, label) with leave-self-out centroids, (3) between
epochs, re-transform every seed with the updated transforming layer and re-cluster
(warm-started from the previous centroids), logging k-means time and inertia change,
(4) validation AUC (``ralm.evaluation.metrics.auc``) on VALID clicks vs sampled negatives
with TRAIN seeds, (5) checkpoint, early stopping on the AUC. Under ``torchrun``
(:mod:`ralm.training.distributed`) every rank trains on its shard of the epoch's examples,
rank 0 alone clusters, re-clusters and validates, and its clusters (and the transformed
seeds they were built from) are broadcast to every rank before the next epoch. Stage 1
enters only through its outputs: ``seed_universal (n_users, m)`` and
``target_universal(users, exclude_items) -> (B, m)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.data.encoded import EncodedDataset
from ralm.errors import CheckpointError, ConfigError
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.finetune import TowerEncoder
from ralm.lookalike.item_age import with_young_age
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import SeedIndex
from ralm.lookalike.stage import LookalikeStage, check_inputs, score_examples
from ralm.lookalike.targets import TargetFn
from ralm.lookalike.task import (
    LookalikeTrainTask,
    leave_self_out,
)
from ralm.training.distributed import distributed_run
from ralm.training.optim import dense_adam
from ralm.training.threads import torch_threads
from ralm.training.trainer import Monitor, Trainer

log = logging.getLogger(__name__)

MONITORS = {"auc": Monitor("val_auc"), "recall": Monitor("recall")}

__all__ = [
    "LookalikeStage",
    "LookalikeTrainResult",
    "leave_self_out",
    "score_examples",
    "train_lookalike",
]


@dataclass
class LookalikeTrainResult:
    """Outcome of :func:`train_lookalike`.

    Attributes:
        model: the best model (eval mode).
        config: its model config.
        seed_index: seed index of the best epoch.
        history: one dict per epoch (loss, val_auc, kmeans_s, inertia, samples_per_s, ...).
        best_epoch: epoch of the best validation AUC (0-based).
        best_val_auc: that AUC.
        recluster_calls: how many times the seeds were re-clustered.
        calibration: post-hoc calibration on VALID (``val_ece_trained``, ``val_ece`` out of
            sample after the refit, ``calib_scale``, ``calib_bias``; with ``user_offset``
            also ``user_offset_weight``, ``val_auc_raw``, ``val_auc_offset``, see
            :mod:`ralm.lookalike.user_offset`); empty when skipped.
        universal: with ``finetune_user``, float32 (n_users, m) universal embeddings of the
            tuned tower (best epoch) the seed index was built from; None otherwise.
        prior_fit: the audience-prior weight chosen on VALID's ranking
            (``prior_factor``, ``gamma_trained``, ``gamma``, ``recall_by_factor``); empty
            when skipped (``fit_prior`` off, no additive prior, no ranking set).
    """

    model: LookalikeModel
    config: LookalikeConfig
    seed_index: SeedIndex
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = float("nan")
    recluster_calls: int = 0
    calibration: dict[str, float] = field(default_factory=dict)
    prior_fit: dict[str, Any] = field(default_factory=dict)
    universal: np.ndarray | None = None


def train_lookalike(
    ds: EncodedDataset,
    cfg: LookalikeConfig,
    seed_universal: np.ndarray,
    target_universal: TargetFn,
    out_dir: str | Path | None = None,
    train_cfg: LookalikeTrainConfig | None = None,
    resume: bool = False,
    user_encoder: TowerEncoder | None = None,
) -> LookalikeTrainResult:
    """Train the look-alike model; write checkpoints to ``out_dir`` when given.

    Args:
        ds: encoded dataset (TRAIN clicks = positives and seeds, VALID = validation).
        cfg: model config (``cfg.m`` must equal the universal embedding width).
        seed_universal: float32 (n_users, m) universal embeddings without exclusion.
        target_universal: ``f(users (B,), exclude_items (B,)) -> (B, m)``; called with the
            target item excluded from the history for every positive example.
        out_dir: checkpoint folder (model, config, seed index, resumable state).
        train_cfg: loop settings (epochs, caps, batch, lr, negatives, patience, seed, ...).
        resume: continue from ``out_dir/train_state`` instead of starting over.
        user_encoder: the stage-1 tower bound to ``ds``, trained in place when
            ``train_cfg.finetune_user`` (required then; pass a copy to keep the original).
            ``seed_universal`` / ``target_universal`` must come from the same tower.

    Raises:
        NonFiniteLossError: the loss or a weight became NaN/inf (nothing saved for it).
        CheckpointError: ``resume`` without a (matching, intact) resume state.
        ConfigError: ``finetune_user`` without ``user_encoder``, or with ``out_dir``,
            ``resume`` or ``torchrun`` (the tuned tower is not checkpointed).
    """
    tc = train_cfg or LookalikeTrainConfig()
    encoder = user_encoder if tc.finetune_user else None
    if tc.finetune_user and (user_encoder is None or out_dir is not None or resume):
        raise ConfigError(
            "finetune_user: stage 2 needs the stage-1 tower (user_encoder) and is in-memory "
            "only (no out_dir / resume: the tuned tower is not checkpointed); use it through "
            "the Python API or `ralm evaluate`"
        )
    seed_universal = np.ascontiguousarray(seed_universal, dtype=np.float32)
    check_inputs(ds, cfg, seed_universal)
    cfg = with_young_age(cfg, ds)  # the young-item rule's age, from TRAIN's click times
    out = Path(out_dir) if out_dir is not None else None
    if resume and (out is None or not (out / "train_state" / "state.json").is_file()):
        raise CheckpointError(f"nothing to resume: {out}/train_state/state.json not found")
    with torch_threads(tc.threads), distributed_run() as dist:
        torch.manual_seed(tc.seed)
        model = LookalikeModel(cfg)
        if encoder is not None and dist.enabled:
            raise ConfigError("finetune_user is not supported under torchrun (one process)")
        task = LookalikeTrainTask(
            model,
            loss=tc.loss,
            calib_weight=tc.calib_weight,
            user_encoder=encoder,
            matmul_dtype=resolve_matmul_dtype(tc.matmul_dtype),
        )
        groups = model.param_groups(tc.lr)
        if encoder is not None:
            groups.append({"params": list(encoder.parameters()), "lr": tc.lr * tc.finetune_lr_mult})
        opt = dense_adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        stage = LookalikeStage(
            ds, cfg, tc, task, opt, seed_universal, target_universal, out, dist, encoder=encoder
        )
        if not resume and dist.is_main:
            stage.start()
        dist.barrier()  # config.json exists before any rank trains
        trainer = Trainer(
            task,
            opt,
            stage,
            tc,
            MONITORS[tc.monitor],
            name="stage 2",
            first_epoch=0,
            loss_key="loss",
            log_keys=("val_auc", "recall"),
            dist=dist,
        )
        state = trainer.fit(resume=resume)
        if stage.clusters is None:  # epochs already done before the resume
            stage.recluster(None, 0)
        stage.refresh_universal()  # the best epoch's tower (the best clusters' embeddings)
        index = stage.best_seed_index()
        prior_fit = stage.fit_prior(index) if tc.fit_prior else {}
        calib = stage.calibrate(index) if tc.calibrate == "valid" else {}
    return LookalikeTrainResult(
        model=model,
        config=cfg,
        seed_index=index,
        history=list(state.history),
        best_epoch=int(state.best_epoch),
        best_val_auc=float(state.best_record.get("val_auc", float("nan"))),
        recluster_calls=stage.recluster_calls,
        calibration=calib,
        prior_fit=prior_fit,
        universal=stage.seed_universal if encoder is not None else None,
    )


def native_bf16() -> bool:
    """Whether this CPU runs bfloat16 products natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a torch build without the probe
        return False


def resolve_matmul_dtype(name: str) -> torch.dtype:
    """``[lookalike_train] matmul_dtype`` as a torch dtype: "auto" is bfloat16 where the CPU
    has it natively, else float32; "bfloat16" without native support warns (it runs, through
    an emulation slower than float32)."""
    if name == "float32":
        return torch.float32
    native = native_bf16()
    if name == "auto" and not native:
        log.info("stage 2: float32 products (matmul_dtype auto: no native bf16 on this CPU)")
        return torch.float32
    if not native:
        log.warning(
            "matmul_dtype bfloat16: this CPU has no native bf16 dot products (AVX512-BF16 / "
            "AMX); the products are emulated and slower than float32"
        )
    else:
        log.info("stage 2: bfloat16 inputs to the two large products (matmul_dtype %s)", name)
    return torch.bfloat16
