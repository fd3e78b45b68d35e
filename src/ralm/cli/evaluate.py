"""``ralm evaluate`` and ``ralm experiment``."""

from __future__ import annotations


def evaluate() -> None:
    """Evaluate trained models (not yet implemented)."""
    raise NotImplementedError


def experiment() -> None:
    """Run a full experiment from a config (not yet implemented)."""
    raise NotImplementedError
