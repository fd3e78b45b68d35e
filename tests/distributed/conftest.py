"""Fixtures shared with the serving tests (a small real training run)."""

from serve.conftest import trained_run

__all__ = ["trained_run"]
