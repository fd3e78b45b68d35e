"""Re-clustering benchmark: one full cycle, single process vs Ray tasks; or k-means alone.

Not a test. Two modes.

``--mode kmeans`` (the paper-scale re-clustering figure of issue 9): the seed counts of the
wechat synthetic preset (43,500 items, 8,891,670 seeds; ``--scale`` keeps a random share of
the items), synthetic ReLU seed embeddings around ``--groups`` centres (h = 128), and
``cluster_items`` (THE dispatch) of every item per backend and thread count: a cold start
(``--niter`` 20 Lloyd iterations) and a warm start from those centroids after the
embeddings moved (``--warm-niter`` 5), with the k-means objective (inertia) of each. Printed
beside every time, measured in the same run: the GEMM floor of the same Lloyd work (one
``(S, h) @ (h, k)`` float32 matmul over all seeds per iteration, best of 3, timed right
before and after every run; the ratio uses their mean, times ``niter + 1`` with the final
assignment), the faiss build that loaded and the peak RSS.

``--mode cycle`` (default): a synthetic SQLite seed store holds ``--items`` items with
``--seeds`` distinct clickers each (drawn from a random universal-embedding table of
``--users`` users); the model is an untrained ``LookalikeModel`` of the paper's shape
(m = h = 128, k = 20, the configured k-means backend, 20 cold Lloyd iterations). What is
measured, in one run:

* the local backend's full cycle (read seeds with one batch call, embed, transform,
  k-means, global vectors, Gram matrices, publish);
* the Ray backend's full cycle over the same store, twice: the first includes starting the
  workers (imports, fetching the weights and the embedder from the object store), the
  second is warm; plus the time ``ray.init`` took;
* a floor in the same process: one Lloyd iteration's distance GEMM over all seeds,
  ``(S, h) @ (h, k)``, and ``niter`` times that (the k-means work a cycle cannot avoid);
* whether the Ray index equals the local one (it must, with either k-means backend).

Run::

    python benchmarks/bench_recluster.py                     # 4,000 items (< 2 min here)
    python benchmarks/bench_recluster.py --items 43500       # paper's item count
    python benchmarks/bench_recluster.py --mode kmeans --backends torch --threads-list 1,2
    python benchmarks/bench_recluster.py --mode kmeans --scale 0.1 --backends torch,faiss
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from ralm.common.threads import apply_wait_policy

apply_wait_policy()  # before torch loads: the service's OpenMP wait policy

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ralm.distributed.ray_index import RayBackend  # noqa: E402
from ralm.lookalike.config import LookalikeConfig  # noqa: E402
from ralm.lookalike.model import LookalikeModel  # noqa: E402
from ralm.lookalike.seed_index import SeedIndex  # noqa: E402
from ralm.serve.config import ServeConfig  # noqa: E402
from ralm.serve.index_holder import IndexHolder  # noqa: E402
from ralm.serve.recluster import BuilderBackend, LocalBackend, Reclusterer  # noqa: E402
from ralm.serve.runtime import ServingModel, TableEmbedder  # noqa: E402
from ralm.serve.store import SQLiteSeedStore  # noqa: E402

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


def wechat_counts(scale: float, seed: int, cache: str | None) -> tuple[np.ndarray, int]:
    """Seeds per item of the wechat synthetic preset (every click is a seed), the kept
    share of items, and the seeds of all items."""
    if cache and Path(cache).exists():
        counts = np.load(cache)
    else:
        from ralm.data.synth import generate, preset

        data = generate(preset("wechat", seed=0))
        counts = np.bincount(data.click_item, minlength=data.config.n_items).astype(np.int64)
        del data
        if cache:
            np.save(cache, counts)
    total = int(counts.sum())
    if scale < 1.0:
        counts = counts[np.random.default_rng(seed).random(counts.size) < scale]
    return counts, total


def synthetic_embeddings(n: int, h: int, groups: int, seed: int) -> np.ndarray:
    """(n, h) float32 ReLU vectors around ``groups`` random centres (in blocks: memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, h)).astype(np.float32)
    out = np.empty((n, h), dtype=np.float32)
    for lo in range(0, n, 1 << 20):
        m = min(n, lo + (1 << 20)) - lo
        x = centres[rng.integers(0, groups, m)] + rng.normal(size=(m, h)).astype(np.float32)
        np.maximum(x, 0.0, out=out[lo : lo + m])
    return out


def lloyd_gemm_floor(x: np.ndarray, k: int, repeat: int = 3) -> float:
    """Best seconds of one Lloyd iteration's GEMM: every seed (S, h) against k centroids,
    ``S x h x k`` multiply-adds in row blocks of 2^20 (``torch.mm`` into a reused output)."""
    xt = torch.from_numpy(x)
    c = torch.randn(x.shape[1], k)  # (h, k)
    out = torch.empty(1 << 20, k)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for lo in range(0, xt.shape[0], 1 << 20):
            blk = xt[lo : lo + (1 << 20)]
            torch.mm(blk, c, out=out[: blk.shape[0]])
        best = min(best, time.perf_counter() - t0)
    return best


def faiss_build() -> dict[str, object]:
    """Which faiss loaded: version, compile options (DD = runtime SIMD dispatch), level."""
    import faiss

    out: dict[str, object] = {"faiss_version": faiss.__version__}
    out["compile_options"] = faiss.get_compile_options().strip()
    simd = getattr(faiss, "SIMDConfig", None)
    if simd is not None:
        out["simd_level"] = simd.get_level_name()
    return out


def kmeans_main(args: argparse.Namespace) -> None:
    """``--mode kmeans``: cold and warm k-means of every item, per backend and threads."""
    from ralm.lookalike.clustering import cluster_items

    counts, all_seeds = wechat_counts(args.scale, args.seed, args.counts_cache)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_seeds = int(offsets[-1])
    x = synthetic_embeddings(n_seeds, args.dim, args.groups, args.seed)
    info = {"mode": "kmeans", "items": int(counts.size), "seeds": n_seeds,
            "seeds_of_all_items": all_seeds, "scale": args.scale,
            "items_with_kmeans": int((counts > args.k).sum()),
            "median_seeds": float(np.median(counts)), "max_seeds": int(counts.max()),
            "k": args.k, "h": args.dim, "niter": args.niter, "warm_niter": args.warm_niter,
            "k_rule": args.k_rule, **faiss_build()}  # fmt: skip
    print(json.dumps(info), flush=True)
    for backend in args.backends.split(","):
        for threads in (int(t) for t in args.threads_list.split(",")):
            torch.set_num_threads(threads)
            kw = {"backend": backend, "niter": args.niter, "warm_niter": args.warm_niter,
                  "seed": args.seed, "k_rule": args.k_rule}  # fmt: skip
            # the floor right before and after every timed run: the host's load moves
            floors = [lloyd_gemm_floor(x, args.k)]
            cold = cluster_items(x, offsets, args.k, **kw)  # type: ignore[arg-type]
            floors.append(lloyd_gemm_floor(x, args.k))
            _shift(x, args.seed + 1, +1.0)  # the embeddings move, as after one epoch
            warm = cluster_items(x, offsets, args.k, init=cold.centroids,
                                 init_mask=cold.mask, **kw)  # type: ignore[arg-type]  # fmt: skip
            floors.append(lloyd_gemm_floor(x, args.k))
            _shift(x, args.seed + 1, -1.0)  # back to the original embeddings
            f_cold, f_warm = (floors[0] + floors[1]) / 2, (floors[1] + floors[2]) / 2
            row = {
                "backend": backend,
                "threads": threads if backend == "torch" else 1,
                "gemm_floor_one_iter_s": [round(f, 3) for f in floors],
                "cold_s": round(cold.seconds, 2),
                "cold_floor_s": round(f_cold * (args.niter + 1), 2),
                "cold_over_floor": round(cold.seconds / (f_cold * (args.niter + 1)), 2),
                "cold_inertia": cold.inertia,
                "warm_s": round(warm.seconds, 2),
                "warm_floor_s": round(f_warm * (args.warm_niter + 1), 2),
                "warm_over_floor": round(warm.seconds / (f_warm * (args.warm_niter + 1)), 2),
                "warm_inertia": warm.inertia,
            }
            if args.scale < 1.0:
                full = all_seeds / n_seeds
                row["cold_s_all_items_extrapolated"] = round(cold.seconds * full, 1)
                row["warm_s_all_items_extrapolated"] = round(warm.seconds * full, 1)
            print(json.dumps(row), flush=True)
            del cold, warm
            if backend == "faiss":
                break  # faiss runs one thread per item whatever torch's setting
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peak_rss_gib": round(rss, 2)}), flush=True)


def _shift(x: np.ndarray, seed: int, sign: float) -> None:
    """Add (sign=+1) or remove (-1) the same small positive noise, in place, in blocks."""
    rng = np.random.default_rng(seed)
    for lo in range(0, x.shape[0], 1 << 20):
        blk = x[lo : lo + (1 << 20)]
        blk += np.float32(sign * 0.05) * np.abs(rng.normal(size=blk.shape)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["cycle", "kmeans"], default="cycle")
    ap.add_argument("--scale", type=float, default=1.0, help="kmeans: share of items kept")
    ap.add_argument("--backends", default="torch", help="kmeans: comma list of torch,faiss")
    ap.add_argument("--threads-list", default="1,2", help="kmeans: torch threads to run")
    ap.add_argument("--niter", type=int, default=20, help="kmeans: cold Lloyd iterations")
    ap.add_argument("--warm-niter", type=int, default=5, help="kmeans: warm iterations")
    ap.add_argument("--groups", type=int, default=50, help="kmeans: embedding centres")
    ap.add_argument("--k-rule", default="fixed", help="kmeans: 'fixed' or 'seeds'")
    ap.add_argument("--counts-cache", default=None, help="kmeans: .npy of the seed counts")
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
    if args.mode == "kmeans":
        kmeans_main(args)
        return
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
