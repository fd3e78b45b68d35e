"""Stage-1 training: :class:`~ralm.user.task.UserTrainTask` run by the shared trainer.

The loop itself (epochs, caps, early stopping, best epoch, resume, progress, non-finite
guard) is :class:`ralm.training.Trainer`; this module supplies the stage-1 parts: the
epoch's examples, the per-epoch validation (recall@K over all items and the sampled loss on
VALID), and the checkpoint files of :mod:`ralm.user.checkpoint`.

Determinism: parameters are initialised after ``torch.manual_seed(seed)``; epoch ``e``
draws its examples and negatives from ``numpy.random.default_rng([seed, e])``, so a run
resumed after epoch ``e`` continues exactly like an uninterrupted one. Under ``torchrun``
(``WORLD_SIZE > 1``, :mod:`ralm.training.distributed`) every rank draws the same epoch
examples, trains on rows ``rank::world`` with negatives from its own child stream, rank 0
validates and writes the checkpoints, and every rank resumes from the run folder.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ralm.data.encoded import EncodedDataset
from ralm.errors import CheckpointError, DataError
from ralm.training.distributed import SINGLE, DistContext, distributed_run
from ralm.training.threads import torch_threads
from ralm.training.trainer import (
    LoopState,
    Monitor,
    State,
    Trainer,
    snapshot,
    train_step,
)
from ralm.user import checkpoint as ckpt
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.examples import epoch_examples, positive_pairs
from ralm.user.optim import StageOneOptimizer
from ralm.user.sampler import LogUniformSampler
from ralm.user.task import UserEpochData, UserTrainTask
from ralm.user.tower import UserItemModel
from ralm.user.validation import ValidationSet, build_validation, popularity_recall, validate

log = logging.getLogger(__name__)

MONITORS = {"recall": Monitor("recall"), "loss": Monitor("val_loss", higher_is_better=False)}

__all__ = ["UserStage", "train_step", "train_user_model"]


class UserStage:
    """The stage-1 hooks of the shared :class:`~ralm.training.Trainer`.

    Args:
        ds: the dataset (TRAIN clicks train, VALID validates).
        cfg: model architecture.
        tc: training settings.
        task: the task being trained.
        optimizer: its optimiser.
        root: run folder, or None for an in-memory run.
        dist: data-parallel context (only rank 0 validates).
    """

    def __init__(
        self,
        ds: EncodedDataset,
        cfg: UserModelConfig,
        tc: UserTrainConfig,
        task: UserTrainTask,
        optimizer: StageOneOptimizer,
        root: Path | None,
        dist: DistContext = SINGLE,
    ) -> None:
        self.ds, self.cfg, self.tc = ds, cfg, tc
        self.task, self.optimizer, self.root = task, optimizer, root
        self.users, self.items = positive_pairs(ds)
        if self.users.size == 0:
            raise DataError(f"dataset {ds.name!r} has no positive (label > 0) TRAIN interactions")
        self.vs: ValidationSet | None = None
        if dist.is_main:  # the other ranks never validate (the Trainer broadcasts rank 0's)
            self.vs = build_validation(ds, task.sampler, tc.n_negatives, tc.val_max_users, tc.seed)
        self.pop = float("nan")
        if self.vs is not None:
            self.pop = popularity_recall(ds, self.vs, tc.eval_k)
            log.info(
                "popularity recall@%d on %d VALID users: %.4f",
                tc.eval_k, self.vs.users.size, self.pop,
            )  # fmt: skip
        self.checksums: dict[str, str] = {}
        self.gap_noted = False

    def epoch_data(self, epoch: int) -> UserEpochData:
        rng = np.random.default_rng([self.tc.seed, epoch])
        eu, ei = epoch_examples(self.users, self.items, self.tc.max_pos_per_user, rng)
        return UserEpochData(self.task, self.ds, eu, ei, rng)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        if self.vs is None:
            return {}
        rec: dict[str, Any] = validate(self.task, self.ds, self.vs, self.tc.eval_k)
        rec["popularity_recall"] = self.pop
        return rec

    def on_improved(self, epoch: int) -> None:
        return None

    def save(self, state: LoopState, improved: bool) -> None:
        if state.history:
            self._note_generalisation_gap(state.history[-1])
        if self.root is None:
            return
        net, root = self.task.net, self.root
        if improved:
            self.checksums[ckpt.MODEL_FILE] = ckpt.save_weights(net, root / ckpt.MODEL_FILE)
        self.checksums[ckpt.LAST_FILE] = ckpt.save_weights(net, root / ckpt.LAST_FILE)
        self.checksums[ckpt.STATE_FILE] = ckpt.save_train_state(
            root / ckpt.STATE_FILE, self.optimizer, state.to_json()
        )
        ckpt.save_config(
            root, self.cfg, self.ds, state.best_record, state.history, self.tc, self.checksums
        )

    def resume(self) -> tuple[LoopState, State | None]:
        root = self.root
        if root is None or not (root / ckpt.STATE_FILE).is_file():
            raise CheckpointError(f"cannot resume: {root} has no {ckpt.STATE_FILE}")
        meta = ckpt.read_config(root)
        if meta["config"].architecture() != self.cfg.architecture():
            raise CheckpointError(
                f"cannot resume {root}: architecture {meta['config'].architecture()} differs "
                f"from the requested {self.cfg.architecture()}"
            )
        digest = str(meta.get("item_digest", ""))
        ckpt.check_compatible(meta["fields"], meta["n_items"], digest, self.ds, str(root))
        files, manifest = ckpt.file_manifest(root, meta)
        ckpt.load_weights(self.task.net, root / ckpt.LAST_FILE, files.get(ckpt.LAST_FILE), manifest)
        opt_state, raw = ckpt.load_train_state(
            root / ckpt.STATE_FILE, files.get(ckpt.STATE_FILE), manifest
        )
        try:
            self.optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{root / ckpt.STATE_FILE}: optimizer state mismatch: {e}") from e
        state = _loop_state(raw)
        self.checksums = files
        best: State | None = None
        if (root / ckpt.MODEL_FILE).is_file() and state.best_epoch >= 0:
            best_task = copy.deepcopy(self.task)
            ckpt.load_weights(
                best_task.net, root / ckpt.MODEL_FILE, files.get(ckpt.MODEL_FILE), manifest
            )
            best = snapshot(best_task)
        log.info("resuming %s after epoch %d", root, state.epoch)
        return state, best

    def _note_generalisation_gap(self, rec: dict[str, Any]) -> None:
        """Say once when the training loss falls far below the validation loss, and what
        that can (truthfully) mean for this dataset's fields."""
        if self.gap_noted or "val_loss" not in rec or rec["train_loss"] >= 0.5 * rec["val_loss"]:
            return
        self.gap_noted = True
        # history-derived fields ralm knows about have the target removed (DATA.md); only a
        # user-supplied multivalent field could still carry the training target
        suspects = [
            f.name
            for f in self.ds.fields
            if f.kind == "multivalent"
            and not f.item_history
            and not f.derived_from_items
            and f.name not in self.cfg.exclude_fields
        ]
        if suspects:
            log.warning(
                "epoch %d: train loss %.3f is below half the validation loss %.3f. If one of "
                "the user fields %s was built from click history it contains the training "
                "target: leave it out with --exclude-field / UserModelConfig.exclude_fields.",
                rec["epoch"], rec["train_loss"], rec["val_loss"], suspects,
            )  # fmt: skip
        else:
            log.info(
                "epoch %d: train loss %.3f is below half the validation loss %.3f: the model "
                "fits its TRAIN clicks much better than VALID ones (overfitting); the best "
                "epoch on VALID is kept.",
                rec["epoch"], rec["train_loss"], rec["val_loss"],
            )  # fmt: skip


def _loop_state(raw: dict[str, Any]) -> LoopState:
    """Loop state from ``train_state.pt`` (also the pre-trainer layout with ``metrics``)."""
    state = LoopState.from_json(raw)
    if not state.best_record and isinstance(raw.get("metrics"), dict) and raw["metrics"]:
        state.best_record = dict(raw["metrics"])
        state.best_epoch = int(state.best_record.get("epoch", 0)) - 1
    return state


def train_user_model(
    ds: EncodedDataset,
    cfg: UserModelConfig,
    out_dir: str | Path | None = None,
    train_cfg: UserTrainConfig | None = None,
    *,
    resume: bool = False,
) -> ckpt.UserModel:
    """Train the stage-1 user model on ``ds`` (TRAIN clicks; VALID for early stopping).

    Args:
        ds: the encoded dataset.
        cfg: model architecture.
        out_dir: run folder for checkpoints (``model.safetensors`` = best epoch,
            ``config.json``, resume state); ``None`` trains in memory only.
        train_cfg: training settings (epochs, batch, lr, negatives, patience, seed, ...).
        resume: continue from the resume state in ``out_dir`` (same architecture needed).

    Returns:
        The best model (by ``train_cfg.monitor`` on VALID; the last epoch without VALID).

    Raises:
        NonFiniteLossError: the loss or a weight became NaN/inf (nothing saved for it).
        CheckpointError: ``resume`` without a (matching, intact) resume state.
    """
    tc = train_cfg or UserTrainConfig()
    root = Path(out_dir) if out_dir is not None else None
    with torch_threads(tc.threads), distributed_run() as dist:
        return _train(ds, cfg, tc, root, resume, dist)


def _train(
    ds: EncodedDataset,
    cfg: UserModelConfig,
    tc: UserTrainConfig,
    root: Path | None,
    resume: bool,
    dist: DistContext,
) -> ckpt.UserModel:
    import torch

    torch.manual_seed(tc.seed)
    net = UserItemModel(ds.fields, ds.n_items, cfg)
    sampler = LogUniformSampler(ds.n_items, ds.item_popularity_rank())
    task = UserTrainTask(net, sampler, tc)
    optimizer = StageOneOptimizer(net, tc)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        if not resume and dist.is_main and (root / ckpt.CONFIG_FILE).exists():
            log.warning("%s holds a previous run; it will be overwritten (use resume)", root)
    stage = UserStage(ds, cfg, tc, task, optimizer, root, dist)
    trainer = Trainer(
        task,
        optimizer,
        stage,
        tc,
        MONITORS[tc.monitor],
        name="stage 1",
        first_epoch=1,
        log_keys=("val_loss", "recall"),
        dist=dist,
    )
    state = trainer.fit(resume=resume)
    return ckpt.UserModel(
        tower=net.tower,
        item_embedding=net.item_embedding.weight.detach().clone(),
        config=cfg,
        train_config=tc,
        fields=list(ds.fields),
        item_digest=ckpt.item_digest(ds.item_ids),
        metrics=dict(state.best_record),
        history=list(state.history),
    )
