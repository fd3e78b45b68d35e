"""Stage-1 training throughput (samples/s) and peak RSS on ML-100K and the wechat preset.

Each dataset runs in its own subprocess so that its peak RSS is its own. Per dataset: a
fixed number of optimisation steps of the real training step (``ralm.user.train.train_step``:
batch from arrays with target exclusion, eq. 3 negatives, tower forward, sampled softmax,
Adam), after a few warm-up steps; plus the time of batch building alone, to show that data
loading is not the bottleneck.

Each dataset runs once per ``--negatives`` value (default 3, 10, 100: the peer's figures
are at 3 and 100 negatives per positive). Prepare the data first (neither is committed to
the repository); an ML-100K-shaped synthetic set stands in for the real one::

    ralm data prepare movielens-100k --out /tmp/ml100k
    ralm data synth --preset small --users 943 --items 1682 --clicks 100000 \
        --format encoded --out /tmp/ml100k-synth
    ralm data synth --preset wechat --format encoded --out /tmp/wechat

Run::

    python benchmarks/bench_user.py --ml100k /tmp/ml100k --wechat /tmp/wechat --steps 200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def run_one(
    path: str,
    steps: int,
    warmup: int,
    batch_size: int,
    dim: int,
    threads: int,
    dense: bool,
    negatives: int = 10,
) -> dict:
    """Time ``steps`` training steps on the dataset at ``path``; returns the figures."""
    from ralm.data.batching import gather_users
    from ralm.data.encoded import EncodedDataset
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.examples import epoch_examples, positive_pairs
    from ralm.user.optim import StageOneOptimizer
    from ralm.user.sampler import LogUniformSampler
    from ralm.user.task import UserTrainTask
    from ralm.user.tower import UserItemModel
    from ralm.user.train import train_step

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ds = EncodedDataset.load(path)
    users, items = positive_pairs(ds)
    cfg = UserModelConfig(dim=dim, sparse_grad=False if dense else None)
    tc = UserTrainConfig(batch_size=batch_size, n_negatives=negatives)
    sampler = LogUniformSampler(ds.n_items, ds.item_popularity_rank())
    rng = np.random.default_rng(0)
    eu, ei = epoch_examples(users, items, tc.max_pos_per_user, rng)
    prep_s = time.perf_counter() - t0
    torch.manual_seed(0)
    net = UserItemModel(ds.fields, ds.n_items, cfg)
    opt = StageOneOptimizer(net, tc)
    task = UserTrainTask(net, sampler, tc)
    n_rows = eu.size

    def rows(step: int) -> tuple[np.ndarray, np.ndarray]:
        lo = (step * batch_size) % max(n_rows - batch_size, 1)
        return eu[lo : lo + batch_size], ei[lo : lo + batch_size]

    for s in range(warmup):
        bu, bi = rows(s)
        train_step(task, opt, task.make_batch(ds, bu, bi, rng))
    t1 = time.perf_counter()
    losses = []
    for s in range(warmup, warmup + steps):
        bu, bi = rows(s)
        losses.append(train_step(task, opt, task.make_batch(ds, bu, bi, rng)))
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        bu, bi = rows(s)
        gather_users(ds, bu, exclude_items=bi)
        sampler.sample((bu.size, tc.n_negatives), rng)
    data_s = time.perf_counter() - t2
    return {
        "dataset": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "train_rows": int(users.size),
        "epoch_rows": int(n_rows),
        "load_prep_s": round(prep_s, 2),
        "steps": steps,
        "batch_size": batch_size,
        "dim": dim,
        "threads": threads,
        "negatives": negatives,
        "optimizer": "lazy Adam" if net.item_embedding.sparse else "dense Adam",
        "samples_per_s": round(steps * batch_size / train_s, 1),
        "ms_per_step": round(1000 * train_s / steps, 2),
        "data_ms_per_step": round(1000 * data_s / steps, 2),
        "epoch_minutes_est": round(n_rows / (steps * batch_size / train_s) / 60, 2),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ml100k", help="encoded ML-100K folder (ralm data prepare)")
    p.add_argument("--wechat", help="encoded wechat-preset folder (ralm data synth)")
    p.add_argument("--steps", type=int, default=200, help="timed steps per dataset")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--dense", action="store_true", help="force dense Adam (default: auto)")
    p.add_argument("--negatives", default="3,10,100", help="comma list of negatives per positive")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one dataset, print JSON
    a = p.parse_args()
    if a.one:
        res = run_one(
            a.one, a.steps, a.warmup, a.batch_size, a.dim, a.threads, a.dense, int(a.negatives)
        )
        print(json.dumps(res))
        return
    paths = [x for x in (a.ml100k, a.wechat) if x]
    if not paths:
        p.error("give --ml100k and/or --wechat")
    results = []
    for path in paths:
        for neg in a.negatives.split(","):
            cmd = [sys.executable, __file__, "--one", path, "--steps", str(a.steps)]
            cmd += ["--warmup", str(a.warmup), "--batch-size", str(a.batch_size)]
            cmd += ["--dim", str(a.dim), "--threads", str(a.threads), "--negatives", neg]
            cmd += ["--dense"] if a.dense else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    keys = list(results[0])
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  " + "  ".join(f"{r['dataset']:>16}" for r in results))
    for k in keys[1:]:
        print(f"{k:{width}}  " + "  ".join(f"{r[k]!s:>16}" for r in results))


if __name__ == "__main__":
    main()
