"""``ralm serve``: the online recommendation service (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    run: Path = typer.Option(..., "--run", help="Training run folder (user/ and lookalike/)."),
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder the run was trained on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Seed store + published indexes (default: RUN/serve)."
    ),
    recluster_every: float = typer.Option(
        300.0, "--recluster-every", min=0.1, help="Seconds between re-clusters (paper: 300)."
    ),
    min_seeds: int = typer.Option(10, "--min-seeds", min=1, help="Seeds before recommending."),
    fast_path: bool = typer.Option(
        True, "--fast-path/--no-fast-path", help="Serve items with a few seeds within seconds."
    ),
    fast_path_min_seeds: int = typer.Option(3, "--fast-path-min-seeds", min=1),
    max_seeds: int = typer.Option(
        3_000_000, "--max-seeds", min=1, help="Most recent clickers kept per item (paper: 3M)."
    ),
    batch_window_ms: float = typer.Option(2.0, "--batch-window-ms", min=0.0),
    max_batch: int = typer.Option(64, "--max-batch", min=1),
    synchronous: str = typer.Option("FULL", "--synchronous", help="SQLite sync: FULL | NORMAL."),
    token: str | None = typer.Option(
        None, "--token", envvar="RALM_TOKEN", help="Bearer token required by write endpoints."
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads."),
) -> None:
    """Start the HTTP service: POST /recommend, POST /clicks, GET /items/{id}, /metrics, /docs."""
    from pydantic import ValidationError

    from ralm.errors import ConfigError
    from ralm.serve.app import run_server
    from ralm.serve.config import ServeConfig
    from ralm.serve.loader import load_serving_model
    from ralm.serve.service import RalmService

    try:
        cfg = ServeConfig(
            state_dir=state_dir or run / "serve",
            recluster_every_s=recluster_every,
            min_seeds=min_seeds,
            fast_path=fast_path,
            fast_path_min_seeds=fast_path_min_seeds,
            max_seeds_per_item=max_seeds,
            batch_window_ms=batch_window_ms,
            max_batch=max_batch,
            synchronous=synchronous.upper(),
            token=token,
            torch_threads=threads,
        )
    except ValidationError as e:
        raise ConfigError(f"invalid option: {e}") from e
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        typer.secho(
            f"warning: binding {host} without --token leaves /clicks open", fg="yellow", err=True
        )
    model = load_serving_model(run, data)
    service = RalmService(model, cfg)
    typer.echo(f"serving {run} on http://{host}:{port} (docs: /docs)")
    run_server(service, host=host, port=port)
