"""``ralm config show``: the effective settings of a command as a TOML file to start from."""

from __future__ import annotations

from enum import StrEnum

import typer

from ralm.config_files import Section

app = typer.Typer(help="Inspect the settings files of ralm.", no_args_is_help=True)


class Command(StrEnum):
    """Commands that read a ``--config`` file."""

    user = "user"
    lookalike = "lookalike"
    serve = "serve"
    all = "all"


def command_sections(which: Command) -> list[Section]:
    """The sections of ``ralm train user`` / ``train lookalike`` / ``serve`` (or all)."""
    from ralm.cli.serve import LISTEN, SERVE
    from ralm.cli.train_lookalike import LOOKALIKE, LOOKALIKE_TRAIN
    from ralm.cli.train_user import USER_SECTIONS

    by_command = {
        Command.user: list(USER_SECTIONS),
        Command.lookalike: [LOOKALIKE, LOOKALIKE_TRAIN],
        Command.serve: [LISTEN, SERVE],
    }
    if which is Command.all:
        return [s for sections in by_command.values() for s in sections]
    return by_command[which]


@app.command("show")
def show(
    which: Command = typer.Argument(
        Command.all, help="user (train user), lookalike (train lookalike), serve, or all."
    ),
    config: str | None = typer.Option(
        None, "--config", metavar="FILE", help="Show the settings with this file applied."
    ),
) -> None:
    """Print the effective settings (defaults, or a file applied to them) as TOML."""
    from ralm.cli.options import load_sections
    from ralm.config_files import dump_toml

    sections = command_sections(which)
    settings = load_sections(sections, config, {}, {})
    header = (
        f"ralm settings ({which.value}){' from ' + config if config else ': the defaults'}.\n"
        "Pass this file to `ralm train user|lookalike --config` / `ralm serve --config`;\n"
        "each command reads its own tables and flags override single keys."
    )
    typer.echo(dump_toml([(s, settings[s.name]) for s in sections], header=header), nl=False)
