"""Package-level checks: the CLI exists and every command answers --help."""

import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["data"],
    ["train"],
    ["train", "user"],
    ["train", "lookalike"],
    ["export"],
    ["evaluate"],
    ["experiment"],
    ["serve"],
    ["demo"],
    ["data", "synth"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(cmd: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ralm", *cmd, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
