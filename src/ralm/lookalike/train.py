"""Stage-2 training loop: iterative k-means + gradient training (paper section 4.2.4).

Each epoch: (1) sample negatives, (2) train on (user, item, label) with leave-self-out
centroids, (3) re-transform every seed with the updated transforming layer and re-cluster
(warm-started from the previous centroids), logging k-means time and inertia change,
(4) validation AUC on VALID clicks vs sampled negatives with TRAIN seeds, (5) checkpoint,
early stopping on the AUC. Stage 1 enters only through its outputs:
``seed_universal (n_users, m)`` and ``target_universal(users, exclude_items) -> (B, m)``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from ralm.common.progress import progress_enabled
from ralm.data.encoded import EncodedDataset, Split
from ralm.errors import CheckpointError, ConfigError
from ralm.lookalike import checkpoint as ckpt
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import (
    SeedSets,
    click_keys,
    seed_sets,
    training_examples,
    validation_examples,
)
from ralm.lookalike.seed_index import (
    SeedIndex,
    cluster_for_model,
    index_from_clusters,
    transform_seeds,
)
from ralm.lookalike.targets import TargetEmbeddings, TargetFn

log = logging.getLogger(__name__)


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
    """

    model: LookalikeModel
    config: LookalikeConfig
    seed_index: SeedIndex
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = float("nan")
    recluster_calls: int = 0


def leave_self_out(
    clusters: SeedClusters,
    seed_emb: np.ndarray,
    seeds: SeedSets,
    users: np.ndarray,
    items: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example centroids (B, k, h), mask (B, k), sizes (B, k) without the target user.

    Centroids are exact means of their members, so removing seed row r of cluster j with
    n members gives ``(n c_j - e_r) / (n - 1)``; a cluster of one is masked instead.
    """
    cent = clusters.centroids[items].copy()  # (B, k, h)
    mask = clusters.mask[items].copy()  # (B, k)
    sizes = clusters.sizes[items].copy()  # (B, k)
    rows = seeds.find(users, items)  # (B,) seed row or -1
    b = np.flatnonzero(rows >= 0)
    if b.size:
        r = rows[b]
        j = clusters.assign[r]
        n = clusters.sizes[items[b], j].astype(np.float32)  # (b,)
        multi = n > 1
        bm, jm, nm = b[multi], j[multi], n[multi, None]
        cent[bm, jm] = (nm * cent[bm, jm] - seed_emb[r[multi]]) / (nm - 1)
        cent[b[~multi], j[~multi]] = 0.0
        mask[b[~multi], j[~multi]] = False
        sizes[b, j] -= 1
    return cent, mask, sizes


@torch.no_grad()
def score_examples(
    model: LookalikeModel,
    clusters: SeedClusters,
    seed_emb: np.ndarray,
    seeds: SeedSets,
    target_emb: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    batch: int = 4096,
) -> np.ndarray:
    """Raw scores (N,) of (user, item) pairs, leave-self-out applied; target_emb is (N, m)."""
    out = np.empty(users.size, dtype=np.float32)
    for lo in range(0, users.size, batch):
        sl = slice(lo, lo + batch)
        cent, mask, sizes = leave_self_out(clusters, seed_emb, seeds, users[sl], items[sl])
        e_u = model.transform(torch.from_numpy(target_emb[sl]))  # (b, h)
        c, m, n = (torch.from_numpy(a) for a in (cent, mask, sizes))
        s = model.score_pairs(e_u, c, m, sizes=n)
        out[sl] = s.numpy()
    return out


def _check_inputs(ds: EncodedDataset, cfg: LookalikeConfig, seed_universal: np.ndarray) -> None:
    if seed_universal.shape != (ds.n_users, cfg.m):
        raise ConfigError(
            f"seed_universal has shape {seed_universal.shape}, expected "
            f"(n_users={ds.n_users}, m={cfg.m}) for dataset {ds.name}"
        )


def train_lookalike(
    ds: EncodedDataset,
    cfg: LookalikeConfig,
    seed_universal: np.ndarray,
    target_universal: TargetFn,
    out_dir: str | Path | None = None,
    train_cfg: LookalikeTrainConfig | None = None,
    resume: bool = False,
) -> LookalikeTrainResult:
    """Train the look-alike model; write checkpoints to ``out_dir`` when given.

    Args:
        ds: encoded dataset (TRAIN clicks = positives and seeds, VALID = validation).
        cfg: model config (``cfg.m`` must equal the universal embedding width).
        seed_universal: float32 (n_users, m) universal embeddings without exclusion.
        target_universal: ``f(users (B,), exclude_items (B,)) -> (B, m)``; called with the
            target item excluded from the history for every positive example.
        out_dir: checkpoint folder (model, config, seed index, resumable state).
        train_cfg: loop settings (epochs, batch, lr, negatives, patience, seed).
        resume: continue from ``out_dir/train_state`` instead of starting over.
    """
    tc = train_cfg or LookalikeTrainConfig()
    seed_universal = np.ascontiguousarray(seed_universal, dtype=np.float32)
    _check_inputs(ds, cfg, seed_universal)
    out = Path(out_dir) if out_dir is not None else None
    data_meta = {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items}
    torch.manual_seed(tc.seed)
    model = LookalikeModel(cfg)
    opt = torch.optim.Adam(model.param_groups(tc.lr), lr=tc.lr)
    seeds = seed_sets(ds)
    show = progress_enabled()
    counters: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "bad": 0}
    history: list[dict[str, Any]] = []
    clusters: SeedClusters | None = None
    if resume:
        if out is None or not (out / "train_state" / "state.json").is_file():
            raise CheckpointError(f"nothing to resume: {out}/train_state/state.json not found")
        saved = ckpt.read_json(out / "config.json")
        try:  # fields added since the run started take their defaults
            same_model = LookalikeConfig(**saved.get("model", {})) == cfg
        except ValueError:
            same_model = False
        if not same_model or saved.get("data") != data_meta:
            raise CheckpointError(
                f"{out / 'config.json'} was written for another model config or dataset; "
                "resume with the same options or choose another --out"
            )
        clusters, counters = ckpt.load_train_state(out / "train_state", model, opt)
        history = list(counters.get("history", []))
        log.info("resuming %s after epoch %d", out, counters["epoch"])
    elif out is not None:
        ckpt.write_config(
            out, {"model": cfg.model_dump(), "train": tc.model_dump(), "data": data_meta}
        )

    vrng = np.random.default_rng([tc.seed, 1_000_003])
    vu, vi, vy = validation_examples(
        ds, seeds, tc.val_neg_ratio, tc.neg_sampling, vrng, tc.max_val_pos
    )
    v_target = np.asarray(target_universal(vu, np.where(vy > 0, vi, -1)), dtype=np.float32)
    pos_keys = click_keys(ds, (Split.TRAIN,))
    fits = pos_keys.size * cfg.m * 4 <= tc.target_cache_gib * 2**30
    targets = TargetEmbeddings(
        seed_universal, target_universal, ds.n_items, pos_keys if fits else None, progress=show
    )
    recluster_calls = 0

    def recluster(prev: SeedClusters | None, epoch: int) -> tuple[SeedClusters, np.ndarray]:
        nonlocal recluster_calls
        recluster_calls += 1
        model.eval()
        emb = transform_seeds(model, seed_universal, seeds.users)  # (S, h)
        new = cluster_for_model(model, emb, seeds.offsets, init=prev, seed=tc.seed + epoch)
        return new, emb

    if clusters is None:
        clusters, seed_emb = recluster(None, 0)
    else:  # the saved clusters were built from the saved weights: same embeddings
        model.eval()
        seed_emb = transform_seeds(model, seed_universal, seeds.users)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_clusters: SeedClusters | None = clusters
    best_index: SeedIndex | None = None
    if resume and out is not None and counters["best_epoch"] >= 0:
        best_state = ckpt.load_lookalike_model(out)[0].state_dict()
        best_index, best_clusters = SeedIndex.load(out / "seed_index"), None

    for epoch in range(int(counters["epoch"]), tc.epochs):
        if tc.patience and counters["bad"] >= tc.patience:
            break
        rng = np.random.default_rng([tc.seed, epoch])
        users, items, labels = training_examples(ds, seeds, tc.neg_ratio, tc.neg_sampling, rng)
        model.train()
        t0, total = time.perf_counter(), 0.0
        steps = range(0, users.size, tc.batch_size)
        for lo in tqdm(steps, desc=f"epoch {epoch}", disable=not show, leave=False):
            u, i, y = (a[lo : lo + tc.batch_size] for a in (users, items, labels))
            tu = targets(u, i, y)  # (B, m)
            cent, mask, sizes = leave_self_out(clusters, seed_emb, seeds, u, i)
            e_u = model.transform(torch.from_numpy(tu))  # (B, h)
            c, m, n = (torch.from_numpy(a) for a in (cent, mask, sizes))
            s = model.score_pairs(e_u, c, m, sizes=n)  # (B,)
            loss = F.binary_cross_entropy_with_logits(model.logit(s), torch.from_numpy(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * u.size
        train_s = time.perf_counter() - t0
        prev_inertia = clusters.inertia
        clusters, seed_emb = recluster(clusters, epoch + 1)
        model.eval()
        vs = score_examples(model, clusters, seed_emb, seeds, v_target, vu, vi)
        auc = float(roc_auc_score(vy, vs)) if 0 < vy.sum() < vy.size else float("nan")
        rec = {
            "epoch": epoch,
            "loss": total / max(users.size, 1),
            "val_auc": auc,
            "samples_per_s": users.size / max(train_s, 1e-9),
            "kmeans_s": clusters.seconds,
            "inertia": clusters.inertia,
            "inertia_change": clusters.inertia - prev_inertia,
        }
        history.append(rec)
        log.info(
            "epoch %d loss %.4f val_auc %.4f | %.0f samples/s | k-means %.2fs inertia %.4g (%+.4g)",
            epoch, rec["loss"], auc, rec["samples_per_s"], clusters.seconds,
            clusters.inertia, rec["inertia_change"],
        )  # fmt: skip
        improved = auc > counters["best_auc"] or np.isnan(auc)
        if improved:
            counters.update(best_auc=auc, best_epoch=epoch, bad=0)
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
            best_clusters = clusters
        else:
            counters["bad"] += 1
        counters["epoch"] = epoch + 1
        counters["history"] = history
        if out is not None:
            if improved:
                ckpt.save_model(out, model)
                index_from_clusters(model, clusters, seeds.offsets, ds.item_ids).save(
                    out / "seed_index"
                )
            ckpt.save_train_state(out / "train_state", model, opt, clusters, counters)
            ckpt.atomic_write_text(out / "history.json", json.dumps(history, indent=2))
        if tc.patience and counters["bad"] >= tc.patience:
            log.info("early stopping after epoch %d (best %d)", epoch, counters["best_epoch"])
            break

    model.load_state_dict(best_state)
    model.eval()
    if best_clusters is not None:
        index = index_from_clusters(model, best_clusters, seeds.offsets, ds.item_ids)
    else:
        assert best_index is not None
        index = best_index
    return LookalikeTrainResult(
        model=model,
        config=cfg,
        seed_index=index,
        history=history,
        best_epoch=int(counters["best_epoch"]),
        best_val_auc=float(counters["best_auc"]),
        recluster_calls=recluster_calls,
    )
