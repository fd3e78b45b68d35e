"""Where a data-parallel stage-1 step spends its time: compute vs DDP gradient all-reduce.

Run under torchrun with 1 and then 2 processes on the same encoded dataset; each rank
trains ``256 / world`` rows a step (the global batch stays 256) and times 50 steps twice,
once inside ``DistributedDataParallel.no_sync()`` (no communication: the compute of a step)
and once with the gradient all-reduce::

    ralm data synth --preset small --format encoded --out /tmp/small
    torchrun --standalone --nproc_per_node 1 benchmarks/bench_ddp_step.py /tmp/small
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_ddp_step.py /tmp/small
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    from ralm.data.encoded import EncodedDataset
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.examples import positive_pairs
    from ralm.user.optim import StageOneOptimizer
    from ralm.user.sampler import LogUniformSampler
    from ralm.user.task import UserTrainTask
    from ralm.user.tower import UserItemModel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds = EncodedDataset.load(sys.argv[1])
    users, items = positive_pairs(ds)
    tc = UserTrainConfig(batch_size=256)
    torch.manual_seed(0)
    net = UserItemModel(ds.fields, ds.n_items, UserModelConfig(dim=128))
    task = UserTrainTask(net, LogUniformSampler(ds.n_items, ds.item_popularity_rank()), tc)
    opt = StageOneOptimizer(net, tc)
    model = DistributedDataParallel(task)
    rng = np.random.default_rng(rank)
    b = tc.batch_size // world
    batches = [
        task.make_batch(ds, users[s * b : (s + 1) * b], items[s * b : (s + 1) * b], rng)
        for s in range(60)
    ]

    def step(batch: object, sync: bool) -> None:
        opt.zero_grad()
        if sync:
            model(batch).backward()
        else:
            with model.no_sync():
                model(batch).backward()
        opt.step()

    for batch in batches[:10]:  # warm-up
        step(batch, True)
    ms = {}
    for sync in (False, True):
        t0 = time.perf_counter()
        for batch in batches[10:]:
            step(batch, sync)
        ms[sync] = (time.perf_counter() - t0) / 50 * 1000
    if rank == 0:
        n = sum(p.numel() for p in net.parameters())
        sparse = sum(1 for p in net.modules() if getattr(p, "sparse", False))
        print(
            f"world {world}: {b} rows/rank/step, {n:,} parameters ({sparse} sparse tables): "
            f"{ms[False]:.1f} ms/step without communication, {ms[True]:.1f} ms with the "
            f"DDP all-reduce"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
