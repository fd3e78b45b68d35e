"""Seed-store benchmark: SQLite vs Redis (without AOF, AOF everysec, AOF always).

Not a test. Starts its own redis-server on a free loopback port for each persistence mode
(stopped by its PID), and measures for each store, in one run:

* click ingestion, batches of 1,000 clicks per ``add_clicks`` call, and one click per call;
* the floor for Redis: a plain pipeline of one ``ZADD`` per click (the least work a click
  can cost there), so the ratio store / floor shows what the atomic script adds;
* ``bulk_import`` of the same clicks into an empty store;
* ``seeds_many`` over all items vs a loop of ``seeds`` (the floor it must beat);
* ``clicks_since`` paging through every event, and ``items(changed_only=True)``.

Run (about a minute on 2 cores)::

    python benchmarks/bench_store.py
    python benchmarks/bench_store.py --clicks 20000 --quick
    # SQLite bulk_import only: the empty-store load vs the general path, alternated
    python benchmarks/bench_store.py --bulk-only --clicks 1000000 --users 300000 --items 5000
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ralm.serve.redis_store import RedisSeedStore, connect
from ralm.serve.seed_store import Click, SeedStore
from ralm.serve.store import SQLiteSeedStore


@contextmanager
def redis_server(root: Path, aof: str | None) -> Iterator[str]:
    """A redis-server on a free loopback port; ``aof`` = appendfsync mode or None."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(root)]
    cmd += ["--appendonly", "yes", "--appendfsync", aof] if aof else ["--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(500):
            try:
                connect(url).close()
                break
            except Exception:
                time.sleep(0.01)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def make_clicks(n: int, users: int, items: int, seed: int = 3) -> list[Click]:
    rng = random.Random(seed)
    now = time.time()
    return [
        Click(f"u{rng.randrange(users)}", f"item{rng.randrange(items)}", now + i * 1e-3)
        for i in range(n)
    ]


def measure(st: SeedStore, clicks: list[Click], n_single: int, url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for lo in range(0, len(clicks), 1000):
        st.add_clicks(clicks[lo : lo + 1000])
    out["batch1000_clicks_per_s"] = len(clicks) / (time.perf_counter() - t0)
    later = [Click(c.user_id, c.item_id, c.ts + 1e6) for c in clicks[:n_single]]
    t0 = time.perf_counter()
    for c in later:
        st.add_clicks([c])
    out["single_click_calls_per_s"] = n_single / (time.perf_counter() - t0)
    if url is not None:  # floor: one ZADD per click, pipelined, no script, no trimming
        r = connect(url)
        t0 = time.perf_counter()
        for lo in range(0, len(clicks), 1000):
            pipe = r.pipeline(transaction=False)
            for c in clicks[lo : lo + 1000]:
                pipe.zadd("floor:" + c.item_id, {c.user_id: c.ts})
            pipe.execute()
        out["floor_zadd_per_s"] = len(clicks) / (time.perf_counter() - t0)
        out["store_vs_floor"] = out["batch1000_clicks_per_s"] / out["floor_zadd_per_s"]
        r.close()
    ids = [s.item_id for s in st.items()]
    t0 = time.perf_counter()
    many = st.seeds_many(ids, 100)
    out["seeds_many_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = {i: st.seeds(i, 100) for i in ids}
    out["seeds_loop_s"] = time.perf_counter() - t0
    assert many == loop
    out["seeds_many_speedup"] = out["seeds_loop_s"] / out["seeds_many_s"]
    t0 = time.perf_counter()
    w, n = 0, 0
    while True:
        page, w = st.clicks_since(w, limit=10_000)
        if not page:
            break
        n += len(page)
    out["clicks_since_events_per_s"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["n_changed"] = len(st.items(changed_only=True))
    out["items_changed_s"] = time.perf_counter() - t0
    return out


def bulk(st: SeedStore, clicks: list[Click]) -> float:
    t0 = time.perf_counter()
    st.bulk_import((c.user_id, c.item_id, c.ts) for c in clicks)
    return len(clicks) / (time.perf_counter() - t0)


def bulk_only(clicks: list[Click], repeat: int) -> None:
    """Alternated rounds: one-pass load of an empty store, then the general path."""
    rates: dict[str, list[float]] = {"empty_store_load": [], "general_path": []}
    for r in range(repeat):
        for name in rates:
            with tempfile.TemporaryDirectory() as d:
                st = SQLiteSeedStore(Path(d) / "s.db")
                st._bulk_load_empty = name == "empty_store_load"
                rate = bulk(st, clicks)
                st.close()
            rates[name].append(rate)
            print(f"round {r} {name}: {rate:,.0f} clicks/s", flush=True)
    print(json.dumps({"clicks": len(clicks), "bulk_import_rows_per_s": rates}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clicks", type=int, default=100_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--single", type=int, default=300, help="one-click calls measured")
    p.add_argument("--quick", action="store_true", help="SQLite FULL and Redis without AOF only")
    p.add_argument(
        "--bulk-only",
        action="store_true",
        help="only SQLite bulk_import into an empty store: the one-pass load alternated "
        "with the general (upsert) path, --repeat times each",
    )
    p.add_argument("--repeat", type=int, default=2, help="rounds of --bulk-only")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    clicks = make_clicks(args.clicks, args.users, args.items)
    if args.bulk_only:
        bulk_only(clicks, args.repeat)
        return
    report: dict[str, Any] = {"clicks": args.clicks, "items": args.items}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        st: SeedStore = SQLiteSeedStore(root / "s.db", synchronous="FULL")
        report["sqlite_full"] = measure(st, clicks, args.single, None)
        st.close()
        st = SQLiteSeedStore(root / "b.db")
        report["sqlite_full"]["bulk_import_rows_per_s"] = bulk(st, clicks)
        st.close()
        modes = [None] if args.quick else [None, "everysec", "always"]
        for aof in modes:
            name = f"redis_aof_{aof}" if aof else "redis_no_aof"
            with redis_server(root / name, aof) as url:
                st = RedisSeedStore(url, prefix="bench:")
                report[name] = measure(st, clicks, args.single, url)
                st.close()
                st = RedisSeedStore(url, prefix="bulk:")
                report[name]["bulk_import_rows_per_s"] = bulk(st, clicks)
                st.close()
    print(json.dumps(report, indent=2))
    base = report["sqlite_full"]["batch1000_clicks_per_s"]
    for name in [k for k in report if k.startswith("redis")]:
        r = report[name]
        print(
            f"{name}: {r['batch1000_clicks_per_s']:.0f} clicks/s batched "
            f"({r['batch1000_clicks_per_s'] / base:.1f}x SQLite FULL, "
            f"{r['store_vs_floor']:.2f}x its ZADD floor), "
            f"{r['single_click_calls_per_s']:.0f} one-click calls/s"
        )


if __name__ == "__main__":
    main()
