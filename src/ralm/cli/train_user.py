"""``ralm train user``: stage 1, the universal user embedding model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ralm.errors import ConfigError


def train_user(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder (ralm data prepare)."),
    out: Path = typer.Option(..., "--out", help="Run folder for checkpoints (e.g. runs/x/user)."),
    epochs: int = typer.Option(20, "--epochs", help="Maximum epochs."),
    steps_per_epoch: int | None = typer.Option(
        None, "--steps-per-epoch", help="Cap steps per epoch (validate more often on big data)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", help="Rows per step (paper: 256)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (paper: 0.001)."),
    dim: int = typer.Option(128, "--dim", help="Embedding dimension (paper: 128)."),
    merge: str = typer.Option("attention", "--merge", help="Field merge: attention | concat."),
    exclude_field: list[str] = typer.Option(
        [], "--exclude-field", help="Leave a dataset field out of the tower (repeatable)."
    ),
    negatives: int = typer.Option(10, "--negatives", help="Negatives per positive (paper: 10)."),
    max_pos: int = typer.Option(50, "--max-pos-per-user", help="Positives/user/epoch (paper)."),
    logq: bool = typer.Option(True, "--logq/--no-logq", help="log-Q correction of logits."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="Adam weight decay."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> same weights)."),
    patience: int = typer.Option(3, "--patience", help="Early-stopping patience (0 = off)."),
    monitor: str = typer.Option("recall", "--monitor", help="Early stopping on recall | loss."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    threads: int = typer.Option(
        1, "--threads", help="torch CPU threads while training (0 = torch default)."
    ),
) -> None:
    """Train the universal user embedding model (stage 1) with sampled softmax."""
    from ralm.data.encoded import EncodedDataset
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.train import train_user_model

    try:
        cfg = UserModelConfig(
            dim=dim,
            merge=merge,  # type: ignore[arg-type]
            exclude_fields=list(exclude_field),
        )
        tc = UserTrainConfig(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            lr=lr,
            n_negatives=negatives,
            max_pos_per_user=max_pos,
            logq_correction=logq,
            weight_decay=weight_decay,
            seed=seed,
            patience=patience,
            monitor=monitor,  # type: ignore[arg-type]
            threads=threads,
        )
    except ValidationError as e:
        raise ConfigError(f"invalid option: {e}") from e
    ds = load_dataset(data, EncodedDataset)
    model = train_user_model(ds, cfg, out, tc, resume=resume)
    show_history(model.history, model.metrics)
    if cfg.merge == "attention":
        show_field_attention(model, ds)
    typer.echo(f"saved best model (epoch {model.metrics.get('epoch', '?')}) to {out}")


def load_dataset(path: Path, cls: Any) -> Any:
    """Load an encoded dataset, turning file problems into a user-facing error."""
    from ralm.errors import DataError

    try:
        return cls.load(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from e


def show_history(history: list[dict[str, float]], best: dict[str, float]) -> None:
    """Print the per-epoch table (train loss, validation loss, recall, popularity floor)."""
    table = Table(title="stage-1 training")
    cols = ["epoch", "train_loss", "val_loss", "recall", "popularity_recall", "samples_per_s"]
    for c in cols:
        table.add_column(c, justify="right")
    for rec in history:
        mark = " *" if rec.get("epoch") == best.get("epoch") else ""
        table.add_row(
            *[
                (f"{rec[c]:.4f}" if isinstance(rec.get(c), float) else str(rec.get(c, "-")))
                + (mark if c == "epoch" else "")
                for c in cols
            ]
        )
    Console().print(table)


def show_field_attention(model: Any, ds: Any, max_users: int = 10_000) -> None:
    """Print the mean per-field attention weight over (a sample of) the users."""
    import numpy as np

    from ralm.user.embed import field_attention

    users = np.random.default_rng(0).permutation(ds.n_users)[:max_users]
    alpha = field_attention(model, ds, np.sort(users)).mean(axis=0)  # (n_fields,)
    table = Table(title=f"mean field attention ({users.size} users)")
    table.add_column("field")
    table.add_column("weight", justify="right")
    for name, w in sorted(zip(model.field_names, alpha, strict=True), key=lambda x: -x[1]):
        table.add_row(name, f"{w:.3f}")
    Console().print(table)
