"""``ralm data synth``: the paper-scale synthetic generator. (Owned by the generator work.)"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ralm.cli.options import with_settings
from ralm.config_files import Section
from ralm.data.splits import SplitConfig
from ralm.errors import ConfigError


class Preset(StrEnum):
    """Named sizes of :data:`ralm.data.synth.PRESETS`."""

    tiny = "tiny"
    small = "small"
    wechat = "wechat"


class OutFormat(StrEnum):
    """What ``ralm data synth`` writes."""

    parquet = "parquet"
    encoded = "encoded"


SPLIT = Section(
    "split",
    SplitConfig,
    flags={"method": ("--split",)},
    skip=frozenset({"seed", "cold_item_frac", "cold_min_clicks"}),  # seed: --seed
    help={
        "method": "encoded only: per_user | global_time | random_per_user.",
        "valid_frac": "encoded only: VALID share.",
        "test_frac": "encoded only: TEST share.",
        "cold_seed_frac": "encoded only: earliest share of a cold item's clicks.",
    },
)


@with_settings(SPLIT, config_file=False)
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (created if missing)."),
    preset_name: Preset = typer.Option(
        Preset.small, "--preset", help="tiny (~2k users) | small (50k) | wechat (paper scale)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> same data)."),
    fmt: OutFormat = typer.Option(
        OutFormat.parquet,
        "--format",
        help="parquet: dataset.toml + Parquet tables for `ralm data prepare`; "
        "encoded: an encoded dataset folder the trainers read directly.",
    ),
    users: int | None = typer.Option(None, "--users", help="Override the number of users."),
    items: int | None = typer.Option(None, "--items", help="Override the number of items."),
    clicks: int | None = typer.Option(None, "--clicks", help="Override the number of clicks."),
    *,
    split: SplitConfig,
) -> None:
    """Generate a synthetic data set with planted structure (latent interest groups)."""
    from ralm.data.synth import generate, preset, write_encoded, write_parquet

    overrides: dict[str, Any] = {"seed": seed}
    for key, value in (("n_users", users), ("n_items", items), ("n_clicks", clicks)):
        if value is not None:
            overrides[key] = value
    cfg = preset(preset_name.value, **overrides)
    split = split.model_copy(update={"seed": seed})
    if split.method == "given":
        raise ConfigError("--split given needs a test file; use ralm data prepare for that")

    t0 = time.perf_counter()
    data = generate(cfg)
    t_gen = time.perf_counter() - t0
    path = write_parquet(data, out) if fmt is OutFormat.parquet else write_encoded(data, out, split)
    t_all = time.perf_counter() - t0

    table = Table(title=f"ralm data synth --preset {preset_name.value}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows: tuple[tuple[str, str], ...] = (
        ("users", f"{data.n_users:,}"),
        ("items", f"{data.n_items:,}"),
        ("clicks", f"{data.n_clicks:,}"),
        ("new (late) items", f"{int(data.item_is_new.sum()):,}"),
        ("latent groups / topics", f"{cfg.n_groups} / {cfg.n_topics}"),
        ("generate (s)", f"{t_gen:.1f}"),
        ("generate + write (s)", f"{t_all:.1f}"),
        ("output", str(path)),
    )
    for label, text in rows:
        table.add_row(label, text)
    Console().print(table)
