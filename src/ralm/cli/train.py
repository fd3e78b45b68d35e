"""``ralm train``: stage 1 (user) and stage 2 (lookalike)."""

from __future__ import annotations

import typer

from ralm.cli.train_lookalike import train_lookalike
from ralm.cli.train_user import train_user

app = typer.Typer(
    help="Train the user model (stage 1) or the look-alike model (stage 2).",
    no_args_is_help=True,
)
app.command("user")(train_user)
app.command("lookalike")(train_lookalike)
