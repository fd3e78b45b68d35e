"""``ralm data prepare``: read, split and encode a data source (split flags from SplitConfig)."""

from __future__ import annotations

from pathlib import Path

import typer

from ralm.cli.options import with_settings
from ralm.config_files import Section
from ralm.data.splits import SplitConfig

SPLIT = Section(
    "split",
    SplitConfig,
    flags={"method": ("--split",)},
    help={  # fuller than the model's one-word descriptions; the defaults still come from it
        "method": "How rows are split (given: the dataset's own test file).",
        "valid_frac": "Fraction of rows in VALID.",
        "test_frac": "Fraction of rows in TEST.",
        "cold_item_frac": "Fraction of items (with enough clicks) held out as cold.",
        "cold_min_clicks": "Minimum clicks of a cold-item candidate.",
        "cold_seed_frac": "Share of a cold item's earliest clicks used as seeds.",
    },
)


@with_settings(SPLIT, config_file=False)
def prepare(
    source: str = typer.Argument(
        ..., help="movielens-100k, ml100k:DIR, ml1m:DIR, recbole:DIR or a dataset .toml file."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder of the encoded dataset."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Cache root for downloads."),
    *,
    split: SplitConfig,
) -> None:
    """Read, split and encode a data source into an encoded dataset folder."""
    from ralm.data.describe import describe, print_description
    from ralm.data.prepare import prepare as run_prepare

    ds = run_prepare(source, out, split, cache_dir=cache_dir)
    print_description(describe(ds), title=f"{ds.name} -> {out}")
