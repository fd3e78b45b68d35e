"""``ralm train lookalike``: stage 2, the look-alike model and its seed index."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from ralm.cli.options import with_settings
from ralm.config_files import Section
from ralm.errors import ConfigError
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig

if TYPE_CHECKING:
    import numpy as np

    from ralm.data.encoded import EncodedDataset
    from ralm.lookalike.targets import TargetFn
    from ralm.user.checkpoint import UserModel

log = logging.getLogger(__name__)

LOOKALIKE = Section(
    "lookalike",
    LookalikeConfig,
    flags={"use_local": ("--local",), "use_global": ("--global",)},
    skip=frozenset({"m"}),  # the stage-1 embedding dimension, read from --user-model
    computed=frozenset({"m"}),
    help={"m": "read from the stage-1 model"},
)
LOOKALIKE_TRAIN = Section("lookalike_train", LookalikeTrainConfig)


@with_settings(LOOKALIKE, LOOKALIKE_TRAIN)
def train_lookalike(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder (ralm data prepare)."),
    user_model: Path = typer.Option(
        ..., "--user-model", help="Stage-1 run folder (e.g. runs/x/user)."
    ),
    out: Path = typer.Option(..., "--out", help="Run folder for stage 2 (e.g. runs/x/lookalike)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    *,
    lookalike: LookalikeConfig,
    lookalike_train: LookalikeTrainConfig,
) -> None:
    """Train the look-alike model (stage 2): iterative k-means + attention, val AUC per epoch."""
    from ralm.cli.train_user import load_dataset, set_torch_threads
    from ralm.data.encoded import EncodedDataset
    from ralm.lookalike.train import train_lookalike as run
    from ralm.user.checkpoint import load_user_model
    from ralm.user.embed import embed_users

    set_torch_threads(lookalike_train.threads)
    ds = load_dataset(data, EncodedDataset)
    umodel = load_user_model(user_model, ds)
    log.info("embedding every user with the stage-1 model (the seed embeddings)")
    t0 = time.perf_counter()
    seed_universal = embed_users(umodel, ds)  # (n_users, m), no exclusion
    n, secs = len(seed_universal), time.perf_counter() - t0
    log.info("embedded %d users in %.1fs (%.0f users/s)", n, secs, n / max(secs, 1e-9))
    cfg = with_stage1_dim(lookalike, int(seed_universal.shape[1]), user_model)

    res = run(
        ds, cfg, seed_universal, stage1_targets(umodel, ds), out, lookalike_train, resume=resume
    )
    show_history(res.history, res.best_epoch)
    typer.echo(
        f"best val AUC {res.best_val_auc:.4f} (epoch {res.best_epoch}); "
        f"model and seed index saved to {out}"
    )


def stage1_targets(umodel: UserModel, ds: EncodedDataset) -> TargetFn:
    """``target_universal(users, exclude_items)`` of stage 2: ``embed_users`` of the
    stage-1 model (called per batch when the TRAIN positives do not fit the target cache;
    the dataset check it runs hashes the item ids once per dataset,
    :func:`ralm.user.checkpoint.dataset_item_digest`)."""
    from ralm.user.embed import embed_users

    def target_universal(users: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
        return embed_users(umodel, ds, users, exclude_items)

    return target_universal


def with_stage1_dim(cfg: LookalikeConfig, m: int, user_model: Path) -> LookalikeConfig:
    """``cfg`` with ``m`` = the stage-1 embedding dimension (a different ``m`` set in the
    config file is an error, not silently replaced)."""
    if "m" in cfg.model_fields_set and cfg.m != m:
        raise ConfigError(
            f"[lookalike] m = {cfg.m} but the stage-1 model {user_model} embeds users in {m} "
            "dimensions (leave m out: it is read from the stage-1 model)"
        )
    return cfg.model_copy(update={"m": m})  # m >= 1: an embedding dimension


def show_history(history: list[dict[str, Any]], best_epoch: int) -> None:
    """Print the per-epoch table (loss, val AUC, throughput, k-means time and inertia)."""
    table = Table(title="stage-2 training")
    cols = ["epoch", "loss", "val_auc", "samples_per_s", "kmeans_s", "inertia", "inertia_change"]
    for c in cols:
        table.add_column(c, justify="right")
    for rec in history:
        cells = []
        for c in cols:
            v = rec.get(c, "-")
            if isinstance(v, float):
                cells.append(f"{v:.4g}" if abs(v) >= 100 or math.isnan(v) else f"{v:.4f}")
            else:
                cells.append(str(v) + (" *" if c == "epoch" and v == best_epoch else ""))
        table.add_row(*cells)
    Console().print(table)
