"""The ``ralm`` command line. Each command group lives in its own module."""

from __future__ import annotations

import logging

import typer

from ralm.cli import config, data, demo, export, train
from ralm.cli.lazy import lazy_group
from ralm.errors import RalmError

app = typer.Typer(
    name="ralm",
    help="RALM: real-time attention-based look-alike recommendation.",
    no_args_is_help=True,
    add_completion=False,
    cls=lazy_group(
        {
            "evaluate": "ralm.cli.evaluate:evaluate",
            "experiment": "ralm.cli.evaluate:experiment",
            "serve": "ralm.cli.serve:serve",
        }
    ),
)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.command("export")(export.export)
app.command("demo")(demo.demo)
app.add_typer(config.app, name="config")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # faiss logs which CPU build it loads at INFO, on every import
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def main() -> None:
    """Console entry point: user errors are printed without a traceback (exit code 2).

    Applies the one thread policy first (:mod:`ralm.common.threads`): bounded OpenMP
    spin-waiting, and one torch thread (``RALM_THREADS``) unless a
    command's ``--threads`` says otherwise.
    """
    from ralm.common.threads import apply_thread_policy

    try:
        apply_thread_policy()
        app()
    except RalmError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
