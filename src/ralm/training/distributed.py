"""Data-parallel training under ``torchrun``: process group, shards, broadcasts, barriers.

``ralm train user`` / ``ralm train lookalike`` run unchanged under
``torchrun --nproc_per_node N -m ralm train ...``: :func:`distributed_run` reads the
launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and, when ``WORLD_SIZE > 1``, starts the process group (``gloo``; with
CUDA present ``cpu:gloo,cuda:nccl``, so CUDA tensors go through NCCL and the CPU tensors
ralm trains on through gloo). Without a launcher (or with one process) every helper here is
a no-op and the training code runs exactly as before.

The sharding rule (:func:`shard_rows`): every rank draws the epoch's examples from the same
seed (the same shuffled list), and rank ``r`` keeps rows ``r, r + W, r + 2W, ...``. With a
global batch ``B`` (``batch_size``, divisible by ``W``), step ``s`` of rank ``r`` takes the
rows of global rows ``[sB, (s+1)B)`` congruent to ``r``, so the ``W`` ranks together train
on exactly the rows the one-process run trains on at step ``s``; DDP averages the
gradients, and :class:`~ralm.training.Trainer` weights each rank's loss by its share of the
batch so the update equals the one-process update of the global batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from ralm.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: environment override of the backend (e.g. ``gloo``, ``nccl``, ``cpu:gloo,cuda:nccl``)
BACKEND_ENV = "RALM_DIST_BACKEND"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the data-parallel run.

    Attributes:
        rank: global rank (0 = the process that writes checkpoints and validates).
        world_size: number of processes (1 = not distributed).
        local_rank: rank on this machine (CUDA device index when training on GPUs).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (checkpoints, validation, logs of record)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank arrives (no-op with one process)."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: T, src: int = 0) -> T:
        """``obj`` of rank ``src`` on every rank (pickled; no-op with one process)."""
        if not self.enabled:
            return obj
        box: list[Any] = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]  # type: ignore[no-any-return]

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64; identical on every rank)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def all_sum_async(self, values: list[float]) -> Callable[[], list[float]]:
        """Start :meth:`all_sum` without waiting: returns the function that waits and gives
        the sums, so the collective runs while this rank computes (the backward pass)."""
        if not self.enabled:
            return lambda: list(values)
        t = torch.tensor(values, dtype=torch.float64)
        work = dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True)

        def wait() -> list[float]:
            work.wait()
            return [float(v) for v in t.tolist()]

        return wait


SINGLE = DistContext()


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (``0, 1, 0``
    without one).

    Raises:
        ConfigError: the variables are not integers or are inconsistent.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def choose_backend() -> str:
    """``$RALM_DIST_BACKEND``, else ``cpu:gloo,cuda:nccl`` with CUDA, else ``gloo``."""
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        return forced
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def current() -> DistContext:
    """The context of an already started process group (``SINGLE`` when none)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        _, _, local = env_world()
        return DistContext(dist.get_rank(), dist.get_world_size(), local)
    return SINGLE


@contextlib.contextmanager
def distributed_run(timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """The data-parallel context of this process, starting the process group if needed.

    With ``WORLD_SIZE > 1`` in the environment (set by ``torchrun``) and no process group
    yet, the group is started here (``env://`` rendezvous, :func:`choose_backend`) and
    destroyed when the block exits; a group started by the caller is used and left alone.
    Without a launcher this yields :data:`SINGLE` and does nothing.

    Args:
        timeout_s: collective timeout (a rank waiting longer for the others fails).
    """
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    rank, world, local = env_world()
    if world == 1:
        yield SINGLE
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = choose_backend()
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(local % max(torch.cuda.device_count(), 1))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    log.info("data-parallel training: rank %d of %d (backend %s)", rank, world, backend)
    try:
        yield DistContext(rank, world, local)
        # every rank has left its last collective before any rank tears the group down
        # (a rank destroying its group while a peer's gloo threads still talk to it can
        # abort the peer at exit: "terminate called without an active exception")
        dist.barrier()
    finally:
        # give gloo's worker threads the GIL to finish freeing their last works first: a
        # work holds a Python object (its thread-local state), and the group's destructor,
        # run later with the GIL held when a DDP reducer drops the last reference, joins
        # those threads, so one still waiting for the GIL hung the exit (torch 2.13; seen
        # once in tests/distributed/test_ddp.py under a loaded host)
        time.sleep(0.05)
        dist.destroy_process_group()


def check_global_batch(batch_size: int, ctx: DistContext) -> None:
    """``batch_size`` is the global batch: it must split evenly over the ranks.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of the world size.
    """
    if batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must be divisible by "
            f"WORLD_SIZE={ctx.world_size} (each rank trains batch_size / WORLD_SIZE rows a step)"
        )


def shard_rows(n: int, rank: int, world: int) -> np.ndarray:
    """Rows of an epoch's ``n`` examples that rank ``rank`` trains on: ``rank::world``.

    Returns:
        int64 (ceil((n - rank) / world),) increasing row indices.
    """
    return np.arange(rank, n, world, dtype=np.int64)


def shard_bounds(lo: int, hi: int, rank: int, world: int) -> tuple[int, int]:
    """Local slice of the rank's shard holding global rows ``[lo, hi)``.

    Row ``g`` of the epoch is local row ``(g - rank) / world`` of rank ``g % world``; the
    local rows of ``[lo, hi)`` are ``[count(lo), count(hi))`` with ``count(x)`` the number
    of shard rows below ``x``.
    """

    def count(x: int) -> int:
        return max(0, -(-(x - rank) // world))

    return count(lo), count(hi)
