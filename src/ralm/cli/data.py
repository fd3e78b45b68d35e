"""``ralm data``: fetch, prepare, describe, synth. (Owned by the data-layer work.)"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ralm.cli.synth import synth
from ralm.data.describe import print_description
from ralm.errors import ConfigError

app = typer.Typer(help="Fetch, encode, describe and synthesise data sets.", no_args_is_help=True)
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


@app.command("prepare")
def prepare(
    source: str = typer.Argument(
        ..., help="movielens-100k, ml100k:DIR, ml1m:DIR, recbole:DIR or a dataset .toml file."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder of the encoded dataset."),
    split: str = typer.Option(
        "per_user", "--split", help="per_user | global_time | random_per_user | given."
    ),
    valid_frac: float = typer.Option(0.1, "--valid-frac", help="Fraction of rows in VALID."),
    test_frac: float = typer.Option(0.1, "--test-frac", help="Fraction of rows in TEST."),
    cold_item_frac: float = typer.Option(
        0.1, "--cold-item-frac", help="Fraction of items (with enough clicks) held out as cold."
    ),
    cold_min_clicks: int = typer.Option(
        10, "--cold-min-clicks", help="Minimum clicks of a cold-item candidate."
    ),
    cold_seed_frac: float = typer.Option(
        0.5, "--cold-seed-frac", help="Share of a cold item's earliest clicks used as seeds."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Cache root for downloads."),
) -> None:
    """Read, split and encode a data source into an encoded dataset folder."""
    from pydantic import ValidationError

    from ralm.data.describe import describe
    from ralm.data.prepare import prepare as run_prepare
    from ralm.data.splits import SplitConfig

    try:
        cfg = SplitConfig(
            method=split,  # type: ignore[arg-type]
            valid_frac=valid_frac,
            test_frac=test_frac,
            cold_item_frac=cold_item_frac,
            cold_min_clicks=cold_min_clicks,
            cold_seed_frac=cold_seed_frac,
            seed=seed,
        )
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'split'}: {x['msg']}" for x in e.errors()
        )
        raise ConfigError(f"invalid split options: {msgs}") from e
    ds = run_prepare(source, out, cfg, cache_dir=cache_dir)
    print_description(describe(ds), title=f"{ds.name} -> {out}")


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
