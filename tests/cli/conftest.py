"""Fixtures for the command-line tests: run a command up to the point where it would train
or serve, and capture the settings it would use."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ralm.cli import main


class Captured(Exception):
    """Raised by a patched trainer/server: carries the settings it was given."""

    def __init__(self, **settings: Any) -> None:
        super().__init__("captured")
        self.settings = settings


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ralm ARGV`` through the console entry point: (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["ralm", *argv]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def capture(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], dict[str, Any]]:
    """Run ``ralm train user|lookalike|serve ARGS`` and return the settings it ends up with,
    without data, models or a server (the heavy steps are replaced)."""
    import ralm.cli.train_user as train_user_cli
    import ralm.lookalike.train
    import ralm.serve.loader
    import ralm.serve.service
    import ralm.user.checkpoint
    import ralm.user.embed
    import ralm.user.train

    def fail(**kw: Any) -> Any:
        raise Captured(**kw)

    monkeypatch.setattr(train_user_cli, "set_torch_threads", lambda n: None)
    monkeypatch.setattr(train_user_cli, "load_dataset", lambda path, cls: object())
    monkeypatch.setattr(
        ralm.user.train,
        "train_user_model",
        lambda ds, cfg, out, tc, resume: fail(user=cfg, user_train=tc),
    )
    monkeypatch.setattr(ralm.user.checkpoint, "load_user_model", lambda path, ds: object())
    monkeypatch.setattr(
        ralm.user.embed, "embed_users", lambda *a, **k: np.zeros((4, 16), dtype=np.float32)
    )
    monkeypatch.setattr(
        ralm.lookalike.train,
        "train_lookalike",
        lambda ds, cfg, seeds, target, out, tc, resume: fail(lookalike=cfg, lookalike_train=tc),
    )
    monkeypatch.setattr(ralm.serve.loader, "load_serving_model", lambda run, data: object())
    monkeypatch.setattr(ralm.serve.service, "RalmService", lambda model, cfg: fail(serve=cfg))

    def run(argv: list[str]) -> dict[str, Any]:
        from typer.testing import CliRunner

        from ralm.cli import app

        res = CliRunner().invoke(app, argv)
        if not isinstance(res.exception, Captured):
            raise AssertionError(f"exit {res.exit_code}: {res.output} {res.exception!r}")
        return res.exception.settings

    return run


@pytest.fixture()
def paths(tmp_path: Path) -> dict[str, str]:
    return {k: str(tmp_path / k) for k in ("data", "out", "user", "run")}
