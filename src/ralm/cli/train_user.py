"""``ralm train user``: stage 1. (Owned by the stage-1 work.)"""

from __future__ import annotations


def train_user() -> None:
    """Train the universal user embedding model (not yet implemented)."""
    raise NotImplementedError
