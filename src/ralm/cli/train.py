"""``ralm train``: stage 1 (user) and stage 2 (lookalike), imported when used."""

from __future__ import annotations

import typer

from ralm.cli.lazy import lazy_group

app = typer.Typer(
    help="Train the user model (stage 1) or the look-alike model (stage 2).",
    no_args_is_help=True,
    cls=lazy_group(
        {
            "user": "ralm.cli.train_user:train_user",
            "lookalike": "ralm.cli.train_lookalike:train_lookalike",
        }
    ),
)
