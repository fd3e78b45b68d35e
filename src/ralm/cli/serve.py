"""``ralm serve``: the online recommendation service."""

from __future__ import annotations


def serve() -> None:
    """Start the HTTP service (not yet implemented)."""
    raise NotImplementedError
