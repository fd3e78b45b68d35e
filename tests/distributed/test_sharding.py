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
