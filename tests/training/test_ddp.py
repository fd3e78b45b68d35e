"""Both training tasks are DDP-ready: DistributedDataParallel wraps them as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ralm.data.toy import make_toy_dataset
from ralm.lookalike.clustering import cluster_seeds
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import seed_sets, training_examples
from ralm.lookalike.seed_index import transform_seeds
from ralm.lookalike.task import LookalikeTrainTask, make_batch
from ralm.training.trainer import train_step
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.sampler import LogUniformSampler
from ralm.user.task import UserTrainTask
from ralm.user.tower import UserItemModel


@pytest.fixture()
def process_group(tmp_path: Path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_wraps_both_tasks_and_matches_the_plain_step(process_group) -> None:
    ds = make_toy_dataset(n_users=200, n_items=40, seed=0)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, ds.n_users, 32), rng.integers(0, ds.n_items, 32)
    losses = []
    for wrap in (False, True):
        torch.manual_seed(0)
        net = UserItemModel(ds.fields, ds.n_items, UserModelConfig(dim=8, mlp_hidden=[8]))
        task = UserTrainTask(net, LogUniformSampler(ds.n_items, ds.item_popularity_rank()),
                             UserTrainConfig())  # fmt: skip
        batch = task.make_batch(ds, users, items, np.random.default_rng(1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        run = DistributedDataParallel(task) if wrap else task
        losses.append([train_step(run, opt, batch) for _ in range(3)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)

    seeds = seed_sets(ds)
    universal = np.random.default_rng(2).normal(size=(ds.n_users, 6)).astype(np.float32)
    u, i, y = training_examples(ds, seeds, 2, "uniform", np.random.default_rng(3))
    losses = []
    for wrap in (False, True):
        torch.manual_seed(0)
        model = LookalikeModel(LookalikeConfig(m=6, h=4, k=2))
        emb = transform_seeds(model, universal, seeds.users)
        cl = cluster_seeds(emb, seeds.offsets, k=2)
        b = make_batch(cl, emb, seeds, universal[u[:64]], u[:64], i[:64], y[:64])
        task2 = LookalikeTrainTask(model)
        opt2 = torch.optim.Adam(model.parameters(), lr=1e-2)
        run2 = DistributedDataParallel(task2) if wrap else task2
        losses.append([train_step(run2, opt2, b) for _ in range(3)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
