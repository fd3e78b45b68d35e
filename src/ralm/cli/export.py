"""``ralm export``: universal user embeddings and item embeddings."""

from __future__ import annotations


def export() -> None:
    """Export universal user embeddings and item embeddings (not yet implemented)."""
    raise NotImplementedError
