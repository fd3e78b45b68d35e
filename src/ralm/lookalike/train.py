"""Stage-2 training: iterative k-means + gradient training (paper section 4.2.4).

The loop (epochs, caps, early stopping, best epoch, resume, progress, non-finite guard) is
:class:`ralm.training.Trainer` running :class:`~ralm.lookalike.task.LookalikeTrainTask`;
this module supplies the stage-2 parts (:class:`LookalikeStage`). Each epoch: (1) sample
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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.common.progress import progress_enabled
from ralm.data.encoded import EncodedDataset, Split
from ralm.errors import CheckpointError, ConfigError
from ralm.evaluation import metrics
from ralm.lookalike import checkpoint as ckpt
from ralm.lookalike.calibration import cross_fitted_ece, expected_calibration_error, fit_platt
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.finetune import TowerEncoder
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import (
    SeedSets,
    click_keys,
    negative_distribution,
    seed_sets,
    training_examples,
    validation_examples,
)
from ralm.lookalike.seed_index import SeedIndex, cluster_rows, index_from_clusters
from ralm.lookalike.seed_rows import SeedEmb, SeedRows
from ralm.lookalike.targets import TargetEmbeddings, TargetFn
from ralm.lookalike.task import (
    LookalikeEpochData,
    LookalikeTrainTask,
    leave_self_out,
    make_batch,
)
from ralm.lookalike.validation import RankingSet, build_ranking_set, ranking_recall
from ralm.training.distributed import SINGLE, DistContext, distributed_run
from ralm.training.threads import torch_threads
from ralm.training.trainer import LoopState, Monitor, State, Trainer

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
            sample after the refit, ``calib_scale``, ``calib_bias``); empty when skipped.
        universal: with ``finetune_user``, float32 (n_users, m) universal embeddings of the
            tuned tower (best epoch) the seed index was built from; None otherwise.
    """

    model: LookalikeModel
    config: LookalikeConfig
    seed_index: SeedIndex
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = float("nan")
    recluster_calls: int = 0
    calibration: dict[str, float] = field(default_factory=dict)
    universal: np.ndarray | None = None


@torch.no_grad()
def score_examples(
    model: LookalikeModel,
    clusters: SeedClusters,
    seed_emb: SeedEmb,
    seeds: SeedSets,
    target_emb: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    batch: int = 4096,
) -> np.ndarray:
    """Raw scores (N,) of (user, item) pairs, leave-self-out applied; target_emb is (N, m)."""
    task = LookalikeTrainTask(model)
    out = np.empty(users.size, dtype=np.float32)
    labels = np.zeros(users.size, dtype=np.float32)  # unused by the scores
    for lo in range(0, users.size, batch):
        sl = slice(lo, lo + batch)
        b = make_batch(clusters, seed_emb, seeds, target_emb[sl], users[sl], items[sl], labels[sl])
        out[sl] = task.scores(b).numpy()
    return out


def _check_inputs(ds: EncodedDataset, cfg: LookalikeConfig, seed_universal: np.ndarray) -> None:
    if seed_universal.shape != (ds.n_users, cfg.m):
        raise ConfigError(
            f"seed_universal has shape {seed_universal.shape}, expected "
            f"(n_users={ds.n_users}, m={cfg.m}) for dataset {ds.name}"
        )


class LookalikeStage:
    """The stage-2 hooks of the shared :class:`~ralm.training.Trainer`.

    Args:
        ds: encoded dataset.
        cfg: model config.
        tc: training settings.
        task: the task (wraps the model).
        optimizer: Adam over the model's parameter groups.
        seed_universal: float32 (n_users, m) universal embeddings without exclusion.
        target_universal: stage-1 embeddings with an item excluded.
        out: run folder or None.
        dist: data-parallel context (rank 0 clusters; :meth:`sync_epoch` shares them).
        encoder: the fine-tuned user tower (``finetune_user``): targets are embedded in the
            task's graph and every user is re-embedded before each re-clustering.
    """

    def __init__(
        self,
        ds: EncodedDataset,
        cfg: LookalikeConfig,
        tc: LookalikeTrainConfig,
        task: LookalikeTrainTask,
        optimizer: torch.optim.Optimizer,
        seed_universal: np.ndarray,
        target_universal: TargetFn,
        out: Path | None,
        dist: DistContext = SINGLE,
        encoder: TowerEncoder | None = None,
    ) -> None:
        self.ds, self.cfg, self.tc, self.out, self.dist = ds, cfg, tc, out, dist
        self.encoder = encoder
        self.task, self.model, self.optimizer = task, task.model, optimizer
        self.seed_universal = seed_universal
        self.data_meta = {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items}
        self.seeds = seed_sets(ds)
        show = progress_enabled()
        vrng = np.random.default_rng([tc.seed, 1_000_003])
        self.vu, self.vi, self.vy = validation_examples(
            ds, self.seeds, tc.val_neg_ratio, tc.neg_sampling, vrng, tc.max_val_pos
        )
        self.v_exclude = np.where(self.vy > 0, self.vi, -1)
        self.v_target = np.asarray(target_universal(self.vu, self.v_exclude), dtype=np.float32)
        pos_keys = click_keys(ds, (Split.TRAIN,))
        fits = pos_keys.size * cfg.m * 4 <= tc.target_cache_gib * 2**30 and encoder is None
        self.targets = TargetEmbeddings(
            seed_universal, target_universal, ds.n_items, pos_keys if fits else None, progress=show
        )
        self.ranking: RankingSet | None = None
        if tc.monitor == "recall":
            self.ranking = build_ranking_set(ds, self.seeds, tc.val_max_users, tc.seed)
        self.clusters: SeedClusters | None = None
        # the transformed seed rows the clusters were built from (leave-self-out reads a
        # few per batch): an (S, h) table kept on disk, not in memory (SeedRows;
        # docs/LOOKALIKE.md, "Stage-2 memory")
        self.seed_emb: SeedEmb = np.zeros((0, cfg.h), dtype=np.float32)
        self.best_clusters: SeedClusters | None = None
        self.best_index: SeedIndex | None = None
        self.recluster_calls = 0
        self.files: dict[str, str] = {}

    def start(self) -> None:
        """A fresh run: write ``config.json`` (no model file yet)."""
        if self.out is not None:
            self._write_config()

    def _write_config(self) -> None:
        assert self.out is not None
        ckpt.write_config(
            self.out,
            {
                "model": self.cfg.model_dump(),
                "train": self.tc.model_dump(),
                "data": self.data_meta,
                "files": self.files,
            },
        )

    def recluster(self, prev: SeedClusters | None, epoch: int) -> None:
        """Re-transform every seed with the current weights and re-cluster them (with a
        fine-tuned tower, every user is re-embedded first)."""
        self.recluster_calls += 1
        self._drop_seed_emb()  # the old table goes before the new one is written
        self.refresh_universal()
        if prev is None:
            log.info(
                "stage 2: clustering %s seeds of %s items (k=%d)",
                f"{self.seeds.users.size:,}", f"{self.seeds.n_items:,}", self.cfg.n_clusters,
            )  # fmt: skip
        self.model.eval()
        rows = SeedRows.of_model(self.model, self.seed_universal, self.seeds.users)
        # chunk by chunk of items: the whole (S, h) table never exists
        self.clusters = cluster_rows(
            self.model, rows, self.seeds.offsets, init=prev, seed=self.tc.seed + epoch
        )
        self.seed_emb = rows

    def _drop_seed_emb(self) -> None:
        old, self.seed_emb = self.seed_emb, np.zeros((0, self.cfg.h), dtype=np.float32)
        if isinstance(old, SeedRows):
            old.close()

    def refresh_universal(self) -> None:
        """Re-embed every user (and the VALID targets) with the fine-tuned tower; no-op
        when stage 1 is frozen."""
        if self.encoder is None:
            return
        self.seed_universal = self.encoder.embed_all()  # (n_users, m)
        self.v_target = self.encoder.embed(self.vu, self.v_exclude)  # (V, m)

    def sync_epoch(self, epoch: int, ctx: DistContext) -> None:
        """Every rank gets rank 0's clusters of the next epoch (after its re-clustering)."""
        self._share_clusters()

    def _share_clusters(self) -> None:
        """Broadcast rank 0's clusters, transformed seeds and re-cluster count."""
        if not self.dist.enabled:
            return
        emb: SeedEmb | None = None  # the other ranks get rank 0's table, in memory
        if self.dist.is_main:
            emb = self.seed_emb.table() if isinstance(self.seed_emb, SeedRows) else self.seed_emb
        mine = (self.clusters, emb, self.recluster_calls)
        self.clusters, emb, self.recluster_calls = self.dist.broadcast(mine)
        if not self.dist.is_main and emb is not None:
            self.seed_emb = emb

    def epoch_data(self, epoch: int) -> LookalikeEpochData:
        if self.clusters is None:
            if self.dist.is_main:
                self.recluster(None, 0)
            self._share_clusters()
        assert self.clusters is not None
        rng = np.random.default_rng([self.tc.seed, epoch])
        tc = self.tc
        users, items, labels = training_examples(
            self.ds, self.seeds, tc.neg_ratio, tc.neg_sampling, rng
        )
        return LookalikeEpochData(
            self.clusters, self.seed_emb, self.seeds, self.targets, users, items, labels,
            item_log_q=self.item_log_q(), with_users=self.encoder is not None,
        )  # fmt: skip

    def item_log_q(self) -> np.ndarray | None:
        """logQ correction of the softmax loss: log of each item's expected copies in a
        batch, ``B (f_pos pop_i + f_neg q_i)`` (clicked items come by popularity, the
        negatives from ``neg_sampling``); None for the BCE loss."""
        tc = self.tc
        if tc.loss != "softmax":
            return None
        counts = self.seeds.counts.astype(np.float64)
        pop = counts / max(counts.sum(), 1.0)
        neg = negative_distribution(self.ds, self.seeds, tc.neg_sampling)
        f_pos = 1.0 / (1.0 + tc.neg_ratio)
        expected = tc.batch_size * (f_pos * pop + (1.0 - f_pos) * neg)
        if not tc.logq:  # no correction: a constant log Q cancels in the softmax
            return np.zeros(counts.size)
        return np.log(np.maximum(expected, 1e-30))

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        assert self.clusters is not None
        prev_inertia = self.clusters.inertia
        self.recluster(self.clusters, epoch + 1)
        cl = self.clusters
        assert cl is not None
        self.model.eval()
        vs = score_examples(
            self.model, cl, self.seed_emb, self.seeds, self.v_target, self.vu, self.vi
        )
        auc = metrics.auc(self.vy, vs) if 0 < self.vy.sum() < self.vy.size else float("nan")
        with torch.no_grad():
            p = self.model.pctr(torch.from_numpy(vs)).numpy()
        ece = expected_calibration_error(self.vy, p)
        log.info(
            "stage 2 after epoch %d: k-means %.2fs, inertia %.4g (%+.4g), val_auc %.4f, "
            "val_ece %.4f",
            epoch + 1, cl.seconds, cl.inertia, cl.inertia - prev_inertia, auc, ece,
        )  # fmt: skip
        rec: dict[str, Any] = {
            "val_auc": auc,
            "val_ece": ece,
            "kmeans_s": cl.seconds,
            "inertia": cl.inertia,
            "inertia_change": cl.inertia - prev_inertia,
        }
        if self.ranking is not None:
            index = index_from_clusters(self.model, cl, self.seeds.offsets, self.ds.item_ids)
            rec["recall"] = ranking_recall(
                self.model, index, self.seed_universal, self.ranking, self.tc.eval_k
            )
        return rec

    def calibrate(self) -> dict[str, float]:
        """Post-hoc Platt scaling of the (best) model's pCTR on the VALID examples.

        Sets ``scale`` / ``bias`` to the BCE fit on VALID scores (the score, hence every
        ranking, is unchanged) and returns the ECE before, the out-of-sample (2-fold
        cross-fitted) ECE of the refit, and the fitted pair. Skipped (empty dict) when the
        best epoch's clusters are not in memory (a resumed run) or VALID has one class.
        """
        cl = self.best_clusters
        if cl is None or not 0 < self.vy.sum() < self.vy.size:
            return {}
        self.model.eval()
        self._drop_seed_emb()  # the last epoch's table (the best epoch's is written now)
        emb = SeedRows.of_model(self.model, self.seed_universal, self.seeds.users)
        vs = score_examples(self.model, cl, emb, self.seeds, self.v_target, self.vu, self.vi)
        emb.close()
        with torch.no_grad():
            before = expected_calibration_error(
                self.vy, self.model.pctr(torch.from_numpy(vs)).numpy()
            )
        after = cross_fitted_ece(vs, self.vy)
        a, b = fit_platt(vs, self.vy)
        with torch.no_grad():
            self.model.scale.fill_(a)
            self.model.bias.fill_(b)
        log.info(
            "stage 2: pCTR recalibrated on VALID (scale %.3f, bias %.3f): ECE %.4f -> %.4f "
            "(out of sample)", a, b, before, after,
        )  # fmt: skip
        if self.out is not None:
            self.files[ckpt.MODEL_FILE] = ckpt.save_model(self.out, self.model)
            self._write_config()
        return {"val_ece_trained": before, "val_ece": after, "calib_scale": a, "calib_bias": b}

    def on_improved(self, epoch: int) -> None:
        self.best_clusters, self.best_index = self.clusters, None

    def save(self, state: LoopState, improved: bool) -> None:
        out = self.out
        if out is None:
            return
        assert self.clusters is not None
        if improved:
            self.files[ckpt.MODEL_FILE] = ckpt.save_model(out, self.model)
            index_from_clusters(
                self.model, self.clusters, self.seeds.offsets, self.ds.item_ids
            ).save(out / "seed_index")
            self._write_config()
        ckpt.save_train_state(
            out / "train_state", self.model, self.optimizer, self.clusters, state.to_json()
        )
        ckpt.atomic_write_text(out / "history.json", json.dumps(state.history, indent=2))

    def resume(self) -> tuple[LoopState, State | None]:
        out = self.out
        if out is None or not (out / "train_state" / "state.json").is_file():
            raise CheckpointError(f"nothing to resume: {out}/train_state/state.json not found")
        saved = ckpt.read_json(out / "config.json")
        try:  # fields added since the run started take their defaults
            same_model = LookalikeConfig(**saved.get("model", {})) == self.cfg
        except ValueError:
            same_model = False
        if not same_model or saved.get("data") != self.data_meta:
            raise CheckpointError(
                f"{out / 'config.json'} was written for another model config or dataset; "
                "resume with the same options or choose another --out"
            )
        files = saved.get("files")
        self.files = dict(files) if isinstance(files, dict) else {}
        clusters, raw = ckpt.load_train_state(out / "train_state", self.model, self.optimizer)
        state = _loop_state(raw)
        # the saved clusters were built from the saved weights: same embeddings
        self.clusters = clusters
        self.model.eval()
        self.seed_emb = SeedRows.of_model(self.model, self.seed_universal, self.seeds.users)
        best: State | None = None
        if state.best_epoch >= 0:
            best_model, _ = ckpt.load_lookalike_model(out)
            best = {f"model.{k}": v for k, v in best_model.state_dict().items()}
            self.best_index, self.best_clusters = SeedIndex.load(out / "seed_index"), None
        log.info("resuming %s after epoch %d", out, state.epoch)
        return state, best

    def best_seed_index(self) -> SeedIndex:
        """Seed index of the best epoch (built from its clusters, or the saved one)."""
        if self.best_clusters is not None:
            return index_from_clusters(
                self.model, self.best_clusters, self.seeds.offsets, self.ds.item_ids
            )
        if self.best_index is not None:
            return self.best_index
        assert self.clusters is not None  # no epoch ran: the initial clustering
        return index_from_clusters(self.model, self.clusters, self.seeds.offsets, self.ds.item_ids)


def _loop_state(raw: dict[str, Any]) -> LoopState:
    """Loop state from ``state.json`` (also the pre-trainer layout with ``best_auc``)."""
    state = LoopState.from_json(raw)
    if "best_auc" in raw and not state.best_record:  # written before the shared trainer
        hist = state.history
        if 0 <= state.best_epoch < len(hist):
            state.best_record = dict(hist[state.best_epoch])
        auc = float(raw["best_auc"])
        state.best = auc if np.isfinite(auc) and auc >= 0 else None
    return state


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
    _check_inputs(ds, cfg, seed_universal)
    out = Path(out_dir) if out_dir is not None else None
    if resume and (out is None or not (out / "train_state" / "state.json").is_file()):
        raise CheckpointError(f"nothing to resume: {out}/train_state/state.json not found")
    with torch_threads(tc.threads), distributed_run() as dist:
        torch.manual_seed(tc.seed)
        model = LookalikeModel(cfg)
        if encoder is not None and dist.enabled:
            raise ConfigError("finetune_user is not supported under torchrun (one process)")
        task = LookalikeTrainTask(
            model, loss=tc.loss, calib_weight=tc.calib_weight, user_encoder=encoder
        )
        groups = model.param_groups(tc.lr)
        if encoder is not None:
            groups.append({"params": list(encoder.parameters()), "lr": tc.lr * tc.finetune_lr_mult})
        opt = torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
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
        calib = stage.calibrate() if tc.calibrate == "valid" else {}
    return LookalikeTrainResult(
        model=model,
        config=cfg,
        seed_index=index,
        history=list(state.history),
        best_epoch=int(state.best_epoch),
        best_val_auc=float(state.best_record.get("val_auc", float("nan"))),
        recluster_calls=stage.recluster_calls,
        calibration=calib,
        universal=stage.seed_universal if encoder is not None else None,
    )
