"""``ralm export``: universal user embeddings and item embeddings."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def export(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder."),
    user_model: Path = typer.Option(..., "--user-model", help="Stage-1 run folder."),
    out: Path = typer.Option(..., "--out", help="Output folder for the .npy files."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Users embedded at once."),
) -> None:
    """Export universal user embeddings and item embeddings (.npy) with id maps."""
    from ralm.cli.train_user import load_dataset
    from ralm.data.encoded import EncodedDataset
    from ralm.user.checkpoint import load_user_model
    from ralm.user.export import export_embeddings

    ds = load_dataset(data, EncodedDataset)
    model = load_user_model(user_model, ds)
    logging.getLogger(__name__).info("embedding every user of %s to %s", data, out)
    files = export_embeddings(model, ds, out, batch_size=batch_size)
    for name, path in files.items():
        typer.echo(f"{name}: {path}")
