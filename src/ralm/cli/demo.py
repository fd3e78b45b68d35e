"""``ralm demo``: the README's main job, end to end on MovieLens-100K.

fetch -> prepare (encode + split) -> describe -> experiment (stage 1 -> stage 2 -> every
baseline -> warm and cold tables) -> print the report table.
"""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_CONFIG = "experiment-ml100k-quick"  # shipped in the package: ralm/configs/


def demo(
    config: str = typer.Option(
        DEFAULT_CONFIG,
        "--config",
        help="Experiment config: a TOML file or the name of a shipped one (ralm/configs/).",
    ),
    out: Path = typer.Option(Path("reports/demo"), "--out", help="Report folder."),
    data_dir: Path = typer.Option(
        Path("data/ml-100k"), "--data-dir", help="Where the encoded ML-100K dataset is written."
    ),
) -> None:
    """Fetch MovieLens-100K and run the whole pipeline end to end, printing the results."""
    from ralm.config_files import resolve_config
    from ralm.data.describe import print_description
    from ralm.data.fetch import fetch_movielens_100k
    from ralm.data.prepare import prepare
    from ralm.data.splits import SplitConfig
    from ralm.evaluation.experiment import load_experiment_config, run_experiment

    config_path = resolve_config(config)  # fail before the download

    typer.secho("== 1/3 fetch MovieLens-100K", bold=True)
    raw_dir, fmt = fetch_movielens_100k()
    typer.echo(f"raw files ({fmt}) in {raw_dir}")

    typer.secho("== 2/3 encode and split", bold=True)
    ds = prepare("movielens-100k", data_dir, SplitConfig())
    print_description(ds)

    typer.secho("== 3/3 experiment: stage 1, stage 2, baselines, evaluation", bold=True)
    cfg = load_experiment_config(config_path)
    report_dir = run_experiment(cfg, out_dir=out)
    report = report_dir / "report.md"
    typer.echo(report.read_text())
    typer.secho(f"report written to {report_dir}", fg=typer.colors.GREEN)
