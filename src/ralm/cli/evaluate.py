"""``ralm evaluate`` (models on a prepared dataset) and ``ralm experiment CONFIG``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ralm.errors import ConfigError


def _csv(value: str | None, cast: type = str) -> list[Any] | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"cannot parse list {value!r}: {e}") from e


def print_tables(report_dir: Path) -> None:
    """Print the headline table of every protocol of a report folder (rich)."""
    from ralm.evaluation.report import fmt, headline_metrics

    results = json.loads((report_dir / "results.json").read_text())
    ks = [int(k) for k in results["ks"]]
    metrics = headline_metrics(ks)
    console = Console()
    for proto, block in results["protocols"].items():
        table = Table(title=f"{proto} protocol ({block['n_test_users']} test users)")
        table.add_column("model", no_wrap=True)
        for m in metrics:
            table.add_column(m, justify="right")
        for model, summary in block["summary"].items():
            table.add_row(model, *(fmt(summary[m]) for m in metrics))
        console.print(table)
        for note in block["notes"].values():
            console.print(f"[dim]* {note}[/dim]")
    console.print(f"report: {report_dir / 'report.md'}")


def experiment(
    config: str = typer.Argument(
        ...,
        help="Experiment TOML file, or the name of a shipped one (e.g. experiment-ml100k-quick).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: out_dir/name)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Override the seeds, e.g. 0,1,2."),
    models: str | None = typer.Option(None, "--models", help="Override the models (comma list)."),
    no_ablations: bool = typer.Option(False, "--no-ablations", help="Skip the ablation grid."),
) -> None:
    """Run a full experiment (data -> stage 1 -> stage 2 -> baselines -> report) from a config."""
    from ralm.config_files import resolve_config
    from ralm.evaluation.config import ExperimentConfig, load_experiment_config
    from ralm.evaluation.experiment import run_experiment

    cfg = load_experiment_config(resolve_config(config))
    update: dict[str, Any] = {}
    if seeds is not None:
        update["seeds"] = _csv(seeds, int)
    if models is not None:
        update["models"] = _csv(models)
    if no_ablations:
        update["ablations"] = None
    if update:
        cfg = ExperimentConfig.model_validate({**cfg.model_dump(), **update})
    print_tables(run_experiment(cfg, out_dir=out))


def evaluate(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder (`ralm data prepare`)."),
    out: Path = typer.Option(Path("reports/evaluate"), "--out", help="Report folder."),
    run: Path | None = typer.Option(
        None, "--run", help="Trained run folder with user/ and lookalike/ checkpoints."
    ),
    models: str = typer.Option(
        "random,popularity,lr,yahoo,youtube_dnn,ralm_average,ralm",
        "--models",
        help="Models to compare (random, popularity, lr, yahoo, youtube_dnn, ralm_tower, "
        "ralm_average, ralm).",
    ),
    protocols: str = typer.Option("warm,cold", "--protocols", help="warm and/or cold."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds (mean ± std over them)."),
    ks: str = typer.Option("10,50", "--ks", help="Top-K cut-offs."),
    config: str | None = typer.Option(
        None,
        "--config",
        help="Experiment TOML (file or shipped name) for model hyper-parameters (data: --data).",
    ),
) -> None:
    """Evaluate models on a prepared dataset (its split as is) and write a report folder."""
    from ralm.evaluation.config import ExperimentConfig, load_experiment_config
    from ralm.evaluation.experiment import run_experiment

    if not (data / "meta.json").is_file():
        raise ConfigError(f"--data {data} is not an encoded dataset (no meta.json)")
    from ralm.config_files import resolve_config

    base = {}
    if config is not None:
        base = load_experiment_config(resolve_config(config)).model_dump()
    raw = {
        **base,
        "name": out.name,
        "data": {"encoded": str(data)},
        "models": _csv(models),
        "protocols": _csv(protocols),
        "seeds": _csv(seeds, int),
        "ks": _csv(ks, int),
        "run_dir": str(run) if run is not None else None,
        "ablations": None,
    }
    from pydantic import ValidationError

    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid options: {e}") from e
    print_tables(run_experiment(cfg, out_dir=out))
