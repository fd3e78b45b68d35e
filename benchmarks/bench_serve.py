"""Serving benchmark on a wechat-scale synthetic index (43,500 items, k = 20, h = 128).

Not a test. The index is random (centroids, cluster sizes) and the users are a random
universal-embedding table; the model is an untrained ``LookalikeModel`` of the paper's
shape. What is measured, in one run:

* floors: one memory pass over the centroid table, and a plain torch matmul of the scoring
  shape ``(I*k, h) @ (h, B)`` for B = 1 and batched;
* the stage-2 scorer alone over the whole index (B = 1 and batched);
* single-request latency p50/p99 in-process and over HTTP (uvicorn on 127.0.0.1);
* throughput with micro-batching at a few concurrency levels, in-process (threads) and over
  HTTP (async httpx on loopback), bounded in count and time;
* click ingestion rate (one transaction per batch of clicks, and one per click);
* a re-clustering cycle of the items whose seeds changed (k-means warm start + publish +
  persisting the new version);
* peak RSS.

Run (about 2-3 minutes on 2 cores)::

    python benchmarks/bench_serve.py --threads 2
    python benchmarks/bench_serve.py --items 5000 --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _timeit(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _rss_mb() -> float:
    """Current resident set size (MB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))  # ms


def build_service(args: argparse.Namespace, state: Path) -> Any:
    """A RalmService over a random index of the requested shape."""
    from ralm.lookalike.clustering import SeedClusters
    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.lookalike.seed_index import index_from_clusters
    from ralm.serve.config import ServeConfig
    from ralm.serve.runtime import ServingModel, TableEmbedder
    from ralm.serve.service import RalmService

    rng = np.random.default_rng(0)
    n, k, h = args.items, args.k, args.h
    torch.manual_seed(0)
    scorer = LookalikeModel(LookalikeConfig(m=h, h=h, k=k)).eval()
    users = rng.normal(size=(args.users, h)).astype(np.float32)  # (U, m)
    ids = np.asarray([f"u{i}" for i in range(args.users)])
    sizes = rng.integers(1, 200, size=(n, k)).astype(np.int64)  # (I, k)
    clusters = SeedClusters(
        centroids=rng.normal(size=(n, k, h)).astype(np.float32),  # (I, k, h)
        mask=np.ones((n, k), dtype=bool),
        sizes=sizes,
        assign=np.zeros(0, np.int64),
    )
    offsets = np.concatenate([[0], np.cumsum(sizes.sum(1))])
    item_ids = np.asarray([f"item{j}" for j in range(n)])
    initial = index_from_clusters(scorer, clusters, offsets, item_ids)
    model = ServingModel(scorer, TableEmbedder(ids, users), initial_index=initial)
    cfg = ServeConfig(
        state_dir=state,
        recluster_every_s=3600,
        min_seeds=10,
        batch_window_ms=args.window_ms,
        max_batch=args.max_batch,
    )
    return RalmService(model, cfg)


def floors(svc: Any, batch: int, repeat: int) -> dict[str, float]:
    """Memory pass and plain matmul of the scoring shape, against the scorer itself."""
    snap = svc.holder.current()
    cen = torch.from_numpy(snap.centroids.copy())  # (I, k, h) one contiguous copy
    flat = cen.reshape(-1, cen.shape[-1])  # (I*k, h)
    nbytes = cen.numel() * cen.element_size()
    out: dict[str, float] = {"table_mb": nbytes / 2**20}
    t = min(_timeit(lambda: cen.sum(), repeat))
    out["memory_pass_ms"] = t * 1000
    out["memory_pass_gb_s"] = nbytes / t / 1e9
    for b in (1, batch):
        x = torch.randn(cen.shape[-1], b)  # (h, B)
        out[f"matmul_b{b}_ms"] = min(_timeit(lambda x=x: flat @ x, repeat)) * 1000  # (I*k, B)
        with torch.no_grad():  # a realistic E_u: transformed (post-ReLU) embeddings
            e_u = svc.model.scorer.transform(torch.randn(b, cen.shape[-1]))  # (B, h)

        def score(e_u: torch.Tensor = e_u) -> None:
            with torch.no_grad():
                for c in snap.chunks:
                    t = c.scoring_tensors
                    svc.model.scorer.score(
                        e_u, t["centroids"], t["mask"], t["global_vec"], gram=t["gram"],
                        sizes=t["sizes"],
                    )  # fmt: skip

        out[f"scorer_b{b}_ms"] = min(_timeit(score, repeat)) * 1000

    return out


def inprocess(svc: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Sequential latency and threaded throughput through the service (micro-batched)."""
    rng = np.random.default_rng(1)
    lat = _timeit(lambda: svc.recommend(user_id=f"u{rng.integers(args.users)}", n=50), args.n_seq)
    res: dict[str, Any] = {"p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}
    for conc in args.concurrency:
        done: list[float] = []
        stop = time.monotonic() + args.max_seconds
        per = max(1, args.n_conc // conc)
        b0 = svc.metrics.batch_size.count()

        def worker(i: int, per: int = per, stop: float = stop, done: list[float] = done) -> None:
            r = np.random.default_rng(100 + i)
            for _ in range(per):
                if time.monotonic() > stop:
                    break
                t0 = time.perf_counter()
                svc.recommend(user_id=f"u{r.integers(args.users)}", n=50)
                done.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        ths = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = time.perf_counter() - t0
        batches = svc.metrics.batch_size.count() - b0
        res[f"c{conc}"] = {
            "requests": len(done),
            "req_per_s": len(done) / wall,
            "p50_ms": _pct(done, 50),
            "p99_ms": _pct(done, 99),
            "mean_batch": len(done) / max(batches, 1),
        }
    return res


def over_http(svc: Any, args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn on 127.0.0.1 in a thread; async httpx clients on loopback."""
    import httpx
    import uvicorn

    from ralm.serve.app import create_app

    config = uvicorn.Config(
        create_app(svc, start_service=False), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        rng = np.random.default_rng(2)
        limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            lat = []
            for _ in range(args.n_seq):
                t0 = time.perf_counter()
                body = {"user_id": f"u{rng.integers(args.users)}", "n": 50}  # as in-process
                r = await c.post("/recommend", json=body)
                r.raise_for_status()
                lat.append(time.perf_counter() - t0)
            out["p50_ms"], out["p99_ms"] = _pct(lat, 50), _pct(lat, 99)
            for conc in args.concurrency:
                stop = time.monotonic() + args.max_seconds
                per = max(1, args.n_conc // conc)
                done: list[float] = []

                async def client(i: int, per: int = per, stop: float = stop, done: list = done):
                    r = np.random.default_rng(200 + i)
                    for _ in range(per):
                        if time.monotonic() > stop:
                            return
                        t0 = time.perf_counter()
                        body = {"user_id": f"u{r.integers(args.users)}", "n": 50}
                        resp = await c.post("/recommend", json=body)
                        resp.raise_for_status()
                        done.append(time.perf_counter() - t0)

                b0 = svc.metrics.batch_size.count()
                t0 = time.perf_counter()
                await asyncio.gather(*(client(i) for i in range(conc)))
                wall = time.perf_counter() - t0
                out[f"c{conc}"] = {
                    "requests": len(done),
                    "req_per_s": len(done) / wall,
                    "p50_ms": _pct(done, 50),
                    "p99_ms": _pct(done, 99),
                    "mean_batch": len(done) / max(svc.metrics.batch_size.count() - b0, 1),
                }
            clicks = [
                {"user_id": f"u{rng.integers(args.users)}", "item_id": f"item{j % 50}"}
                for j in range(1000)
            ]
            t0 = time.perf_counter()
            for _ in range(5):
                (await c.post("/clicks", json={"clicks": clicks})).raise_for_status()
            out["clicks_http_batch1000_per_s"] = 5000 / (time.perf_counter() - t0)
        return out

    try:
        return asyncio.run(run())
    finally:
        server.should_exit = True
        th.join(10)


def ingestion(svc: Any, args: argparse.Namespace) -> dict[str, float]:
    """Clicks/s into the SQLite store: batched transactions, and one transaction per click."""
    from ralm.serve.store import Click, SeedStore

    rng = np.random.default_rng(3)
    now = time.time()
    out = {}
    batch = [
        Click(f"u{rng.integers(args.users)}", f"item{rng.integers(args.recluster_items)}", now)
        for _ in range(args.ingest_clicks)
    ]
    t0 = time.perf_counter()
    for lo in range(0, len(batch), 1000):
        svc.add_clicks(batch[lo : lo + 1000])
    out["batch1000_full_per_s"] = len(batch) / (time.perf_counter() - t0)
    for sync in ("FULL", "NORMAL"):
        with tempfile.TemporaryDirectory() as d:
            st = SeedStore(Path(d) / "s.db", synchronous=sync)
            t0 = time.perf_counter()
            for c in batch[:300]:
                st.add_clicks([c])
            out[f"single_{sync.lower()}_per_s"] = 300 / (time.perf_counter() - t0)
            st.close()
    return out


def recluster(svc: Any, args: argparse.Namespace) -> dict[str, float]:
    """One full cycle over the items whose seeds changed (warm-started k-means)."""
    from ralm.serve.snapshot_io import save_snapshot

    changed = svc.store.items(changed_only=True)
    seeds = sum(it.n_seeds for it in changed)
    rep = svc.reclusterer.run_full()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        save_snapshot(svc.holder.current(), d)
        save_s = time.perf_counter() - t0
    return {
        "items": rep.n_items,
        "seeds": seeds,
        "cycle_s": rep.seconds,
        "of_which_persist_s_approx": save_s,
        "version": rep.version or 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=43_500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--h", type=int, default=128)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=32, help="batched floor / scorer size")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--window-ms", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--n-seq", type=int, default=30, help="sequential requests for p50/p99")
    p.add_argument("--n-conc", type=int, default=48, help="requests per concurrency level")
    p.add_argument("--max-seconds", type=float, default=10.0, help="cap per level")
    p.add_argument("--ingest-clicks", type=int, default=100_000)
    p.add_argument("--recluster-items", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = p.parse_args()
    if args.quick:
        args.n_seq, args.n_conc, args.concurrency = 10, 32, [1, 8]
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"shape": {"items": args.items, "k": args.k, "h": args.h}}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        svc = build_service(args, Path(d) / "state")
        report["startup_s"] = time.perf_counter() - t0
        report["rss_after_start_mb"] = _rss_mb()
        try:
            report["floors"] = floors(svc, args.batch, 3)
            report["in_process"] = inprocess(svc, args)
            report["ingestion"] = ingestion(svc, args)
            report["http"] = over_http(svc, args)
            report["recluster"] = recluster(svc, args)
        finally:
            svc.close()
        report["rss_end_mb"] = _rss_mb()
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report, indent=2, default=float))
    f = report["floors"]
    print(
        f"\nscorer/matmul-floor ratio: B=1 {f['scorer_b1_ms'] / f['matmul_b1_ms']:.1f}x, "
        f"B={args.batch} {f[f'scorer_b{args.batch}_ms'] / f[f'matmul_b{args.batch}_ms']:.1f}x; "
        f"in-process p50 {report['in_process']['p50_ms']:.1f} ms vs one memory pass "
        f"{f['memory_pass_ms']:.1f} ms"
    )
    ip, hp = report["in_process"]["p50_ms"], report["http"]["p50_ms"]
    target = 1.2 * ip + 2.0
    print(
        f"HTTP p50 {hp:.1f} ms vs in-process p50 {ip:.1f} ms: {hp / ip:.2f}x, overhead "
        f"{hp - ip:+.1f} ms; target <= 1.2 x in-process + 2 ms = {target:.1f} ms: "
        f"{'met' if hp <= target else 'not met'}"
    )


if __name__ == "__main__":
    main()
