"""Stage-2 benchmark: per-item seed k-means at the wechat scale, training samples/s, peak RSS.

Seed counts per item come from the wechat synthetic preset (``ralm.data.synth.generate``:
43,500 items, every click is a seed) or, with ``--source zipf``, from a Zipf law with the
same totals. Seed embeddings are synthetic ReLU vectors around ``--groups`` centres (k-means
cost does not depend on where they come from). Measured:

* cold k-means of every item (faiss per item, one thread, and/or batched torch Lloyd on
  ``--threads``), ``niter`` iters;
* warm start after the embeddings moved a little (as after one epoch of training),
  ``warm_niter`` iters from the previous centroids, against a cold restart on the same
  moved embeddings (``cold_again``: compare time and inertia);
* stage-2 training steps (leave-self-out gather, transform, score_pairs, BCE, Adam) on
  batches drawn from the same seeds, in samples/s;
* peak RSS of the process.

Printed beside them: the GEMM floor of one Lloyd iteration (every seed against k centroids,
``S x h x k`` multiply-adds, timed in the same run) and the cold / warm times over
``(niter + 1)`` / ``(warm_niter + 1)`` floors (the +1: the final exact assignment), plus
the faiss build that loaded and, with ``--scale < 1``, the times extrapolated to all items
(linear in the seeds: x all seeds / seeds kept).

Run (``--scale 0.1`` for a quick look; full scale needs ~8 GiB)::

    python benchmarks/bench_lookalike.py --method faiss,torch --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def seed_counts(source: str, scale: float, seed: int) -> tuple[np.ndarray, int]:
    """Seeds per item, int64 (n_items,) (the kept share), and the seeds of all items."""
    if source == "synth":
        from ralm.data.synth import generate, preset

        t0 = time.perf_counter()
        data = generate(preset("wechat", seed=seed))
        counts = np.bincount(data.click_item, minlength=data.config.n_items)
        print(f"generated wechat preset in {time.perf_counter() - t0:.1f}s")
    else:
        n_items, n_clicks = 43_500, 8_891_670
        w = 1.0 / np.arange(1, n_items + 1) ** 0.9
        counts = np.random.default_rng(seed).multinomial(n_clicks - n_items, w / w.sum()) + 1
    total = int(counts.sum())
    if scale < 1.0:
        keep = np.random.default_rng(seed).random(counts.size) < scale
        counts = counts[keep]
    return counts.astype(np.int64), total


def synthetic_embeddings(n: int, h: int, groups: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, h)).astype(np.float32)
    out = np.empty((n, h), dtype=np.float32)
    for lo in range(0, n, 1 << 20):  # chunked to bound temporaries
        m = min(n, lo + (1 << 20)) - lo
        x = centres[rng.integers(0, groups, m)] + rng.normal(size=(m, h)).astype(np.float32)
        out[lo : lo + m] = np.maximum(x, 0.0)
    return out


def faiss_build() -> dict[str, object]:
    """Which faiss loaded: version, compile options (DD = runtime SIMD dispatch)."""
    import faiss

    out: dict[str, object] = {"faiss_version": faiss.__version__}
    out["compile_options"] = faiss.get_compile_options()
    for mod in ("swigfaiss_avx512", "swigfaiss_avx2"):
        try:
            __import__(f"faiss.{mod}")
            out[mod] = "importable"
        except ImportError:
            out[mod] = "absent"
    return out


def gemm_floor(seed_emb: np.ndarray, k: int, repeat: int = 2) -> float:
    """Seconds of the one GEMM of a Lloyd iteration: every seed (S, h) against k centroids.

    ``S x h x k`` multiply-adds in row chunks of 2^20 seeds against one (h, k) matrix (the
    per-item centroids only change which k columns a row meets, not the work).
    """
    x = torch.from_numpy(seed_emb)
    c = torch.randn(seed_emb.shape[1], k)  # (h, k)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for lo in range(0, x.shape[0], 1 << 20):
            torch.mm(x[lo : lo + (1 << 20)], c)  # (chunk, k)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_training(clusters, seed_emb, offsets, n_users, h, k, steps, seed) -> float:
    """Samples/s of the real stage-2 step on batches of 256 (20% positives)."""
    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.lookalike.samples import SeedSets
    from ralm.lookalike.train import leave_self_out

    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, offsets[-1])
    seeds = SeedSets(offsets=offsets, users=users, n_users=n_users)
    universal = rng.normal(size=(min(n_users, 100_000), h)).astype(np.float32)
    torch.manual_seed(seed)
    model = LookalikeModel(LookalikeConfig(m=h, h=h, k=k))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = 256
    counts = np.diff(offsets)

    def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = rng.integers(0, offsets[-1], b // 5)  # positives: (seed user, its item)
        pos_items = np.searchsorted(offsets, rows, side="right") - 1
        neg_items = rng.choice(counts.size, b - rows.size)
        u = np.concatenate([users[rows], rng.integers(0, n_users, neg_items.size)])
        i = np.concatenate([pos_items, neg_items])
        y = np.concatenate([np.ones(rows.size), np.zeros(neg_items.size)]).astype(np.float32)
        return u, i, y

    def step() -> None:
        u, i, y = batch()
        cent, mask, sizes = leave_self_out(clusters, seed_emb, seeds, u, i)
        e_u = model.transform(torch.from_numpy(universal[u % universal.shape[0]]))
        c, m, n = (torch.from_numpy(a) for a in (cent, mask, sizes))
        s = model.score_pairs(e_u, c, m, sizes=n)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model.logit(s), torch.from_numpy(y)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * b / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["synth", "zipf"], default="synth")
    ap.add_argument("--scale", type=float, default=1.0, help="Share of items kept.")
    ap.add_argument("--h", type=int, default=128)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--warm-niter", type=int, default=5)
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--method", default="faiss", help="Comma list: faiss,torch.")
    ap.add_argument("--steps", type=int, default=200, help="Training steps timed.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (k-means, floor).")
    ap.add_argument("--max-elements", type=int, default=1 << 22, help="torch bucket chunk.")
    ap.add_argument("--no-train", action="store_true", help="Skip the training-step timing.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ralm.lookalike.clustering import cluster_seeds
    from ralm.lookalike.clustering_batched import lloyd_batched

    counts, all_seeds = seed_counts(args.source, args.scale, args.seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seed_emb = synthetic_embeddings(int(offsets[-1]), args.h, args.groups, args.seed)
    res: dict[str, object] = {
        "items": int(counts.size),
        "seeds": int(offsets[-1]),
        "items_with_kmeans": int((counts > args.k).sum()),
        "seeds_of_all_items": all_seeds,
        "median_seeds": float(np.median(counts)),
        "max_seeds": int(counts.max()),
        "h": args.h,
        "k": args.k,
    }
    print(json.dumps(res), flush=True)
    print(json.dumps(faiss_build()), flush=True)
    full = all_seeds / max(1, int(offsets[-1]))  # extrapolation factor (linear in seeds)
    floor = gemm_floor(seed_emb, args.k)
    print(
        json.dumps(
            {
                "gemm_floor_one_lloyd_iter_s": round(floor, 3),
                "gemm_floor_cold_s": round(floor * (args.niter + 1), 2),
                "gemm_floor_warm_s": round(floor * (args.warm_niter + 1), 2),
                "threads": args.threads,
            }
        ),
        flush=True,
    )
    methods = args.method.split(",")
    colds = {}
    for method in methods:  # cold starts on the original embeddings
        if method == "faiss":
            colds[method] = cluster_seeds(
                seed_emb, offsets, args.k, seed=args.seed, niter=args.niter
            )
        elif method == "torch":
            colds[method] = lloyd_batched(
                seed_emb,
                offsets,
                args.k,
                niter=args.niter,
                seed=args.seed,
                max_elements=args.max_elements,
            )
        else:
            raise SystemExit(f"unknown method {method}")
        c = colds[method]
        print(
            json.dumps(
                {
                    "method": method,
                    "cold_s": round(c.seconds, 2),
                    "cold_vs_floor": round(c.seconds / (floor * (args.niter + 1)), 2),
                    "cold_s_full_scale_extrapolated": round(c.seconds * full, 1),
                    "cold_inertia": c.inertia,
                }
            ),
            flush=True,
        )
    # the embeddings move a little, as after one epoch of training (in place: memory)
    rng = np.random.default_rng(args.seed + 1)
    for lo in range(0, seed_emb.shape[0], 1 << 20):
        blk = seed_emb[lo : lo + (1 << 20)]
        blk += 0.05 * np.abs(rng.normal(size=blk.shape)).astype(np.float32)
    for method in methods:
        c = colds[method]
        if method == "faiss":
            warm = cluster_seeds(
                seed_emb,
                offsets,
                args.k,
                init=c.centroids,
                init_mask=c.mask,
                warm_niter=args.warm_niter,
            )
            again = cluster_seeds(seed_emb, offsets, args.k, seed=args.seed, niter=args.niter)
        else:
            warm = lloyd_batched(
                seed_emb,
                offsets,
                args.k,
                init=c.centroids,
                init_mask=c.mask,
                niter=args.warm_niter,
                max_elements=args.max_elements,
            )
            again = lloyd_batched(
                seed_emb,
                offsets,
                args.k,
                niter=args.niter,
                seed=args.seed,
                max_elements=args.max_elements,
            )
        print(
            json.dumps(
                {
                    "method": method,
                    "warm_s": round(warm.seconds, 2),
                    "warm_vs_floor": round(warm.seconds / (floor * (args.warm_niter + 1)), 2),
                    "warm_s_full_scale_extrapolated": round(warm.seconds * full, 1),
                    "warm_inertia": warm.inertia,
                    "cold_again_s": round(again.seconds, 2),
                    "cold_again_inertia": again.inertia,
                }
            ),
            flush=True,
        )
        del again
    if args.no_train:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps({"peak_rss_gib": round(rss, 2)}))
        return
    clusters = colds[methods[0]]
    assert clusters is not None
    n_users = 2_984_724 if args.source == "synth" else 1_000_000
    sps = bench_training(
        clusters, seed_emb, offsets, n_users, args.h, args.k, args.steps, args.seed
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"train_samples_per_s": round(sps, 1), "peak_rss_gib": round(rss, 2)}))


if __name__ == "__main__":
    main()
