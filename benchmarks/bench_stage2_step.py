"""Stage-2 training step at several data sizes: does a step's work depend on the data size?

Not a test. Builds wechat-shaped seed sets (``--scales`` of the preset's 2,984,724 users,
43,500 items and 7,014,038 TRAIN seed rows; Zipf item popularity), timing-only clusters
(random slots, random centroids: the step's work does not depend on their values) and runs
the real stage-2 step, the default softmax loss: ``LookalikeEpochData.batch`` (targets,
leave-self-out, the softmax's (B, B) ``seen`` grid, logQ) then ``LookalikeTrainTask``,
backward and Adam, one thread (``--threads``), batch 256 (``--batch``), one sampled
negative per click (``--neg-ratios``, the default ``neg_ratio``; a comma list compares
several). Printed per scale and ratio, each figure the best of ``--repeat`` runs:

* ``batch_ms``: building one batch from the epoch's examples;
* ``step_ms``: forward + backward + Adam on the built batch (no data-size term: the floor
  of a step that only does the loss's work); ``step_cpu_ms`` the same step's CPU time
  (``time.process_time``, all threads: on a shared host it leaves out the time the
  process waited for a core, so it compares code versions better than the wall time);
* ``samples_per_s``: both together, and ``floor_samples_per_s`` = batch / ``step_ms``;
* ``positives_per_s``: clicks per second (an epoch is one pass over the TRAIN clicks, with
  ``1 + neg_ratio`` rows each) and ``paper_epoch_min``: 7,014,038 clicks at that rate;
* ``seen_ms`` / ``seen_pairwise_ms``: the ``seen`` grid now (``SeedSets.seen``, the rows'
  own seed lists against the sorted columns) and as it was built before (``SeedSets.find``
  over all B x B pairs, binary searches into every seed row), on the same batches;
* ``matmul_ms``: the step's largest GEMM alone, ``(B*k, h) @ (h, 2P)`` (P positives);
  ``matmul_bf16_ms`` the same in bfloat16 (``--matmul-dtypes float32,bfloat16`` compares
  the step in float32 and in mixed precision, ``[lookalike_train] matmul_dtype``).

Run::

    python benchmarks/bench_stage2_step.py --scales 0.1,0.3,1.0 --steps 100
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

USERS, ITEMS, SEED_ROWS = 2_984_724, 43_500, 7_014_038  # wechat preset, TRAIN seed rows


def seed_sets(scale: float, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Wechat-shaped :class:`SeedSets` (Zipf item popularity, distinct (item, user) rows)."""
    from ralm.lookalike.samples import SeedSets

    n_users, n_items = int(USERS * scale), int(ITEMS * scale)
    w = 1.0 / np.arange(1, n_items + 1) ** 0.9
    counts = np.minimum(rng.multinomial(int(SEED_ROWS * scale), w / w.sum()), n_users)
    item = np.repeat(np.arange(n_items, dtype=np.int64), counts)
    keys = np.unique(item * n_users + rng.integers(0, n_users, item.size))  # distinct rows
    item, user = np.divmod(keys, n_users)
    offsets = np.r_[0, np.cumsum(np.bincount(item, minlength=n_items))].astype(np.int64)
    return SeedSets(offsets=offsets, users=user, n_users=n_users)


def timing_clusters(seeds, k: int, h: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Clusters of the right shapes (slot of every seed row, sizes, mask, centroids)."""
    from ralm.lookalike.clustering import SeedClusters

    counts = seeds.counts
    item_of = np.repeat(np.arange(counts.size), counts)
    slots = np.maximum(np.minimum(counts, k), 1)[item_of]
    assign = (rng.integers(0, 1 << 30, item_of.size) % slots).astype(np.int64)
    sizes = np.bincount(item_of * k + assign, minlength=counts.size * k).reshape(-1, k)
    cent = np.maximum(rng.normal(size=(counts.size, k, h)).astype(np.float32), 0.0)
    cent *= (sizes > 0)[..., None]
    return SeedClusters(cent, sizes > 0, sizes.astype(np.int64), assign)


def run_scale(
    scale: float,
    steps: int,
    repeat: int,
    k: int,
    h: int,
    neg_ratio: int = 4,
    b: int = 256,
    matmul_dtype: str = "float32",
) -> dict[str, float]:
    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.lookalike.task import LookalikeEpochData, LookalikeTrainTask
    from ralm.training.optim import dense_adam

    rng = np.random.default_rng(0)
    seeds = seed_sets(scale, rng)
    clusters = timing_clusters(seeds, k, h, rng)
    seed_emb = np.maximum(rng.normal(size=(seeds.users.size, h)).astype(np.float32), 0.0)
    universal = rng.normal(size=(seeds.n_users, h)).astype(np.float32)  # (U, m = h)
    n = b * (steps + 5)
    # one positive in 1 + neg_ratio: a seed row's (user, item), else a random pair
    f_pos = 1.0 / (1 + neg_ratio)
    rows = rng.integers(0, seeds.users.size, n)
    pos = rng.random(n) < f_pos
    users = np.where(pos, seeds.users[rows], rng.integers(0, seeds.n_users, n))
    item_of_row = np.searchsorted(seeds.offsets, rows, side="right") - 1
    items = np.where(pos, item_of_row, rng.integers(0, seeds.n_items, n))
    labels = pos.astype(np.float32)
    log_q = np.log(np.maximum(seeds.counts, 1) / seeds.counts.sum())

    def targets(u: np.ndarray, i: np.ndarray, y: np.ndarray) -> np.ndarray:
        return universal[u]

    data = LookalikeEpochData(
        clusters,
        seed_emb,
        seeds,
        targets,
        users,
        items,
        labels,
        item_log_q=log_q,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=h, h=h, k=k))
    task = LookalikeTrainTask(model, loss="softmax", matmul_dtype=getattr(torch, matmul_dtype))
    opt = dense_adam(model.param_groups(1e-3), lr=1e-3)  # as `ralm train lookalike`
    seeds.seen(users[:b], items[:b])  # the transposed index, built once per run
    seeds.find(users[:1], items[:1])  # the sorted keys, built once per run
    best: dict[str, float] = {}
    for _ in range(repeat):
        t_batch = t_step = t_seen = t_old = c_step = 0.0
        for s in range(5 + steps):
            lo, hi = s * b, (s + 1) * b
            t0 = time.perf_counter()
            batch = data.batch(lo, hi)
            t1, c1 = time.perf_counter(), time.process_time()
            loss = task(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t2, c2 = time.perf_counter(), time.process_time()
            u, i = users[lo:hi], items[lo:hi]
            seeds.seen(u, i)
            t3 = time.perf_counter()
            seeds.find(np.repeat(u, i.size), np.tile(i, u.size))
            t4 = time.perf_counter()
            if s >= 5:  # warm-up steps left out
                t_batch, t_step = t_batch + t1 - t0, t_step + t2 - t1
                c_step += c2 - c1
                t_seen, t_old = t_seen + t3 - t2, t_old + t4 - t3
        got = {
            "batch_ms": 1e3 * t_batch / steps,
            "step_ms": 1e3 * t_step / steps,
            "step_cpu_ms": 1e3 * c_step / steps,
            "seen_ms": 1e3 * t_seen / steps,
            "seen_pairwise_ms": 1e3 * t_old / steps,
        }
        best = {key: min(v, best.get(key, v)) for key, v in got.items()}
    p = round(f_pos * b)
    x, y = torch.randn(b * k, h), torch.randn(h, 2 * p)
    t_mm = t_mm16 = float("inf")
    x16, y16 = x.bfloat16(), y.bfloat16()
    for _ in range(20):
        t0 = time.perf_counter()
        torch.mm(x, y)
        t1 = time.perf_counter()
        torch.mm(x16, y16)
        t_mm, t_mm16 = min(t_mm, t1 - t0), min(t_mm16, time.perf_counter() - t1)
    out = {
        "scale": scale,
        "batch": b,
        "threads": torch.get_num_threads(),
        "users": seeds.n_users,
        "items": seeds.n_items,
        "seed_rows": int(seeds.users.size),
        **{key: round(v, 3) for key, v in best.items()},
        "samples_per_s": round(b / ((best["batch_ms"] + best["step_ms"]) / 1e3)),
        "floor_samples_per_s": round(b / (best["step_ms"] / 1e3)),
        "neg_ratio": neg_ratio,
        "matmul_dtype": matmul_dtype,
        # an epoch is one pass over the TRAIN clicks: (1 + neg_ratio) rows per click
        "positives_per_s": round(f_pos * b / ((best["batch_ms"] + best["step_ms"]) / 1e3)),
        "paper_epoch_min": round(
            SEED_ROWS / (f_pos * b / ((best["batch_ms"] + best["step_ms"]) / 1e3)) / 60, 1
        ),
        "matmul_ms": round(1e3 * t_mm, 3),
        "matmul_bf16_ms": round(1e3 * t_mm16, 3),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="0.1,0.3,1.0", help="Comma list of preset shares.")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--h", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256, help="Rows per step.")
    ap.add_argument(
        "--neg-ratios", default="1", help="Comma list of sampled negatives per positive."
    )
    ap.add_argument(
        "--matmul-dtypes",
        default="float32",
        help="Comma list of [lookalike_train] matmul_dtype (float32, bfloat16) to compare.",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for scale in (float(s) for s in args.scales.split(",")):
        for r in (int(x) for x in args.neg_ratios.split(",")):
            for dt in args.matmul_dtypes.split(","):
                got = run_scale(scale, args.steps, args.repeat, args.k, args.h, r, args.batch, dt)
                print(json.dumps(got), flush=True)


if __name__ == "__main__":
    main()
