"""``ralm evaluate`` (models on a prepared dataset) and ``ralm experiment CONFIG``.

Imported when used (it imports the stage configs, hence torch); list defaults come from
``ExperimentConfig``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ralm.config_files import Section, build_settings, field_default, resolve_config
from ralm.errors import ConfigError
from ralm.evaluation.config import ExperimentConfig, ModelName, load_experiment_config


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


def _default(name: str) -> str:
    """The default of an ExperimentConfig list field as the comma list a flag takes."""
    return ",".join(str(v) for v in field_default(ExperimentConfig.model_fields[name]))


def _help(text: str, name: str) -> str:
    return escape(f"{text} [default: {_default(name)}, or the --config file's]")


EXPERIMENT = Section("experiment", ExperimentConfig)
MODEL_NAMES = get_args(ModelName)
FLAGS = {"models": "--models", "protocols": "--protocols", "seeds": "--seeds", "ks": "--ks"}


def _settings(base: dict[str, Any], update: dict[str, Any], path: Path | None) -> ExperimentConfig:
    flags = {**FLAGS, "run_dir": "--run", "data": "--data", "name": "--out"}
    cfg = build_settings(EXPERIMENT, base, update, path=path, flag_names=flags)
    assert isinstance(cfg, ExperimentConfig)
    return cfg


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
    from ralm.evaluation.experiment import run_experiment

    path = resolve_config(config)
    cfg = load_experiment_config(path)
    update: dict[str, Any] = {}
    if seeds is not None:
        update["seeds"] = _csv(seeds, int)
    if models is not None:
        update["models"] = _csv(models)
    if no_ablations:
        update["ablations"] = None
    if update:
        cfg = _settings(cfg.model_dump(), update, path)
    print_tables(run_experiment(cfg, out_dir=out))


def evaluate(
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder (`ralm data prepare`)."),
    out: Path = typer.Option(Path("reports/evaluate"), "--out", help="Report folder."),
    run: Path | None = typer.Option(
        None, "--run", help="Trained run folder with user/ and lookalike/ checkpoints."
    ),
    models: str | None = typer.Option(
        None,
        "--models",
        help=_help(f"Models to compare ({', '.join(get_args(ModelName))}).", "models"),
    ),
    protocols: str | None = typer.Option(
        None, "--protocols", help=_help("warm and/or cold.", "protocols")
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help=_help("Seeds (mean ± std over them).", "seeds")
    ),
    ks: str | None = typer.Option(None, "--ks", help=_help("Top-K cut-offs.", "ks")),
    config: str | None = typer.Option(
        None,
        "--config",
        help="Experiment TOML (file or shipped name) for model hyper-parameters (data: --data).",
    ),
) -> None:
    """Evaluate models on a prepared dataset (its split as is) and write a report folder."""
    from ralm.evaluation.experiment import run_experiment

    if not (data / "meta.json").is_file():
        raise ConfigError(f"--data {data} is not an encoded dataset (no meta.json)")
    path = resolve_config(config) if config is not None else None
    base = load_experiment_config(path).model_dump() if path is not None else {}
    update: dict[str, Any] = {
        "name": out.name,
        "data": {"encoded": str(data)},
        "run_dir": str(run) if run is not None else None,
        "ablations": None,
    }
    for key, value, cast in (
        ("models", models, str),
        ("protocols", protocols, str),
        ("seeds", seeds, int),
        ("ks", ks, int),
    ):
        if value is not None:
            update[key] = _csv(value, cast)
    print_tables(run_experiment(_settings(base, update, path), out_dir=out))
