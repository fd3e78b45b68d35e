"""``ralm data synth``: the paper-scale synthetic generator. (Owned by the generator work.)"""

from __future__ import annotations


def synth() -> None:
    """Generate a synthetic data set with planted structure (not yet implemented)."""
    raise NotImplementedError
