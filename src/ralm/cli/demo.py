"""``ralm demo``: the README's main job, end to end on MovieLens-100K."""

from __future__ import annotations


def demo() -> None:
    """Fetch MovieLens-100K and run the pipeline end to end (not yet implemented)."""
    raise NotImplementedError
