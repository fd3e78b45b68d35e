"""``ralm train lookalike``: stage 2, the look-alike model and its seed index."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ralm.errors import ConfigError


def train_lookalike(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder (ralm data prepare)."),
    user_model: Path = typer.Option(
        ..., "--user-model", help="Stage-1 run folder (e.g. runs/x/user)."
    ),
    out: Path = typer.Option(..., "--out", help="Run folder for stage 2 (e.g. runs/x/lookalike)."),
    k: int = typer.Option(20, "--k", help="Seed clusters per item (paper: 20)."),
    h: int = typer.Option(128, "--h", help="Transformed dimension (paper: 128)."),
    variant: str = typer.Option("ralm", "--variant", help="ralm | average (mean of seeds)."),
    local: bool = typer.Option(True, "--local/--no-local", help="Local attention term."),
    global_: bool = typer.Option(True, "--global/--no-global", help="Global attention term."),
    size_prior: bool = typer.Option(
        True, "--size-prior/--no-size-prior", help="log(cluster size) in attention logits."
    ),
    seed_prior: bool = typer.Option(
        True,
        "--seed-prior/--no-seed-prior",
        help="Learnable gamma*log(1+n_seeds) in the score (off = the paper's cosine score).",
    ),
    kmeans_backend: str = typer.Option(
        "faiss", "--kmeans-backend", help="faiss (per item) | torch (batched Lloyd)."
    ),
    epochs: int = typer.Option(10, "--epochs", help="Maximum epochs (re-cluster after each)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per step (paper: 256)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (paper: 0.001)."),
    neg_ratio: int = typer.Option(4, "--neg-ratio", help="Sampled negatives per positive."),
    neg_sampling: str = typer.Option(
        "log_uniform",
        "--neg-sampling",
        help="log_uniform (eq. 3 of the seed-count rank) | uniform | popularity.",
    ),
    loss: str = typer.Option(
        "softmax", "--loss", help="softmax (listwise over the batch's items) | bce (pointwise)."
    ),
    monitor: str = typer.Option(
        "recall", "--monitor", help="Best epoch on recall (full catalogue) | auc (sampled)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> same weights)."),
    patience: int = typer.Option(3, "--patience", help="Early-stopping patience (0 = off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    threads: int = typer.Option(1, "--threads", help="torch intra-op threads (small batches)."),
) -> None:
    """Train the look-alike model (stage 2): iterative k-means + attention, val AUC per epoch."""
    import numpy as np
    import torch

    from ralm.cli.train_user import load_dataset
    from ralm.data.encoded import EncodedDataset
    from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
    from ralm.lookalike.train import train_lookalike as run
    from ralm.user.checkpoint import load_user_model
    from ralm.user.embed import embed_users

    torch.set_num_threads(max(1, threads))
    ds = load_dataset(data, EncodedDataset)
    umodel = load_user_model(user_model, ds)
    seed_universal = embed_users(umodel, ds)  # (n_users, m), no exclusion
    try:
        cfg = LookalikeConfig(
            m=int(seed_universal.shape[1]),
            h=h,
            k=k,
            variant=variant,  # type: ignore[arg-type]
            use_local=local,
            use_global=global_,
            size_prior=size_prior,
            seed_prior=seed_prior,
            kmeans_backend=kmeans_backend,  # type: ignore[arg-type]
        )
        tc = LookalikeTrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            neg_ratio=neg_ratio,
            neg_sampling=neg_sampling,  # type: ignore[arg-type]
            loss=loss,  # type: ignore[arg-type]
            monitor=monitor,  # type: ignore[arg-type]
            patience=patience,
            seed=seed,
            threads=max(1, threads),
        )
    except ValidationError as e:
        raise ConfigError(f"invalid option: {e}") from e

    def target_universal(users: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
        return embed_users(umodel, ds, users, exclude_items)

    res = run(ds, cfg, seed_universal, target_universal, out, tc, resume=resume)
    show_history(res.history, res.best_epoch)
    typer.echo(
        f"best val AUC {res.best_val_auc:.4f} (epoch {res.best_epoch}); "
        f"model and seed index saved to {out}"
    )


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
