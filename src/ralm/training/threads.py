"""The thread setting of a training run (restored afterwards), and whether a core is spare."""

from __future__ import annotations

import contextlib
import logging
import os
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


def spare_core() -> bool:
    """True when this host has a core beyond the training's intra-op threads (times the
    processes of this node under ``torchrun``): the Trainer then builds the next batch in
    a worker thread during each step. Measured (docs/LOOKALIKE.md, "Threads, spin-waiting,
    fused Adam, batch prefetch"): +9-24 % stage-2 samples/s with one thread on 2 cores,
    -7 % with two (the builder then takes a core from the step)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return cores > torch.get_num_threads() * max(1, procs)
