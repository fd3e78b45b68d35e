"""Soak benchmark (not a test): recommend + clicks + re-clustering together, for N seconds.

The real HTTP server (uvicorn on 127.0.0.1, in a thread of this process, so this process's
RSS is the server's) serves a service over a random look-alike model of a chosen shape;
its index is bootstrapped from clicks and clustered at start. Then, concurrently:

* ``--clients`` async clients post ``/recommend`` for random known users, back to back;
* one writer posts ``/clicks`` batches: clicks on existing items, plus ``--new-items-per-s``
  brand-new items, each clicked by enough users to become servable by the fast path;
* the service's own background job runs the fast path and a full re-cluster every
  ``--recluster-every`` seconds (changed items only), publishing new versions.

Every ``--report-every`` seconds it prints one line: recommend and clicks p50/p99 of the
window, requests, errors, items in the store / index / servable, and RSS. At the end it
fits RSS against the number of items (least squares over the reports after warm-up) and
prints the memory per item added, next to what the index arrays of one item take
(centroids k*h, Gram k*k, global vector h in float32, cluster sizes k in int64), with a
verdict.

Run (a short soak, ~2.5 minutes on 2 cores)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_soak.py --seconds 120 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rss_mb() -> float:
    """Current resident set size (MB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")  # ms


def build_service(args: argparse.Namespace, state: Path) -> Any:
    """A RalmService over a random model; ``args.items`` items bootstrapped from clicks."""
    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.serve.config import ServeConfig
    from ralm.serve.runtime import ServingModel, TableEmbedder
    from ralm.serve.service import RalmService
    from ralm.serve.store import Click

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    scorer = LookalikeModel(LookalikeConfig(m=args.h, h=args.h, k=args.k)).eval()
    users = rng.normal(size=(args.users, args.h)).astype(np.float32)  # (U, m)
    ids = np.asarray([f"u{i}" for i in range(args.users)])
    model = ServingModel(scorer, TableEmbedder(ids, users), k=args.k, h=args.h)
    cfg = ServeConfig(
        state_dir=state,
        recluster_every_s=args.recluster_every,
        fast_path_every_s=2.0,
        min_seeds=args.seeds_per_item,
        fast_path_min_seeds=3,
        synchronous="NORMAL",
    )
    svc = RalmService(model, cfg)
    now = time.time()
    clicks = [
        Click(f"u{u}", f"item{j}", now)
        for j in range(args.items)
        for u in rng.choice(args.users, args.seeds_per_item, replace=False)
    ]
    svc.add_clicks(clicks)
    return svc


def index_bytes_per_item(k: int, h: int) -> int:
    """Bytes the index arrays of one item take: centroids, Gram, global vector, sizes."""
    return 4 * (k * h + k * k + h) + 8 * k + 1 + 8


class Window:
    """Latencies and counts since the last report."""

    def __init__(self) -> None:
        self.rec: list[float] = []
        self.clk: list[float] = []
        self.errors = 0
        self.requests = 0

    def take(self) -> Window:
        out = Window()
        out.rec, out.clk, out.errors, out.requests = self.rec, self.clk, self.errors, self.requests
        self.rec, self.clk, self.errors, self.requests = [], [], 0, 0
        return out


async def soak(svc: Any, url: str, args: argparse.Namespace) -> list[dict[str, float]]:
    import httpx

    win = Window()
    stop = time.monotonic() + args.seconds
    reports: list[dict[str, float]] = []
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def recommender(i: int) -> None:
            r = np.random.default_rng(100 + i)
            while time.monotonic() < stop:
                body = {"user_id": f"u{r.integers(args.users)}", "n": 20}
                t0 = time.perf_counter()
                resp = await c.post("/recommend", json=body)
                win.requests += 1
                if resp.status_code != 200:
                    win.errors += 1
                win.rec.append(time.perf_counter() - t0)

        async def writer() -> None:
            r = np.random.default_rng(7)
            period, new_id = 0.5, 0
            while time.monotonic() < stop:
                t_next = time.monotonic() + period
                n_new = max(1, round(args.new_items_per_s * period))
                events = []
                for _ in range(n_new):
                    clickers = r.choice(args.users, args.seeds_per_item, replace=False)
                    events += [{"user_id": f"u{u}", "item_id": f"new{new_id}"} for u in clickers]
                    new_id += 1
                n_items = svc.store.n_items()
                events += [
                    {"user_id": f"u{r.integers(args.users)}", "item_id": f"item{j}"}
                    for j in r.integers(0, min(args.items, n_items), size=100)
                ]
                t0 = time.perf_counter()
                resp = await c.post("/clicks", json={"clicks": events})
                win.requests += 1
                if resp.status_code != 200:
                    win.errors += 1
                win.clk.append(time.perf_counter() - t0)
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))

        async def reporter() -> None:
            t_start = time.monotonic()
            while time.monotonic() < stop:
                await asyncio.sleep(min(args.report_every, max(0.0, stop - time.monotonic())))
                w = win.take()
                h = svc.health()
                rep = {
                    "t_s": time.monotonic() - t_start,
                    "rec_p50_ms": pct(w.rec, 50),
                    "rec_p99_ms": pct(w.rec, 99),
                    "clk_p50_ms": pct(w.clk, 50),
                    "clk_p99_ms": pct(w.clk, 99),
                    "requests": w.requests,
                    "errors": w.errors,
                    "store_items": svc.store.n_items(),
                    "index_items": h["items"],
                    "servable": h["servable_items"],
                    "rss_mb": rss_mb(),
                }
                reports.append(rep)
                print(
                    f"t={rep['t_s']:6.0f}s  recommend p50/p99 {rep['rec_p50_ms']:6.1f}/"
                    f"{rep['rec_p99_ms']:6.1f} ms  clicks p50/p99 {rep['clk_p50_ms']:6.1f}/"
                    f"{rep['clk_p99_ms']:6.1f} ms  req {w.requests:6d} err {w.errors:3d}  "
                    f"items store/index/servable {rep['store_items']}/{rep['index_items']}/"
                    f"{rep['servable']}  RSS {rep['rss_mb']:7.1f} MB",
                    flush=True,
                )

        await asyncio.gather(*(recommender(i) for i in range(args.clients)), writer(), reporter())
    return reports


def verdict(reports: list[dict[str, float]], start: dict[str, float], k: int, h: int) -> None:
    # the first window is warm-up (server, clients, the scorer's first workspaces): the fit
    # starts at its end
    pts = [(r["index_items"], r["rss_mb"]) for r in reports]
    x = np.asarray([p[0] for p in pts], np.float64)
    y = np.asarray([p[1] for p in pts], np.float64)
    want = index_bytes_per_item(k, h) / 1024
    if len(pts) < 2 or float(np.ptp(x)) == 0:
        print("verdict: no items were added; nothing to fit")
        return
    slope_kib = float(np.polyfit(x, y, 1)[0]) * 1024  # KiB per item
    added = int(x[-1] - x[0])
    ratio = slope_kib / want
    print(
        f"\nitems added {added:,} (index {int(x[0]):,} -> {int(x[-1]):,}); RSS "
        f"{y[0]:.1f} -> {y[-1]:.1f} MB after warm-up (at start-up {start['rss_mb']:.1f} MB, "
        f"{int(start['index_items']):,} items; peak {peak_mb():.1f} MB)"
    )
    print(
        f"memory per item added: {slope_kib:.1f} KiB (least squares over {len(pts)} points); "
        f"index arrays of one item (k={k}, h={h}): {want:.1f} KiB; ratio {ratio:.1f}x"
    )
    if ratio <= 4.0:
        print("verdict: bounded: RSS grows with the index itself (arrays + store + ids)")
    else:
        print(f"verdict: RSS grows {ratio:.1f}x faster than the index: look for retained copies")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--report-every", type=float, default=30.0)
    p.add_argument("--items", type=int, default=2000, help="items at start")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--h", type=int, default=128)
    p.add_argument("--seeds-per-item", type=int, default=12)
    p.add_argument("--clients", type=int, default=8, help="concurrent recommend clients")
    p.add_argument("--new-items-per-s", type=float, default=40.0)
    p.add_argument("--recluster-every", type=float, default=10.0, help="T of the full cycle")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    import uvicorn

    from ralm.serve.app import create_app

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        svc = build_service(args, Path(d) / "state")
        svc.start()  # clusters the bootstrap items
        h = svc.health()
        start = {"index_items": h["items"], "rss_mb": rss_mb()}
        print(
            f"start-up {time.perf_counter() - t0:.1f}s: {h['items']} items "
            f"({h['servable_items']} servable), k={args.k}, h={args.h}, "
            f"RSS {start['rss_mb']:.1f} MB",
            flush=True,
        )
        config = uvicorn.Config(
            create_app(svc, start_service=False), host="127.0.0.1", port=0, log_level="warning"
        )
        server = uvicorn.Server(config)
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            reports = asyncio.run(soak(svc, f"http://127.0.0.1:{port}", args))
        finally:
            server.should_exit = True
            th.join(10)
            svc.close()
    total = sum(int(r["requests"]) for r in reports)
    errors = sum(int(r["errors"]) for r in reports)
    print(f"\nrequests {total:,}, non-200 answers {errors}")
    verdict(reports, start, args.k, args.h)


if __name__ == "__main__":
    main()
