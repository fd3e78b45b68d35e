"""``ralm train lookalike``: stage 2. (Owned by the stage-2 work.)"""

from __future__ import annotations


def train_lookalike() -> None:
    """Train the look-alike model (not yet implemented)."""
    raise NotImplementedError
