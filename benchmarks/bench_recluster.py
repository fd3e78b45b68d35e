"""Re-clustering benchmark: one full cycle, single process vs Ray tasks.

Not a test. A synthetic SQLite seed store holds ``--items`` items with ``--seeds`` distinct
clickers each (drawn from a random universal-embedding table of ``--users`` users); the
model is an untrained ``LookalikeModel`` of the paper's shape (m = h = 128, k = 20, faiss
k-means, 20 cold Lloyd iterations). What is measured, in one run:

* the local backend's full cycle (read seeds with one batch call, embed, transform,
  k-means, global vectors, Gram matrices, publish);
* the Ray backend's full cycle over the same store, twice: the first includes starting the
  workers (imports, fetching the weights and the embedder from the object store), the
  second is warm; plus the time ``ray.init`` took;
* a floor in the same process: one Lloyd iteration's distance GEMM over all seeds,
  ``(S, h) @ (h, k)``, and ``niter`` times that (the k-means work a cycle cannot avoid);
* whether the Ray index equals the local one (it must, with the faiss backend).

Run::

    python benchmarks/bench_recluster.py                     # 4,000 items (< 2 min here)
    python benchmarks/bench_recluster.py --items 43500       # paper's item count
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.distributed.ray_index import RayBackend
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import SeedIndex
from ralm.serve.config import ServeConfig
from ralm.serve.index_holder import IndexHolder
from ralm.serve.recluster import BuilderBackend, LocalBackend, Reclusterer
from ralm.serve.runtime import ServingModel, TableEmbedder
from ralm.serve.store import SQLiteSeedStore

log = logging.getLogger("bench_recluster")


def gemm_floor(s: int, h: int, k: int, repeat: int = 5) -> float:
    """Best wall time of one (S, h) @ (h, k) float32 matmul (one Lloyd distance step)."""
    x = torch.randn(s, h)
    c = torch.randn(h, k)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(x, c)
        best = min(best, time.perf_counter() - t0)
    return best


def make_store(path: Path, items: int, seeds: int, users: int, seed: int) -> SQLiteSeedStore:
    rng = np.random.default_rng(seed)
    store = SQLiteSeedStore(path, synchronous="NORMAL")

    def clicks() -> Any:
        for i in range(items):
            for t, u in enumerate(rng.choice(users, seeds, replace=False).tolist()):
                yield (f"u{u}", f"item{i:06d}", 1000.0 + t)

    store.bulk_import(clicks())
    return store


def cycle(
    store: SQLiteSeedStore, serving: ServingModel, backend: BuilderBackend, tmp: Path
) -> tuple[float, SeedIndex]:
    store.mark_all_changed()
    cfg = ServeConfig(state_dir=tmp, min_seeds=1, fast_path=False)
    holder = IndexHolder(SeedIndex.empty(serving.k, serving.h))
    job = Reclusterer(store, holder, serving, cfg, backend=backend)
    t0 = time.perf_counter()
    job.run_full()
    return time.perf_counter() - t0, holder.current()


def same(a: SeedIndex, b: SeedIndex) -> bool:
    rows = np.asarray([b.row_of[i] for i in a.item_ids.tolist()])
    got = b.gather(rows)
    return all(
        np.array_equal(getattr(a, n), got[n])
        for n in ("centroids", "mask", "sizes", "global_vec", "gram", "n_seeds")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=4000, help="items re-clustered (paper: 43500)")
    ap.add_argument("--seeds", type=int, default=100, help="seeds per item")
    ap.add_argument("--users", type=int, default=200_000, help="users in the embedding table")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--dim", type=int, default=128, help="m = h")
    ap.add_argument("--cpus", type=int, default=None, help="Ray CPUs (default: all)")
    ap.add_argument("--items-per-task", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the driver")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    cfg = LookalikeConfig(m=args.dim, h=args.dim, k=args.k)
    model = LookalikeModel(cfg).eval()
    rng = np.random.default_rng(args.seed)
    table = rng.normal(size=(args.users, args.dim)).astype(np.float32)  # (U, m)
    user_ids = np.asarray([f"u{j}" for j in range(args.users)])
    serving = ServingModel(scorer=model, embedder=TableEmbedder(user_ids, table))
    out: dict[str, Any] = {"items": args.items, "seeds_per_item": args.seeds, "k": args.k,
                           "h": args.dim, "niter": cfg.kmeans_niter}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        store = make_store(tmp / "seeds.sqlite3", args.items, args.seeds, args.users, args.seed)
        out["store_build_s"] = round(time.perf_counter() - t0, 2)

        local_s, local_idx = cycle(store, serving, LocalBackend(), tmp)
        out["local_s"] = round(local_s, 3)

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        out["ray_init_s"] = round(time.perf_counter() - t0, 2)
        out["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        backend = RayBackend(items_per_task=args.items_per_task)
        ray_cold, _ = cycle(store, serving, backend, tmp)
        ray_warm, ray_idx = cycle(store, serving, backend, tmp)
        out["ray_tasks"] = backend.last_tasks
        out["ray_first_cycle_s"] = round(ray_cold, 3)
        out["ray_s"] = round(ray_warm, 3)
        out["identical"] = same(local_idx, ray_idx)
        backend.close()
        ray.shutdown()
        store.close()

    n_seeds = args.items * args.seeds
    floor = gemm_floor(n_seeds, args.dim, args.k)
    out["gemm_floor_one_lloyd_iter_s"] = round(floor, 4)
    out["gemm_floor_niter_s"] = round(floor * cfg.kmeans_niter, 3)
    out["local_over_ray"] = round(local_s / ray_warm, 2)
    out["local_over_floor"] = round(local_s / (floor * cfg.kmeans_niter), 1)
    out["ray_over_floor"] = round(ray_warm / (floor * cfg.kmeans_niter), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
