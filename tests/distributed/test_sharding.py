"""The sharding rule and the one-process behaviour of ``ralm.training.distributed``."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.data.toy import make_toy_dataset
from ralm.errors import ConfigError
from ralm.training.distributed import (
    SINGLE,
    DistContext,
    check_global_batch,
    distributed_run,
    env_world,
    shard_bounds,
    shard_rows,
)
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.sampler import LogUniformSampler
from ralm.user.task import UserEpochData, UserTrainTask
from ralm.user.tower import UserItemModel


@pytest.mark.parametrize("n", [1, 7, 64, 100, 129])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_step_of_the_ranks_covers_the_global_batch_exactly(n: int, world: int) -> None:
    batch = 4 * world
    shards = [shard_rows(n, r, world) for r in range(world)]
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))  # a partition
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        got = []
        for r in range(world):
            a, b = shard_bounds(lo, hi, r, world)
            got.extend(shards[r][a:b].tolist())
        assert sorted(got) == list(range(lo, hi))  # naive reference: the global batch


def test_single_process_context_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with distributed_run() as ctx:
        assert ctx == SINGLE and not ctx.enabled and ctx.is_main
        assert ctx.broadcast({"a": 1}) == {"a": 1}
        assert ctx.all_sum([1.5, 2.0]) == [1.5, 2.0]
        ctx.barrier()


def test_bad_environment_and_batch_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2 is outside WORLD_SIZE=2"):
        env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="integers"):
        env_world()
    with pytest.raises(ConfigError, match=r"batch_size 255 .* divisible by WORLD_SIZE=2"):
        check_global_batch(255, DistContext(0, 2))
    check_global_batch(256, DistContext(1, 2))


def test_user_shards_draw_distinct_deterministic_negatives() -> None:
    ds = make_toy_dataset(n_users=100, n_items=50, seed=0)
    tc = UserTrainConfig(n_negatives=8)
    net = UserItemModel(ds.fields, ds.n_items, UserModelConfig(dim=8, mlp_hidden=[8]))
    task = UserTrainTask(net, LogUniformSampler(ds.n_items, ds.item_popularity_rank()), tc)
    users, items = np.arange(40), np.arange(40) % ds.n_items

    def negs(rank: int) -> np.ndarray:
        data = UserEpochData(task, ds, users, items, np.random.default_rng([0, 3]))
        part = data.shard(shard_rows(40, rank, 2), rank, 2)
        assert len(part) == 20
        assert np.array_equal(part.users, users[rank::2])
        return part.batch(0, 20).neg.numpy()

    n0, n1 = negs(0), negs(1)
    assert np.array_equal(n0, negs(0))  # same seed and epoch -> same draws (resume)
    assert not np.array_equal(n0, n1)  # ranks draw from distinct streams


def test_softmax_shard_builds_the_global_batch_and_marks_its_rows() -> None:
    """A DDP rank's softmax batch (``shard`` then the Trainer's ``rank_batch``): the global
    batch's N items are the columns, the rank's rows (``g % world == rank``) are marked,
    ``seen`` is (B_r, N) against a naive loop over (user, item) pairs, and the two ranks'
    rows together are the one-process batch."""
    import torch

    from ralm.lookalike.clustering import cluster_seeds
    from ralm.lookalike.samples import seed_sets, training_examples
    from ralm.lookalike.task import LookalikeEpochData
    from ralm.training.distributed import DistContext, shard_rows
    from ralm.training.trainer import rank_batch

    ds = make_toy_dataset(n_users=200, n_items=30, clicks_per_user=10, seed=3)
    seeds = seed_sets(ds)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(seeds.users.size, 4)).astype(np.float32)
    cl = cluster_seeds(emb, seeds.offsets, k=2, seed=0)
    users, items, labels = training_examples(ds, seeds, 2, "uniform", rng)
    universal = rng.normal(size=(ds.n_users, 6)).astype(np.float32)
    log_q = np.zeros(ds.n_items)
    data = LookalikeEpochData(
        cl, emb, seeds, lambda u, i, y: universal[u], users[:45], items[:45], labels[:45], log_q
    )
    one = data.batch(5, 45)  # one process: every row its own
    assert one.rows is None and len(one) == 40 and one.seen is not None
    it = ds.interactions
    train = (it.split == 0) & (it.label > 0)
    pairs = set(zip(it.user[train].tolist(), it.item[train].tolist(), strict=True))
    seen = []
    for rank in range(2):
        ctx = DistContext(rank=rank, world_size=2, local_rank=rank)
        part = data.shard(shard_rows(45, rank, 2), rank, 2)
        b, n_r = rank_batch(part, 5, 45, ctx)
        want = np.flatnonzero(np.arange(5, 45) % 2 == rank)
        assert b.rows is not None and np.array_equal(b.rows.numpy(), want)
        assert n_r == len(b) == want.size == 20
        assert torch.equal(b.centroids, one.centroids) and torch.equal(b.labels, one.labels)
        assert torch.equal(b.target, torch.from_numpy(universal[users[5:45][want]]))
        assert b.seen is not None and tuple(b.seen.shape) == (20, 40)
        cols = items[5:45]
        naive = [
            [(int(users[5 + r]), int(c)) in pairs or int(c) == int(items[5 + r]) for c in cols]
            for r in want
        ]
        assert torch.equal(b.seen, torch.tensor(naive))
        seen.append((want, b.seen))
    rebuilt = torch.zeros_like(one.seen)
    for want, s in seen:
        rebuilt[torch.from_numpy(want)] = s
    assert torch.equal(rebuilt, one.seen)
