"""``ralm data``: fetch, prepare, describe, synth. (Owned by the data-layer work.)"""

from __future__ import annotations

import typer

from ralm.cli.synth import synth

app = typer.Typer(help="Fetch, encode, describe and synthesise data sets.", no_args_is_help=True)
app.command("synth")(synth)
