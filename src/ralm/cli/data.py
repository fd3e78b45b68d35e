"""``ralm data``: fetch, prepare, describe, synth. (Owned by the data-layer work.)"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ralm.cli.lazy import lazy_group
from ralm.cli.synth import synth
from ralm.data.describe import print_description
from ralm.errors import ConfigError

app = typer.Typer(
    help="Fetch, encode, describe and synthesise data sets.",
    no_args_is_help=True,
    cls=lazy_group({"prepare": "ralm.cli.prepare:prepare"}),  # flags from SplitConfig
)
app.command("synth")(synth)

DATASETS = ("movielens-100k",)


@app.command("fetch")
def fetch(
    dataset: str = typer.Argument(..., help="Data set to fetch: movielens-100k."),
    from_dir: Path | None = typer.Option(
        None, "--from-dir", help="Use a local GroupLens ml-100k folder (u.data, u.user, u.item)."
    ),
    wheel: Path | None = typer.Option(
        None, "--wheel", help="Extract from a local recbole-1.2.1 wheel instead of PyPI."
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache root (default: $RALM_CACHE_DIR or the user cache dir)."
    ),
    force: bool = typer.Option(False, "--force", help="Fetch again even if cached."),
) -> None:
    """Download a public data set into the user cache (never into the repository)."""
    from ralm.data.fetch import fetch_movielens_100k

    if dataset not in DATASETS:
        raise ConfigError(f"unknown data set {dataset!r}; available: {', '.join(DATASETS)}")
    folder, fmt = fetch_movielens_100k(cache_dir, from_dir=from_dir, wheel=wheel, force=force)
    typer.echo(f"{dataset} ({fmt} format, checksums verified) in {folder}")


@app.command("describe")
def describe_cmd(
    path: Path = typer.Argument(..., help="Encoded dataset folder (written by `data prepare`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Print users, items, interactions, fields, split sizes and cold items."""
    from ralm.data.describe import describe
    from ralm.data.encoded import EncodedDataset
    from ralm.errors import DataError

    try:
        ds = EncodedDataset.load(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from e
    d = describe(ds)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
    else:
        print_description(d, title=str(path))
