"""Peak RSS of ``ralm train lookalike`` (stage 2), and where in the run it happens.

Not a test. Runs the real CLI as a child process (``python -m ralm train lookalike``), reads
the child's peak from ``os.wait4`` (the kernel's ``ru_maxrss``, exact), and samples its
VmRSS every ``--every`` seconds to name the phase of the run (the last log line before the
sample) in which the resident set was largest. It also prints the sizes of the arrays that
any stage-2 run of this data must hold at once (the floor the peak is compared with):

* ``seed_universal``: float32 (n_users, m), every user's universal embedding;
* ``target cache``: float32 (P, m) TRAIN positives without their target, when they fit in
  ``--target-cache-gib`` (default 2);
* ``clusters``: float32 (I, k, h) centroids;
* ``examples``: one epoch's (user, item, label), P positives and 4 P negatives, or, while
  re-clustering, the previous clusters (warm start), whichever is larger;

and the size of the float32 (S, h) table of transformed seed rows, which stage 2 held in
memory (twice while re-clustering) before it went to a temporary file
(:mod:`ralm.lookalike.seed_rows`).

Run on a prepared dataset and a stage-1 model (e.g. from ``bench_pipeline.py``)::

    python benchmarks/bench_stage2_memory.py --data D/data --user-model D/run/user \\
        --out /tmp/s2 --steps 200 -- --val-max-users 1000

Arguments after ``--`` go to ``ralm train lookalike`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench_pipeline import available_gib  # the host memory guard, written once

GIB = 2**30


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 when gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def essential(data: Path, m: int, h: int, k: int, cache_gib: float) -> dict[str, float]:
    """GiB of the arrays a stage-2 run must hold (see the module docstring)."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ralm.data.clicks import click_keys, seed_csr
    from ralm.data.encoded import EncodedDataset, Split

    ds = EncodedDataset.load(data)
    offsets, users = seed_csr(ds, (Split.TRAIN,))
    n_seed = int(users.size)
    n_pos = int(click_keys(ds, (Split.TRAIN,)).size)
    out = {
        "n_users": float(ds.n_users),
        "n_items": float(ds.n_items),
        "n_seed_rows": float(n_seed),
        "n_train_positives": float(n_pos),
        "seed_universal": ds.n_users * m * 4 / GIB,
        "seed_emb": n_seed * h * 4 / GIB,
        "clusters": ds.n_items * k * h * 4 / GIB,
        # an epoch's (users int64, items int64, labels float32) of positives + 4 negatives each
        "examples": n_pos * 5 * 20 / GIB,
    }
    cache = n_pos * m * 4 / GIB
    out["target_cache"] = cache if cache <= cache_gib else 0.0
    del offsets, users, np
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--user-model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200, help="--steps-per-epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=float, default=0.05, help="RSS sampling period (s)")
    p.add_argument("--m", type=int, default=128, help="stage-1 width (for the floor)")
    p.add_argument("--h", type=int, default=128)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--target-cache-gib", type=float, default=2.0)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument(
        "--min-available-gib",
        type=float,
        default=3.0,
        help="kill the run when the host's MemAvailable falls under this",
    )
    p.add_argument("rest", nargs="*", help="more flags of ralm train lookalike (after --)")
    args = p.parse_args()

    argv = [
        sys.executable, "-m", "ralm", "train", "lookalike", "--data", str(args.data),
        "--user-model", str(args.user_model), "--out", str(args.out),
        "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps),
        "--threads", str(args.threads), *args.rest,
    ]  # fmt: skip
    env = dict(os.environ, RALM_NO_PROGRESS="1")
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    print("$", " ".join(argv), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    phase = ["start"]
    phases: dict[str, dict[str, Any]] = {}  # phase -> max sampled RSS, order seen
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            msg = line.split(": ", 1)[-1] if " INFO " in line else line
            if msg.strip():
                phase[0] = f"{time.perf_counter() - t0:7.1f}s {msg[:110]}"

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        r = rss_bytes(proc.pid)
        if available_gib() < args.min_available_gib:
            proc.kill()
            print(f"host MemAvailable under {args.min_available_gib} GiB: run killed at "
                  f"RSS {r / GIB:.2f} GiB ({phase[0]})", flush=True)  # fmt: skip
        rec = phases.setdefault(phase[0], {"max": 0, "order": len(phases)})
        rec["max"] = max(rec["max"], r)
        time.sleep(args.every)
    wall = time.perf_counter() - t0
    th.join(timeout=5)
    rc = os.waitstatus_to_exitcode(status)
    peak = ru.ru_maxrss * 1024 / GIB
    print("\n".join(lines[-15:]))
    print(f"\nrc {rc}; wall {wall:.1f} s; CPU {ru.ru_utime + ru.ru_stime:.1f} s")
    print("phases (sampled VmRSS max, GiB; a phase = from a log line to the next):")
    for name, rec in sorted(phases.items(), key=lambda kv: kv[1]["order"]):
        print(f"  {rec['max'] / GIB:6.2f}  {name}")
    ess = essential(args.data, args.m, args.h, args.k, args.target_cache_gib)
    # held in memory at once by any stage-2 run: the universal embeddings, the target cache
    # and the clusters, plus either one epoch's examples (training) or the previous clusters
    # (warm start of a re-clustering); the (S, h) table of transformed seeds was held too
    # (twice while re-clustering) before it went to disk (ralm.lookalike.seed_rows)
    names = ("seed_universal", "target_cache", "clusters", "examples")
    floor = sum(ess[n] for n in names[:3]) + max(ess["clusters"], ess["examples"])
    print(
        f"data: {ess['n_users']:,.0f} users, {ess['n_items']:,.0f} items, "
        f"{ess['n_seed_rows']:,.0f} seed rows, {ess['n_train_positives']:,.0f} TRAIN positives"
    )
    print(
        "arrays (GiB): "
        + ", ".join(f"{n} {ess[n]:.3f}" for n in names)
        + f"; floor {floor:.3f}; (S, h) seed table {ess['seed_emb']:.3f}"
    )
    print(f"PEAK RSS (ru_maxrss) {peak:.3f} GiB")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "argv": argv,
                    "rc": rc,
                    "wall_s": wall,
                    "peak_rss_gib": peak,
                    "essential_gib": ess,
                    "phases": {n: r["max"] / GIB for n, r in phases.items()},
                },
                indent=2,
            )
        )
    if rc != 0:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
