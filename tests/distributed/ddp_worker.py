"""One rank of the data-parallel tests (run by ``torch.distributed.run`` or alone).

Usage: ``python ddp_worker.py MODE OUT RESULTS EPOCHS [--resume]``. Each rank trains the toy
run of ``MODE`` (``user``, ``lookalike`` or ``trainer``) in run folder ``OUT`` and writes
``RESULTS/rank<r>.json`` (the sha256 of its final weights, the per-epoch history, the world
size) and ``RESULTS/rank<r>.safetensors`` (the weights).
"""

from __future__ import annotations

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


def run_lookalike(out: Path, epochs: int, resume: bool) -> tuple[nn.Module, list[dict[str, Any]]]:
    from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
    from ralm.lookalike.train import train_lookalike

    ds = make_toy_dataset(n_users=300, n_items=40, clicks_per_user=12, seed=1)
    group = np.asarray(ds.extra["toy"]["group"])
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(int(group.max()) + 1, 12))
    universal = (centres[group] + 0.7 * rng.normal(size=(ds.n_users, 12))).astype(np.float32)

    def target(users: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
        return universal[users]

    cfg = LookalikeConfig(m=12, h=8, k=3)
    # pointwise BCE: every example's loss depends on its own row only, so the 2-process
    # run must equal the 1-process one; the listwise softmax loss takes its negatives from
    # the rank's half of the batch (docs/DISTRIBUTED.md), equal only in distribution
    tc = LookalikeTrainConfig(
        epochs=epochs, batch_size=64, seed=0, patience=0, loss="bce", neg_sampling="uniform"
    )
    res = train_lookalike(ds, cfg, universal, target, out, tc, resume=resume)
    hist = [dict(r, recluster_calls=res.recluster_calls) for r in res.history]
    return res.model, hist


def run_trainer(out: Path, epochs: int, resume: bool) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Stage 1's task under the shared Trainer with negatives fixed per example row (no
    per-rank draws), so 1 and 2 processes must follow the same curve up to rounding."""
    from ralm.training import Monitor, Trainer
    from ralm.training.trainer import LoopState
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

    with distributed_run() as ctx:
        assert ctx.world_size == int(os.environ.get("WORLD_SIZE", "1"))
        state = Trainer(task, opt, Stage(), tc, Monitor("val"), name="t", dist=ctx).fit()
    return net, state.history


RUNS = {"user": run_user, "lookalike": run_lookalike, "trainer": run_trainer}


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
