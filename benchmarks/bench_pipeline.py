"""Paper-scale pipeline benchmark: synth -> prepare -> stage 1 -> stage 2 -> export -> serve.

Not a test. Every step runs as its own subprocess through the real CLI (``python -m
ralm ...``), so its wall time and peak RSS are its own: the peak comes from ``os.wait4``
(the kernel's ``ru_maxrss`` of that one child), not from polling. The exact command of
each step is printed and written to ``OUT/report.json``.

The launching process stays small (standard library only until the serve step): the
kernel's ``ru_maxrss`` of a child also counts the launcher's pages copied before ``exec``,
so each step's figure can include up to the launcher's own peak, printed at the end.

Steps (``--scale`` multiplies the users, items and clicks of the ``wechat`` preset,
2,984,724 users / 43,500 items / 8,891,670 clicks at 1.0):

1. ``synth``: ``ralm data synth --preset wechat --format parquet`` (the generic format);
2. ``prepare``: ``ralm data prepare OUT/synth/dataset.toml`` (read, split, encode);
3. ``stage1``: ``ralm train user`` with the caps ``--epochs`` / ``--steps-per-epoch``;
4. ``stage2``: ``ralm train lookalike`` (re-clusters every item's seeds after each epoch
   and writes the seed index) with ``--epochs`` / ``--steps-per-epoch``;
5. ``export``: ``ralm export`` (the known-user embedding table the service memory-maps);
6. ``serve``: ``ralm serve`` (uvicorn, the real app) started on a free loopback port; the
   step's wall time includes start-up (seed-store bootstrap from every click, index load);
   then ``--requests`` POST /recommend over HTTP, a share sequential and the rest at
   ``--concurrency`` in flight.

Floors measured in the same run (each in its own subprocess, with its own RSS):

* ``prepare``: one read of the Parquet tables with pyarrow plus a stable argsort of the
  click timestamps (any prepare reads the rows and orders them by time);
* ``serve``: one torch matmul of the scoring shape ``(I*k, h) @ (h, 2)`` over the trained
  seed index's centroid table (one request), on one thread in a worker thread.

Run (``/tmp/pipeline`` is scratch)::

    python benchmarks/bench_pipeline.py --scale 0.02 --out /tmp/pipeline/s002
    nohup python benchmarks/bench_pipeline.py --out /tmp/pipeline/full > /tmp/pipeline/full.log &

The run aborts (the running step's process group is killed) when the host's available
memory falls under ``--min-available-gib`` or a step exceeds ``--step-timeout``;
``--reuse`` then continues it, keeping the steps that finished (reported as reused).
Figures and the faults found at scale: docs/PIPELINE.md. The step runner and the floor
programs are in ``pipeline_steps.py`` (beside this file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pipeline_steps.py, loaded by path too
from pipeline_steps import GIB as GIB  # re-exported with the step runner (tests, benchmarks)
from pipeline_steps import (
    PREPARE_FLOOR,
    SERVE_FLOOR,
    Abort,
    Runner,
    StepResult,
    available_gib,
    free_port,
    last_json,
    ralm,
    rss_gib,
    show,
)

log = logging.getLogger("bench_pipeline")

WECHAT = {"users": 2_984_724, "items": 43_500, "clicks": 8_891_670}


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")


async def _load(url: str, users: list[str], n_seq: int, n_conc: int, conc: int) -> dict[str, Any]:
    """``n_seq`` sequential then ``n_conc`` requests at ``conc`` in flight (POST /recommend)."""
    import httpx

    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=conc + 4)
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        lat: list[float] = []
        for j in range(n_seq):
            t0 = time.perf_counter()
            r = await c.post("/recommend", json={"user_id": users[j % len(users)], "n": 50})
            errors += r.status_code != 200
            lat.append(time.perf_counter() - t0)
        out["sequential"] = {"requests": n_seq, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}
        done: list[float] = []
        queue = list(range(n_conc))

        async def client() -> None:
            nonlocal errors
            while queue:
                j = queue.pop()
                t0 = time.perf_counter()
                body = {"user_id": users[(n_seq + j) % len(users)], "n": 50}
                r = await c.post("/recommend", json=body)
                errors += r.status_code != 200
                done.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(conc)))
        wall = time.perf_counter() - t0
        out[f"c{conc}"] = {
            "requests": len(done),
            "req_per_s": len(done) / wall if wall > 0 else float("nan"),
            "p50_ms": _pct(done, 50),
            "p99_ms": _pct(done, 99),
        }
    out["errors"] = errors
    return out


def serve_step(runner: Runner, args: argparse.Namespace, run_dir: Path, data: Path) -> StepResult:
    """Start ``ralm serve``, wait for /healthz, send the requests, stop it with SIGINT."""
    import httpx
    import numpy as np

    if (run_dir / "serve").exists():  # a fresh state folder: start-up bootstraps the store
        shutil.rmtree(run_dir / "serve")
    port = free_port()
    argv = ralm(
        "serve", "--run", str(run_dir), "--data", str(data), "--port", str(port),
        "--recluster-every", "3600", "--threads", str(args.threads),
    )  # fmt: skip
    proc, path, t0 = runner.start("serve", argv)
    url = f"http://127.0.0.1:{port}"
    extra: dict[str, Any] = {}
    try:
        while True:
            if proc.poll() is not None:
                raise Abort(f"[serve] exited {proc.returncode} before serving; log {path}")
            if time.perf_counter() - t0 > args.step_timeout:
                raise Abort("[serve] not ready within the step timeout")
            if available_gib() < args.min_available_gib:
                raise Abort("[serve] host MemAvailable under the limit during start-up")
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        extra["startup_s"] = time.perf_counter() - t0
        extra["rss_after_startup_gib"] = rss_gib(proc.pid)
        ids = np.load(data / "user_ids.npy", mmap_mode="r", allow_pickle=False)
        pick = np.random.default_rng(0).integers(0, len(ids), size=min(args.requests, len(ids)))
        users = [str(ids[i]) for i in pick]
        n_seq = min(args.sequential, args.requests)
        t1 = time.perf_counter()
        extra.update(asyncio.run(_load(url, users, n_seq, args.requests - n_seq, args.concurrency)))
        extra["requests_s"] = time.perf_counter() - t1
    except BaseException:
        runner.kill(proc)
        if proc.returncode is None:  # poll() may have reaped it already
            os.wait4(proc.pid, 0)
        raise
    runner.kill(proc, signal.SIGINT)
    res = runner.wait("serve", argv, proc, path, t0, check=False)
    res.extra = extra
    runner.results.append(res)
    return res


def history(path: Path) -> list[dict[str, Any]]:
    """Per-epoch records of a stage: ``config.json`` (stage 1) or ``history.json``."""
    if (path / "history.json").is_file():
        return list(json.loads((path / "history.json").read_text()))
    meta = json.loads((path / "config.json").read_text())
    return list(meta.get("history", []))


def scaled(scale: float) -> dict[str, int]:
    """Users, items and clicks of the wechat preset times ``scale``."""
    return {k: max(1, round(v * scale)) for k, v in WECHAT.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the wechat preset")
    p.add_argument("--out", type=Path, default=Path("/tmp/pipeline/run"), help="scratch folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every step")
    p.add_argument("--user-epochs", type=int, default=1, help="stage-1 --epochs")
    p.add_argument("--user-steps", type=int, default=2000, help="stage-1 --steps-per-epoch")
    p.add_argument("--lookalike-epochs", type=int, default=1, help="stage-2 --epochs")
    p.add_argument("--lookalike-steps", type=int, default=1000, help="stage-2 --steps-per-epoch")
    p.add_argument(
        "--lookalike-max-examples", type=int, default=None, help="stage-2 --max-train-examples"
    )
    p.add_argument("--requests", type=int, default=3000, help="POST /recommend in all")
    p.add_argument("--sequential", type=int, default=500, help="of which sent one at a time")
    p.add_argument("--concurrency", type=int, default=32, help="in flight for the rest")
    p.add_argument("--step-timeout", type=float, default=3600.0, help="seconds per step")
    p.add_argument("--min-available-gib", type=float, default=4.0, help="abort under this")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the steps an earlier run in --out finished (their figures, marked reused); "
        "run the rest",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("RALM_NO_PROGRESS", "1")
    runner = Runner(out, args.step_timeout, args.min_available_gib, env)
    if args.reuse:
        runner.load_earlier()
    size = scaled(args.scale)
    synth_dir, data, run_dir = out / "synth", out / "data", out / "run"
    threads = ["--threads", str(args.threads)]
    caps = {
        "stage1": ["--epochs", str(args.user_epochs), "--steps-per-epoch", str(args.user_steps)],
        "stage2": [
            "--epochs", str(args.lookalike_epochs),
            "--steps-per-epoch", str(args.lookalike_steps),
        ] + (
            ["--max-train-examples", str(args.lookalike_max_examples)]
            if args.lookalike_max_examples else []
        ),
    }  # fmt: skip
    log.info("scale %.3g: %s; caps %s", args.scale, size, caps)
    t_all = time.perf_counter()
    floors: dict[str, Any] = {}
    aborted = None
    try:
        runner.run(
            "synth",
            ralm(
                "data", "synth", "--preset", "wechat", "--out", str(synth_dir),
                "--seed", str(args.seed), "--users", str(size["users"]),
                "--items", str(size["items"]), "--clicks", str(size["clicks"]),
            ),
            output=synth_dir,
        )  # fmt: skip
        fl = runner.run("prepare_floor", [sys.executable, "-c", PREPARE_FLOOR, str(synth_dir)])
        floors["prepare"] = last_json(Path(fl.log))
        runner.run(
            "prepare",
            ralm("data", "prepare", str(synth_dir / "dataset.toml"), "--out", str(data)),
            output=data,
        )
        runner.run(
            "stage1",
            ralm(
                "train", "user", "--data", str(data), "--out", str(run_dir / "user"),
                *caps["stage1"], *threads, "--seed", str(args.seed),
            ),
            output=run_dir / "user",
        )  # fmt: skip
        runner.run(
            "stage2",
            ralm(
                "train", "lookalike", "--data", str(data), "--user-model",
                str(run_dir / "user"), "--out", str(run_dir / "lookalike"),
                *caps["stage2"], *threads, "--seed", str(args.seed),
            ),
            output=run_dir / "lookalike",
        )  # fmt: skip
        runner.run(
            "export",
            ralm(
                "export", "--data", str(data), "--user-model", str(run_dir / "user"),
                "--out", str(run_dir / "export"),
            ),
            output=run_dir / "export",
        )  # fmt: skip
        fl = runner.run(
            "serve_floor",
            [sys.executable, "-c", SERVE_FLOOR, str(run_dir / "lookalike" / "seed_index")],
        )
        floors["serve"] = last_json(Path(fl.log))
        serve_step(runner, args, run_dir, data)
    except Abort as e:
        aborted = str(e)
        log.error("aborted: %s", e)
    total = time.perf_counter() - t_all
    report = summarise(runner, args, size, caps, floors, total, aborted, run_dir)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if aborted:
        raise SystemExit(1)


def summarise(
    runner: Runner,
    args: argparse.Namespace,
    size: dict[str, int],
    caps: dict[str, list[str]],
    floors: dict[str, Any],
    total: float,
    aborted: str | None,
    run_dir: Path,
) -> dict[str, Any]:
    """Print one line per step (wall, peak RSS, CPU, floor and ratio) and the targets."""
    by = {r.name: r for r in runner.results}
    notes: dict[str, str] = {}
    if "prepare" in by and "prepare" in floors:
        f = floors["prepare"]
        notes["prepare"] = (
            f"{f['rows'] / by['prepare'].wall_s:,.0f} rows/s; floor (pyarrow read + argsort ts) "
            f"{f['seconds']:.1f} s -> {by['prepare'].wall_s / f['seconds']:.1f}x"
        )
    for name, sub in (("stage1", "user"), ("stage2", "lookalike")):
        if name in by:
            hist = history(run_dir / sub)
            sps = [h.get("samples_per_s") for h in hist if h.get("samples_per_s")]
            metric = "recall" if name == "stage1" else "val_auc"
            last = hist[-1] if hist else {}
            km = f", k-means {last['kmeans_s']:.1f} s" if "kmeans_s" in last else ""
            notes[name] = (
                (f"{len(hist)} epoch(s), {sps[-1]:,.0f} samples/s" if sps else f"{len(hist)} ep")
                + (f", {metric} {last[metric]:.4f}" if metric in last else "")
                + km
            )
            by[name].extra["history"] = hist
    if "export" in by:
        notes["export"] = f"{size['users'] / by['export'].wall_s:,.0f} users/s (incl. start-up)"
    if "serve" in by:
        e = by["serve"].extra
        seq = e.get("sequential", {})
        con = e.get(f"c{args.concurrency}", {})
        fl = floors.get("serve", {})
        ratio = (
            f"; matmul floor (I*k,h)@(h,2) {fl['matmul_b1_ms']:.2f} ms -> "
            f"{seq['p50_ms'] / fl['matmul_b1_ms']:.1f}x"
            if fl and seq
            else ""
        )
        notes["serve"] = (
            f"start-up {e.get('startup_s', 0):.1f} s; seq p50/p99 {seq.get('p50_ms', 0):.1f}/"
            f"{seq.get('p99_ms', 0):.1f} ms{ratio}; c{args.concurrency} "
            f"{con.get('req_per_s', 0):.1f} req/s p50 {con.get('p50_ms', 0):.0f} ms; "
            f"errors {e.get('errors', '?')}"
        )
    print()
    print(
        f"pipeline at scale {args.scale:g}: {size['users']:,} users, {size['items']:,} items, "
        f"{size['clicks']:,} clicks; threads {args.threads}"
    )
    print(f"caps: stage1 {' '.join(caps['stage1'])}; stage2 {' '.join(caps['stage2'])}")
    print(f"{'step':<14}{'wall_s':>9}{'peak_rss_gib':>14}{'cpu_s':>9}  notes")
    for r in runner.results:
        print(
            f"{r.name:<14}{r.wall_s:>9.1f}{r.peak_rss_gib:>14.2f}{r.cpu_s:>9.1f}  "
            f"{notes.get(r.name, '')}{' (reused: an earlier run)' if r.extra.get('reused') else ''}"
        )
    pipeline = [r for r in runner.results if not r.name.endswith("_floor")]
    wall = sum(r.wall_s for r in pipeline)
    peak = max((r.peak_rss_gib for r in pipeline), default=0.0)
    print(
        f"pipeline steps: {wall:.1f} s wall ({wall / 60:.1f} min; target < 60 min: "
        f"{'met' if wall < 3600 and not aborted else 'not met'}), max peak RSS {peak:.2f} GiB "
        f"(target < 8 GiB: {'met' if peak < 8 else 'not met'}); with floors {total:.1f} s"
    )
    launcher = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"launcher (this process) peak RSS {launcher:.0f} MiB: a step's peak may include up "
        "to that much (the kernel counts the launcher's pages copied before exec)"
    )
    if aborted:
        print(f"ABORTED: {aborted}")
    print("commands (floors: python -c with PREPARE_FLOOR / SERVE_FLOOR of this script):")
    for r in runner.results:
        print(f"  [{r.name}] {show(r.command)}")
    return {
        "scale": args.scale,
        "size": size,
        "caps": caps,
        "threads": args.threads,
        "floors": floors,
        "steps": [asdict(r) for r in runner.results],
        "pipeline_wall_s": wall,
        "max_peak_rss_gib": peak,
        "aborted": aborted,
    }


if __name__ == "__main__":
    main()
