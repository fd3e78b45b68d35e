"""Serving benchmark on a wechat-scale synthetic index (43,500 items, k = 20, h = 128).

Not a test. The index is random (centroids, cluster sizes) and the users are a random
universal-embedding table; the model is an untrained ``LookalikeModel`` of the paper's
shape. What is measured, in one run:

* floors: one memory pass over the centroid table, and a plain torch matmul of the scoring
  shape ``(I*k, h) @ (h, 2B)`` for B = 1 and batched, in a worker thread;
* the stage-2 scorer alone over the whole index (B = 1 and batched) from terms prepared
  once per chunk, in a worker thread as the service runs it
  (``benchmarks/bench_scorer.py`` has the detailed scorer figures);
* single-request latency p50/p99 in-process and over HTTP (uvicorn on 127.0.0.1); the
  HTTP p50 target (<= 1.2 x in-process + 2 ms) is checked against in-process requests
  alternated one by one with the HTTP ones, so that both see the same host load;
* throughput with micro-batching at concurrency 1 / 8 / 32 / 64, in-process (concurrent
  ``arecommend`` coroutines, as the HTTP app calls it) and over HTTP (against the real
  uvicorn app on a free port, from a load generator in its OWN process, as real clients
  are other machines: keep-alive HTTP/1.1 on asyncio streams, ~0.1 ms of client CPU per
  request; ``--http-client httpx`` for async httpx, ~4.5 ms), bounded in count and time:
  req/s, latency p50/p99, the batch sizes the batcher formed, and the floor of those same
  batches (the sum of the ``(I*k, h) @ (h, 2B)`` matmul times of every batch formed) with
  the ratio of the floor's req/s to the measured one (issue 9 target: <= 1.3x), split
  into the batcher's time in its batch function over that floor (``busy_to_floor``) and
  the share of the wall time it had nothing to run (``idle_share``); over HTTP also the
  CPU ms per request of the server and of the client process;
* click ingestion rate (one transaction per batch of clicks, and one per click);
* a re-clustering cycle of the items whose seeds changed (k-means warm start + publish +
  persisting the new version);
* peak RSS.

Run (about 2-3 minutes on 2 cores)::

    python benchmarks/bench_serve.py --threads 2
    python benchmarks/bench_serve.py --items 5000 --quick      # a smoke run

The measurement helpers (floors, load report) are in ``serve_measure.py``, the HTTP load
generator in ``serve_http_load.py`` (beside this file).
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_http_load import _client_process
from serve_measure import Floors, _pct, _rss_mb, _timeit, floors, load_report


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


def inprocess(svc: Any, args: argparse.Namespace, floor: Floors | None) -> dict[str, Any]:
    """Sequential latency, and throughput of concurrent ``arecommend`` calls (asyncio, as
    the HTTP app calls it) through the micro-batcher, against the floor of its batches."""
    rng = np.random.default_rng(1)
    lat = _timeit(lambda: svc.recommend(user_id=f"u{rng.integers(args.users)}", n=50), args.n_seq)
    res: dict[str, Any] = {"p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}

    async def level(conc: int) -> dict[str, Any]:
        done: list[float] = []
        stop = time.monotonic() + args.max_seconds
        per = max(2, args.n_conc // conc)

        async def client(i: int) -> None:
            r = np.random.default_rng(100 + i)
            for _ in range(per):
                if time.monotonic() > stop:
                    break
                t0 = time.perf_counter()
                await svc.arecommend(user_id=f"u{r.integers(args.users)}", n=50)
                done.append(time.perf_counter() - t0)

        h0 = len(svc.batcher.history)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(conc)))
        wall = time.perf_counter() - t0
        full = min(conc, args.max_batch)
        return load_report(done, wall, list(svc.batcher.history)[h0:], floor, full)

    for conc in args.concurrency:
        res[f"c{conc}"] = asyncio.run(level(conc))
        print(json.dumps({f"in_process_c{conc}": res[f"c{conc}"]}), flush=True)
    return res


def over_http(svc: Any, args: argparse.Namespace, floor: Floors | None) -> dict[str, Any]:
    """The real uvicorn app on a free 127.0.0.1 port (in a thread of this process, sharing
    the service); the clients in a separate (spawned) process, on loopback.

    Reports, per level, the CPU seconds per request of this (server) process and of the
    client process beside the batches formed."""
    import multiprocessing

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
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running torch
    here, there = ctx.Pipe()
    client_args = (url, args.users, max(args.concurrency) + 4, there, args.http_client)
    proc = ctx.Process(target=_client_process, args=client_args)
    proc.start()
    out: dict[str, Any] = {}
    try:
        here.send((1, 3, 60.0, 0))  # warm-up (connection, first requests)
        here.recv()
        # sequential latency, one in-process request and one HTTP request in turn, so that
        # both see the same load of a shared host
        rng = np.random.default_rng(2)
        lat, ip = [], []
        for i in range(args.n_seq):
            t0 = time.perf_counter()
            svc.recommend(user_id=f"u{rng.integers(args.users)}", n=50)
            ip.append(time.perf_counter() - t0)
            here.send((1, 1, 120.0, 1000 + i))
            lat += here.recv()[0]
        out["p50_ms"], out["p99_ms"] = _pct(lat, 50), _pct(lat, 99)
        out["in_process_alternated_p50_ms"] = _pct(ip, 50)
        for conc in args.concurrency:
            h0 = len(svc.batcher.history)
            c0 = time.process_time()
            here.send((conc, max(2, args.n_conc // conc), args.max_seconds, 200))
            done, wall, client_cpu = here.recv()
            server_cpu = time.process_time() - c0
            full = min(conc, args.max_batch)
            rep = load_report(done, wall, list(svc.batcher.history)[h0:], floor, full)
            rep["server_cpu_ms_per_req"] = round(server_cpu / max(1, len(done)) * 1000, 2)
            rep["client_cpu_ms_per_req"] = round(client_cpu / max(1, len(done)) * 1000, 2)
            out[f"c{conc}"] = rep
            print(json.dumps({f"http_c{conc}": out[f"c{conc}"]}), flush=True)
        here.send(None)
        proc.join(30)
        rng = np.random.default_rng(2)
        clicks = [
            {"user_id": f"u{rng.integers(args.users)}", "item_id": f"item{j % 50}"}
            for j in range(1000)
        ]
        with httpx.Client(base_url=url, timeout=60) as c:
            t0 = time.perf_counter()
            for _ in range(5):
                c.post("/clicks", json={"clicks": clicks}).raise_for_status()
            out["clicks_http_batch1000_per_s"] = 5000 / (time.perf_counter() - t0)
        return out
    finally:
        if proc.is_alive():
            proc.terminate()
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
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--n-seq", type=int, default=30, help="sequential requests for p50/p99")
    p.add_argument("--n-conc", type=int, default=128, help="requests per concurrency level")
    p.add_argument("--max-seconds", type=float, default=20.0, help="cap per level")
    p.add_argument(
        "--window-fraction",
        type=float,
        default=0.25,
        help="batcher window: at most this share of the previous batch's time",
    )
    p.add_argument(
        "--hold-fraction",
        type=float,
        default=0.25,
        help="batcher hold: after a batch of S that left at most S/2 queued, wait for S "
        "more requests up to this share of its run time (0: no hold)",
    )
    p.add_argument(
        "--http-client",
        choices=["raw", "httpx"],
        default="raw",
        help="HTTP load generator (always its own process): raw keep-alive HTTP/1.1 on "
        "asyncio streams, or async httpx (several ms of client CPU per request)",
    )
    p.add_argument(
        "--skip-extras",
        action="store_true",
        help="only latency and throughput (no ingestion, no re-clustering)",
    )
    p.add_argument("--ingest-clicks", type=int, default=100_000)
    p.add_argument("--recluster-items", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = p.parse_args()
    if args.quick:
        args.n_seq, args.n_conc, args.concurrency = 10, 64, [1, 32]
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"shape": {"items": args.items, "k": args.k, "h": args.h}}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        svc = build_service(args, Path(d) / "state")
        svc.batcher.window_fraction = args.window_fraction
        svc.batcher.hold_fraction = args.hold_fraction
        report["batcher"] = {
            "max_batch": args.max_batch,
            "window_ms": args.window_ms,
            "window_fraction": args.window_fraction,
            "hold_fraction": args.hold_fraction,
            "threads": args.threads,
        }
        report["startup_s"] = time.perf_counter() - t0
        report["rss_after_start_mb"] = _rss_mb()
        try:
            report["floors"] = floors(svc, args.batch, 3)
            snap = svc.holder.current()
            table = torch.from_numpy(np.ascontiguousarray(snap.centroids[snap.servable_rows]))
            floor = Floors(table.reshape(-1, table.shape[-1]), args.k)
            report["in_process"] = inprocess(svc, args, floor)
            if not args.skip_extras:
                report["ingestion"] = ingestion(svc, args)
            report["http"] = over_http(svc, args, floor)
            report["batched_floor_ms"] = {str(b): v for b, v in sorted(floor.ms.items())}
            if not args.skip_extras:
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
    ip, hp = report["http"]["in_process_alternated_p50_ms"], report["http"]["p50_ms"]
    target = 1.2 * ip + 2.0
    print(
        f"HTTP p50 {hp:.1f} ms vs in-process p50 {ip:.1f} ms (alternated requests): "
        f"{hp / ip:.2f}x, overhead "
        f"{hp - ip:+.1f} ms; target <= 1.2 x in-process + 2 ms = {target:.1f} ms: "
        f"{'met' if hp <= target else 'not met'}"
    )


if __name__ == "__main__":
    main()
