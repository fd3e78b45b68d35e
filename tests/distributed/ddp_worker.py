"""One rank of the data-parallel tests (run by ``torch.distributed.run`` or alone).

Usage: ``python ddp_worker.py MODE OUT RESULTS EPOCHS [--resume]``. Each rank trains the toy
run of ``MODE`` (``user``, ``lookalike``, ``lookalike_softmax`` or ``trainer``; ``softmax_step``
computes one listwise stage-2 step's loss and gradients) in run folder ``OUT`` and writes
``RESULTS/rank<r>.json`` (the sha256 of its final weights, the per-epoch history, the world
size) and ``RESULTS/rank<r>.safetensors`` (the weights).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ralm.data.toy import make_toy_dataset

torch.set_num_threads(1)


def state_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes and bytes, in name order)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_user(out: Path, epochs: int, resume: bool) -> tuple[nn.Module, list[dict[str, Any]]]:
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.train import train_user_model

    ds = make_toy_dataset(n_users=300, n_items=60, seed=0)
    cfg = UserModelConfig(dim=16, attention_units=8, mlp_hidden=[32])
    tc = UserTrainConfig(epochs=epochs, batch_size=64, eval_k=10, seed=0, patience=0)
    model = train_user_model(ds, cfg, out, tc, resume=resume)
    net = nn.Module()
    net.tower = model.tower
    net.register_buffer("item_embedding", model.item_embedding)
    return net, model.history


def _stage2_data() -> tuple[Any, np.ndarray]:
    """The toy dataset of the stage-2 runs and planted (n_users, 12) universal embeddings."""
    ds = make_toy_dataset(n_users=300, n_items=40, clicks_per_user=12, seed=1)
    group = np.asarray(ds.extra["toy"]["group"])
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(int(group.max()) + 1, 12))
    universal = (centres[group] + 0.7 * rng.normal(size=(ds.n_users, 12))).astype(np.float32)
    return ds, universal


def run_lookalike(
    out: Path, epochs: int, resume: bool, loss: str = "bce"
) -> tuple[nn.Module, list[dict[str, Any]]]:
    from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
    from ralm.lookalike.train import train_lookalike

    ds, universal = _stage2_data()

    def target(users: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
        return universal[users]

    cfg = LookalikeConfig(m=12, h=8, k=3)
    # pointwise BCE: every example's loss depends on its own row only; the listwise
    # softmax scores each click against the items of every rank's rows (global batch):
    # either way the 2-process run must equal the 1-process one
    tc = LookalikeTrainConfig(
        epochs=epochs, batch_size=64, seed=0, patience=0, loss=loss, neg_sampling="uniform"
    )
    res = train_lookalike(ds, cfg, universal, target, out, tc, resume=resume)
    hist = [dict(r, recluster_calls=res.recluster_calls) for r in res.history]
    return res.model, hist


def run_trainer(
    out: Path, epochs: int, resume: bool, nan_at: int = 0
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Stage 1's task under the shared Trainer with negatives fixed per example row (no
    per-rank draws), so 1 and 2 processes must follow the same curve up to rounding.

    ``nan_at`` > 0: the last rank's loss becomes NaN at its ``nan_at``-th step; the run
    records the error each rank raised (``error``) instead of a history."""
    from ralm.training import Monitor, Trainer
    from ralm.training.trainer import LoopState, NonFiniteLossError
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.optim import StageOneOptimizer
    from ralm.user.sampler import LogUniformSampler
    from ralm.user.task import UserTrainTask
    from ralm.user.tower import UserItemModel

    ds = make_toy_dataset(n_users=300, n_items=60, seed=0)
    tc = UserTrainConfig(epochs=epochs, batch_size=64, seed=0, patience=1)
    torch.manual_seed(0)
    cfg = UserModelConfig(dim=16, attention_units=8, mlp_hidden=[32], sparse_grad=True)
    rank = int(os.environ.get("RANK", "0"))
    net = UserItemModel(ds.fields, ds.n_items, cfg)
    task = UserTrainTask(net, LogUniformSampler(ds.n_items, ds.item_popularity_rank()), tc)
    opt = StageOneOptimizer(net, tc)
    rng = np.random.default_rng(5)
    n = 999  # 15 batches of 64 and a last one of 39 rows: 20 + 19 (weighted 40/39, 38/39)
    users = rng.integers(0, ds.n_users, n)
    items = rng.integers(0, ds.n_items, n)
    negs = rng.integers(0, ds.n_items, (n, tc.n_negatives))

    class Data:
        def __init__(self, rows: np.ndarray) -> None:
            self.rows = rows

        def __len__(self) -> int:
            return int(self.rows.size)

        def batch(self, lo: int, hi: int) -> Any:
            r = self.rows[lo:hi]
            return task.make_batch(ds, users[r], items[r], neg=negs[r])

        def shard(self, rows: np.ndarray, rank: int, world: int) -> Data:
            return Data(self.rows[rows])

    class Stage:
        def epoch_data(self, epoch: int) -> Data:
            return Data(np.random.default_rng([0, epoch]).permutation(n))

        def end_epoch(self, epoch: int) -> dict[str, Any]:
            # rank 0's metric only gets worse (patience 1: stop after epoch 2); another
            # rank's would keep improving, so a rank deciding alone would train on and hang
            return {"val": float(-epoch if rank == 0 else epoch)}

        def on_improved(self, epoch: int) -> None:
            return None

        def save(self, state: LoopState, improved: bool) -> None:
            return None

        def resume(self) -> Any:
            raise NotImplementedError

    from ralm.training.distributed import distributed_run

    class NanOnLastRank(nn.Module):
        def __init__(self, inner: nn.Module, last: bool) -> None:
            super().__init__()
            self.inner, self.last, self.calls = inner, last, 0

        def forward(self, batch: Any) -> Any:
            self.calls += 1
            loss = self.inner(batch)
            return loss * float("nan") if self.last and self.calls == nan_at else loss

    with distributed_run() as ctx:
        assert ctx.world_size == int(os.environ.get("WORLD_SIZE", "1"))
        run: nn.Module = NanOnLastRank(task, rank == ctx.world_size - 1) if nan_at else task
        trainer = Trainer(run, opt, Stage(), tc, Monitor("val"), name="t", dist=ctx)
        if not nan_at:
            return net, trainer.fit().history
        try:
            trainer.fit()
        except NonFiniteLossError as e:
            return net, [{"error": str(e)}]
    return net, [{"error": None}]


def run_softmax_step(
    out: Path, epochs: int, resume: bool
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """One listwise (softmax) stage-2 step on each of two global batches, the rows split
    over the ranks as the Trainer splits them: the global loss and the gradients of every
    parameter after the backward pass (DDP-averaged), with no optimiser step.

    Batch ``odd`` has 45 rows (23 + 22 on 2 ranks); batch ``no_clicks`` puts clicks on
    even rows only, so rank 1 has none (its items are still columns of rank 0's clicks,
    and every rank computes every column itself).
    """
    from ralm.lookalike.clustering import cluster_seeds
    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.lookalike.samples import seed_sets, training_examples
    from ralm.lookalike.seed_index import transform_seeds
    from ralm.lookalike.task import LookalikeEpochData, LookalikeTrainTask
    from ralm.training.distributed import distributed_run, shard_rows
    from ralm.training.trainer import rank_batch

    ds, universal = _stage2_data()
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=12, h=8, k=3))
    task = LookalikeTrainTask(model, loss="softmax", calib_weight=0.5)
    seeds = seed_sets(ds)
    emb = transform_seeds(model, universal, seeds.users)
    clusters = cluster_seeds(emb, seeds.offsets, k=3, seed=0)
    users, items, labels = training_examples(ds, seeds, 2, "uniform", np.random.default_rng(0))
    log_q = np.log(np.arange(1, ds.n_items + 1, dtype=np.float64))  # any correction
    pos, neg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    batches = {
        "odd": np.arange(45),
        "no_clicks": np.stack([pos[:10], neg[:10]], axis=1).ravel(),  # click, negative, ...
    }

    def targets(u: np.ndarray, i: np.ndarray, y: np.ndarray) -> np.ndarray:
        return universal[u]

    grads: dict[str, torch.Tensor] = {}
    record: dict[str, Any] = {}
    with distributed_run() as ctx:
        net: nn.Module = task
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(task)
        for name, rows in batches.items():
            n = rows.size
            data = LookalikeEpochData(
                clusters, emb, seeds, targets, users[rows], items[rows], labels[rows], log_q
            )
            part = data.shard(shard_rows(n, ctx.rank, ctx.world_size), ctx.rank, ctx.world_size)
            batch, n_r = rank_batch(part, 0, n, ctx) if ctx.enabled else (data.batch(0, n), n)
            task.zero_grad(set_to_none=True)
            loss = net(batch)
            (loss * (n_r * ctx.world_size / n)).backward()  # the Trainer's weighting
            record[f"loss_{name}"] = ctx.all_sum([float(loss.detach()) * n_r])[0] / n
            record[f"clicks_{name}"] = int(batch.own(batch.labels).sum())
            for k, p in task.named_parameters():
                assert p.grad is not None, k
                grads[f"{name}__{k.replace('.', '__')}"] = p.grad.detach().clone()
    holder = nn.Module()
    for k, g in grads.items():
        holder.register_buffer(k, g)
    return holder, [record]


RUNS = {
    "user": run_user,
    "lookalike": run_lookalike,
    "lookalike_softmax": functools.partial(run_lookalike, loss="softmax"),
    "trainer": run_trainer,
    "trainer_nan": functools.partial(run_trainer, nan_at=20),
    "softmax_step": run_softmax_step,
}


def write_results(results: Path, module: nn.Module, history: list[dict[str, Any]]) -> None:
    """This rank's weights, their hash and the history under ``results``."""
    from safetensors.torch import save_file

    rank = int(os.environ.get("RANK", "0"))
    results.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(results / f"rank{rank}.safetensors"))
    payload = {
        "hash": state_hash(module),
        "history": history,
        "world": int(os.environ.get("WORLD_SIZE", "1")),
    }
    (results / f"rank{rank}.json").write_text(json.dumps(payload))


def main() -> None:
    mode, out, results, epochs = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    module, history = RUNS[mode](out, int(epochs), "--resume" in sys.argv[5:])
    write_results(results, module, history)


if __name__ == "__main__":
    main()
