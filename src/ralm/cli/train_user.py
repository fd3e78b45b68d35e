"""``ralm train user``: stage 1, the universal user embedding model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ralm.cli.options import with_settings
from ralm.config_files import Section
from ralm.user.config import UserModelConfig, UserTrainConfig

USER = Section("user", UserModelConfig, flags={"exclude_fields": ("--exclude-field",)})
USER_TRAIN = Section(
    "user_train",
    UserTrainConfig,
    flags={"n_negatives": ("--negatives",), "logq_correction": ("--logq",)},
)
USER_SECTIONS = (USER, USER_TRAIN)


@with_settings(*USER_SECTIONS)
def train_user(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder (ralm data prepare)."),
    out: Path = typer.Option(..., "--out", help="Run folder for checkpoints (e.g. runs/x/user)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    *,
    user: UserModelConfig,
    user_train: UserTrainConfig,
) -> None:
    """Train the universal user embedding model (stage 1) with sampled softmax."""
    from ralm.data.encoded import EncodedDataset
    from ralm.user.train import train_user_model

    set_torch_threads(user_train.threads)
    ds = load_dataset(data, EncodedDataset)
    model = train_user_model(ds, user, out, user_train, resume=resume)
    show_history(model.history, model.metrics)
    if user.merge in ("attention", "attention_concat"):
        show_field_attention(model, ds)
    typer.echo(f"saved best model (epoch {model.metrics.get('epoch', '?')}) to {out}")


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` torch intra-op threads in this process (0 = leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


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
