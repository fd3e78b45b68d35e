"""Stage-1 training loop: sampled softmax over log-uniform negatives, early stopping.

Determinism: parameters are initialised after ``torch.manual_seed(seed)``; epoch ``e``
draws its examples and negatives from ``numpy.random.default_rng([seed, e])``, so a run
resumed after epoch ``e`` continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.data.batching import gather_users
from ralm.data.encoded import EncodedDataset
from ralm.errors import CheckpointError, DataError
from ralm.user import checkpoint as ckpt
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.examples import epoch_examples, positive_pairs
from ralm.user.optim import StageOneOptimizer
from ralm.user.sampled_softmax import sampled_softmax_loss
from ralm.user.sampler import LogUniformSampler
from ralm.user.tower import UserItemModel
from ralm.user.validation import build_validation, popularity_recall, validate

log = logging.getLogger(__name__)


def train_step(
    net: UserItemModel,
    optimizer: StageOneOptimizer,
    ds: EncodedDataset,
    users: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    tc: UserTrainConfig,
    sampler: LogUniformSampler,
) -> float:
    """One optimisation step on rows (user, positive, negatives); returns the loss."""
    batch = gather_users(ds, users, exclude_items=pos)  # leakage guard: target not in history
    user_vec = net(batch)  # (B, d)
    pos_q = torch.from_numpy(sampler.log_prob(pos)) if tc.logq_correction else None
    neg_q = torch.from_numpy(sampler.log_prob(neg)) if tc.logq_correction else None
    loss = sampled_softmax_loss(
        user_vec,
        net.item_embedding,
        torch.from_numpy(pos),
        torch.from_numpy(neg),
        remove_accidental_hits=tc.remove_accidental_hits,
        pos_log_q=pos_q,
        neg_log_q=neg_q,
    )
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return float(loss.detach())


def _score(metrics: dict[str, float], monitor: str) -> float:
    return metrics["recall"] if monitor == "recall" else -metrics["val_loss"]


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
        The best model (by ``tc.monitor`` on VALID; the last epoch without VALID rows).
    """
    tc = train_cfg or UserTrainConfig()
    torch.manual_seed(tc.seed)
    users, items = positive_pairs(ds)
    if users.size == 0:
        raise DataError(f"dataset {ds.name!r} has no positive (label > 0) TRAIN interactions")
    net = UserItemModel(ds.fields, ds.n_items, cfg)
    optimizer = StageOneOptimizer(net, tc)
    sampler = LogUniformSampler(ds.n_items, ds.item_popularity_rank())
    vs = build_validation(ds, sampler, tc.n_negatives, tc.val_max_users, tc.seed)
    pop = popularity_recall(ds, vs, tc.eval_k) if vs is not None else float("nan")
    if vs is not None:
        log.info("popularity recall@%d on %d VALID users: %.4f", tc.eval_k, vs.users.size, pop)
    root = Path(out_dir) if out_dir is not None else None
    loop: dict[str, Any] = {"epoch": 0, "best": None, "bad": 0, "history": [], "metrics": {}}
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        if resume:
            loop = _resume(root, net, optimizer, cfg, ds)
        elif (root / ckpt.CONFIG_FILE).exists():
            log.warning("%s holds a previous run; it will be overwritten (use resume)", root)
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    if resume and root is not None and (root / ckpt.MODEL_FILE).is_file():
        best_net = UserItemModel(ds.fields, ds.n_items, cfg)
        ckpt.load_weights(best_net, root / ckpt.MODEL_FILE)
        best_state = best_net.state_dict()

    for epoch in range(int(loop["epoch"]), tc.epochs):
        if tc.patience and loop["bad"] >= tc.patience:
            log.info("early stopping: no improvement for %d epochs", loop["bad"])
            break
        rng = np.random.default_rng([tc.seed, epoch])
        eu, ei = epoch_examples(users, items, tc.max_pos_per_user, rng)
        n_steps = -(-eu.size // tc.batch_size)
        if tc.steps_per_epoch is not None:
            n_steps = min(n_steps, tc.steps_per_epoch)
            eu, ei = eu[: n_steps * tc.batch_size], ei[: n_steps * tc.batch_size]
        net.train()
        t0, total = time.perf_counter(), 0.0
        bar = tqdm(
            range(n_steps), desc=f"epoch {epoch + 1}/{tc.epochs}", disable=progress_disabled()
        )
        for step in bar:
            lo = step * tc.batch_size
            bu, bi = eu[lo : lo + tc.batch_size], ei[lo : lo + tc.batch_size]
            neg = sampler.sample((bu.size, tc.n_negatives), rng)  # (B, K)
            loss = train_step(net, optimizer, ds, bu, bi, neg, tc, sampler)
            total += loss * bu.size
            rate = (lo + bu.size) / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:,.0f}")
        bar.close()
        secs = time.perf_counter() - t0
        rec: dict[str, float] = {
            "epoch": epoch + 1,
            "steps": n_steps,
            "train_loss": total / max(eu.size, 1),
            "samples_per_s": eu.size / max(secs, 1e-9),
            "seconds": secs,
        }
        if vs is not None:
            rec.update(validate(net, ds, vs, tc.eval_k, sampler, tc.logq_correction))
            rec["popularity_recall"] = pop
        improved = vs is None or loop["best"] is None or _score(rec, tc.monitor) > loop["best"]
        if improved:
            loop["best"] = _score(rec, tc.monitor) if vs is not None else None
            loop["bad"], loop["metrics"] = 0, rec
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            loop["bad"] += 1
        loop["epoch"] = epoch + 1
        loop["history"].append(rec)
        log.info(
            "epoch %d: train loss %.4f, %s, %.0f samples/s%s",
            epoch + 1,
            rec["train_loss"],
            ", ".join(f"{k} {rec[k]:.4f}" for k in ("val_loss", "recall") if k in rec),
            rec["samples_per_s"],
            "" if improved else f" (no improvement for {loop['bad']} epoch(s))",
        )
        _warn_if_leaking(rec, ds)
        if root is not None:
            _save_epoch(root, net, optimizer, cfg, tc, ds, loop, improved)

    net.load_state_dict(best_state)
    net.eval()
    return ckpt.UserModel(
        tower=net.tower,
        item_embedding=net.item_embedding.weight.detach().clone(),
        config=cfg,
        train_config=tc,
        fields=list(ds.fields),
        item_digest=ckpt.item_digest(ds.item_ids),
        metrics=dict(loop["metrics"]),
        history=list(loop["history"]),
    )


def _warn_if_leaking(rec: dict[str, float], ds: EncodedDataset) -> None:
    """Warn when the training loss is far below the validation loss (sampled, same K)."""
    if "val_loss" in rec and rec["train_loss"] < 0.5 * rec["val_loss"]:
        others = [f.name for f in ds.fields if f.kind == "multivalent" and not f.item_history]
        log.warning(
            "train loss %.3f is far below validation loss %.3f: overfitting, or a user field "
            "derived from click history that contains the training target (only the "
            "item-history field has the target removed). Candidates: %s; try "
            "--exclude-field / UserModelConfig.exclude_fields.",
            rec["train_loss"],
            rec["val_loss"],
            others or "none",
        )


def _save_epoch(
    root: Path,
    net: UserItemModel,
    optimizer: StageOneOptimizer,
    cfg: UserModelConfig,
    tc: UserTrainConfig,
    ds: EncodedDataset,
    loop: dict[str, Any],
    improved: bool,
) -> None:
    if improved:
        ckpt.save_weights(net, root / ckpt.MODEL_FILE)
    ckpt.save_weights(net, root / ckpt.LAST_FILE)
    ckpt.save_train_state(root / ckpt.STATE_FILE, optimizer, loop)
    ckpt.save_config(root, cfg, ds, loop["metrics"], loop["history"], tc)


def _resume(
    root: Path,
    net: UserItemModel,
    optimizer: StageOneOptimizer,
    cfg: UserModelConfig,
    ds: EncodedDataset,
) -> dict[str, Any]:
    if not (root / ckpt.STATE_FILE).is_file():
        raise CheckpointError(f"cannot resume: {root} has no {ckpt.STATE_FILE}")
    meta = ckpt.read_config(root)
    if meta["config"].architecture() != cfg.architecture():
        raise CheckpointError(
            f"cannot resume {root}: architecture {meta['config'].architecture()} differs "
            f"from the requested {cfg.architecture()}"
        )
    digest = str(meta.get("item_digest", ""))
    ckpt.check_compatible(meta["fields"], meta["n_items"], digest, ds, str(root))
    ckpt.load_weights(net, root / ckpt.LAST_FILE)
    opt_state, loop = ckpt.load_train_state(root / ckpt.STATE_FILE)
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{root / ckpt.STATE_FILE}: optimizer state mismatch: {e}") from e
    log.info("resuming %s after epoch %d", root, loop["epoch"])
    return loop
