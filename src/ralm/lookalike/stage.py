"""The stage-2 hooks of the shared trainer (:class:`LookalikeStage`): seeds and validation
sets built once, clustering and re-clustering of the transformed seeds between epochs (rank
0 under ``torchrun``, broadcast to the other ranks), the epoch's examples, the best epoch's
seed index, checkpoints and resume, and the post-hoc VALID calibration.
:func:`ralm.lookalike.train.train_lookalike` builds it and runs the loop.
"""

from __future__ import annotations

import json
import logging
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
from ralm.lookalike.item_age import first_click_times
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.prior_fit import fit_prior_weight
from ralm.lookalike.samples import (
    SeedSets,
    click_keys,
    negative_distribution,
    seed_sets,
    training_examples,
    uniform_negatives,
    validation_examples,
)
from ralm.lookalike.seed_index import SeedIndex, cluster_rows, index_from_clusters
from ralm.lookalike.seed_rows import SeedEmb, SeedRows
from ralm.lookalike.targets import TargetEmbeddings, TargetFn
from ralm.lookalike.task import LookalikeEpochData, LookalikeTrainTask, make_batch
from ralm.lookalike.user_offset import fit_user_offset
from ralm.lookalike.validation import RankingSet, build_ranking_set, ranking_recall
from ralm.training.distributed import SINGLE, DistContext
from ralm.training.trainer import LoopState, State

log = logging.getLogger(__name__)


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


def check_inputs(ds: EncodedDataset, cfg: LookalikeConfig, seed_universal: np.ndarray) -> None:
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
        # each item's first TRAIN click, recorded in the seed index (the audience prior's
        # young-item rule measures an item's age from it; 0 = no TRAIN click)
        self.first_seen, _ = first_click_times(ds)
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
        self.model.transform_layer.fit_center(self.seed_universal)  # no-op unless centred
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
            index = index_from_clusters(
                self.model, cl, self.seeds.offsets, self.ds.item_ids, first_seen=self.first_seen
            )
            rec["recall"] = ranking_recall(
                self.model, index, self.seed_universal, self.ranking, self.tc.eval_k
            )
        return rec

    def fit_prior(self, index: SeedIndex) -> dict[str, Any]:
        """Rescale the audience prior's weight on VALID's ranking (see
        :func:`ralm.lookalike.prior_fit.fit_prior_weight`) and re-save the model file when
        it changed; empty when VALID has no ranking set."""
        if self.ranking is None:
            self.ranking = build_ranking_set(
                self.ds, self.seeds, self.tc.val_max_users, self.tc.seed
            )
        if self.ranking is None:
            return {}
        got = fit_prior_weight(self.model, index, self.seed_universal, self.ranking, self.tc.eval_k)
        if got.get("prior_factor", 1.0) != 1.0 and self.out is not None:
            self.files[ckpt.MODEL_FILE] = ckpt.save_model(self.out, self.model)
            self._write_config()
        return got

    def calibrate(self, index: SeedIndex | None = None) -> dict[str, float]:
        """Post-hoc fits of the (best) model on the VALID examples: the per-user score
        baseline (``user_offset``, with ``index`` the model was selected with; see
        :mod:`ralm.lookalike.user_offset`), then Platt scaling of the pCTR.

        Sets ``scale`` / ``bias`` to the BCE fit on VALID scores (each user's ranking is
        unchanged) and returns the ECE before, the out-of-sample (2-fold cross-fitted) ECE
        of the refit, the fitted pair and the baseline's fit. Skipped (empty dict) when the
        best epoch's clusters are not in memory (a resumed run) or VALID has one class.
        """
        cl = self.best_clusters
        if cl is None or not 0 < self.vy.sum() < self.vy.size:
            return {}
        self.model.eval()
        self._drop_seed_emb()  # the last epoch's table (the best epoch's is written now)
        emb = SeedRows.of_model(self.model, self.seed_universal, self.seeds.users)
        vs = score_examples(self.model, cl, emb, self.seeds, self.v_target, self.vu, self.vi)
        offset: dict[str, float] = {}
        if self.tc.user_offset and index is not None:
            # the baseline is a mean over items drawn uniformly: fitted on VALID's clicks
            # against negatives drawn the same way (whatever neg_sampling drew above)
            click = self.vy > 0
            rng = np.random.default_rng([self.tc.seed, 1_000_033])
            nu, ni = uniform_negatives(
                self.ds, self.seeds, self.vu[click], self.tc.val_neg_ratio, rng
            )
            fu, fi = np.concatenate([self.vu[click], nu]), np.concatenate([self.vi[click], ni])
            ft = np.concatenate([self.v_target[click], self.seed_universal[nu]])
            fy = np.r_[np.ones(int(click.sum())), np.zeros(nu.size)]
            fs = score_examples(self.model, cl, emb, self.seeds, ft, fu, fi)
            offset = fit_user_offset(self.model, index, fs, ft, fy)
            with torch.no_grad():  # the fitted baseline, as every scorer subtracts it
                e = self.model.transform(torch.from_numpy(np.ascontiguousarray(self.v_target)))
                off = self.model.user_offset(e)
            if off is not None:
                vs = vs - off.numpy()
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
        return {
            "val_ece_trained": before, "val_ece": after, "calib_scale": a, "calib_bias": b,
            **offset,
        }  # fmt: skip

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
                self.model, self.clusters, self.seeds.offsets, self.ds.item_ids,
                first_seen=self.first_seen,
            ).save(out / "seed_index")  # fmt: skip
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
        state = loop_state(raw)
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
                self.model, self.best_clusters, self.seeds.offsets, self.ds.item_ids,
                first_seen=self.first_seen,
            )  # fmt: skip
        if self.best_index is not None:
            return self.best_index
        assert self.clusters is not None  # no epoch ran: the initial clustering
        return index_from_clusters(
            self.model, self.clusters, self.seeds.offsets, self.ds.item_ids,
            first_seen=self.first_seen,
        )  # fmt: skip


def loop_state(raw: dict[str, Any]) -> LoopState:
    """Loop state from ``state.json`` (also the pre-trainer layout with ``best_auc``)."""
    state = LoopState.from_json(raw)
    if "best_auc" in raw and not state.best_record:  # written before the shared trainer
        hist = state.history
        if 0 <= state.best_epoch < len(hist):
            state.best_record = dict(hist[state.best_epoch])
        auc = float(raw["best_auc"])
        state.best = auc if np.isfinite(auc) and auc >= 0 else None
    return state
