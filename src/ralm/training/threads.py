"""The thread setting of a training run (restored afterwards)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the old value after.

    Args:
        n: intra-op CPU threads; 0 leaves torch's current setting untouched.
    """
    if n <= 0:
        yield
        return
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
        log.debug("torch threads %d -> %d for training", old, n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
