"""``ralm serve``: the online recommendation service (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ConfigDict, Field

from ralm.cli.options import with_settings
from ralm.config_files import Section
from ralm.serve.config import ServeConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ListenConfig(BaseModel):
    """Where the HTTP server listens (table ``[listen]``).

    Args:
        host: bind address; loopback by default, anything else needs a token to keep
            ``/clicks`` closed.
        port: TCP port.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1, description="Bind address.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port.")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


SERVE = Section(
    "serve",
    ServeConfig,
    flags={
        "recluster_every_s": ("--recluster-every",),
        "max_seeds_per_item": ("--max-seeds",),
        "torch_threads": ("--threads",),
        "leader_ttl_s": ("--leader-ttl",),
        "version_poll_s": ("--version-poll",),
    },
    computed=frozenset({"state_dir"}),
    help={"state_dir": "Seed store + published indexes [default: RUN/serve]"},
    envvars={"token": "RALM_TOKEN"},
    transform={"synchronous": _upper},
)
LISTEN = Section("listen", ListenConfig)


@with_settings(LISTEN, SERVE)
def serve(
    run: Path = typer.Option(..., "--run", help="Training run folder (user/ and lookalike/)."),
    data: Path = typer.Option(..., "--data", help="Encoded dataset folder the run was trained on."),
    *,
    listen: ListenConfig,
    serve: ServeConfig,
) -> None:
    """Start the HTTP service: POST /recommend, POST /clicks, GET /items/{id}, /metrics, /docs."""
    from ralm.serve.app import run_server
    from ralm.serve.loader import load_serving_model
    from ralm.serve.service import RalmService

    cfg = with_state_dir(serve, run)
    if listen.host not in LOOPBACK and cfg.token is None:
        typer.secho(
            f"warning: binding {listen.host} without --token leaves /clicks open",
            fg="yellow",
            err=True,
        )
    model = load_serving_model(run, data)
    service = RalmService(model, cfg)
    where = f"store {cfg.store}, one replica of several" if cfg.replicated else "one process"
    typer.echo(f"serving {run} on http://{listen.host}:{listen.port} ({where}; docs: /docs)")
    run_server(service, host=listen.host, port=listen.port)


def with_state_dir(cfg: ServeConfig, run: Path) -> ServeConfig:
    """``cfg`` with the state folder defaulting to ``RUN/serve`` (unless set explicitly)."""
    if "state_dir" in cfg.model_fields_set:
        return cfg
    return cfg.model_copy(update={"state_dir": run / "serve"})
