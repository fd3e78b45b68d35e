"""Stage-1 training throughput under ``torchrun``: 1 process vs N processes (DDP, gloo).

Runs the real command, ``python -m torch.distributed.run --standalone --nproc_per_node P
-m ralm train user ...``, once per process count on the same encoded dataset and the same
global batch, and prints the samples/s of the training epoch (from the run's
``config.json`` history: global examples / seconds of rank 0's epoch) and the wall time of
the whole command (start-up, validation and checkpoints included), with the ratio to the
one-process run. Every process trains with one intra-op thread, so P processes use P cores.

Without ``--data`` a synthetic dataset is written first (``ralm data synth --preset``)::

    python benchmarks/bench_ddp.py --preset tiny --procs 1 2 --steps 200
    python benchmarks/bench_ddp.py --data /tmp/ml100k --procs 1 2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(data: Path, out: Path, procs: int, steps: int, batch: int, dim: int) -> dict:
    """One ``ralm train user`` epoch of ``steps`` global steps on ``procs`` processes."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", "-m", "ralm", "train", "user", "--data", str(data),
        "--out", str(out), "--epochs", "1", "--steps-per-epoch", str(steps),
        "--batch-size", str(batch), "--dim", str(dim),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", RALM_NO_PROGRESS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rec = json.loads((out / "config.json").read_text())["history"][-1]
    return {
        "procs": procs,
        "samples_per_s": round(float(rec["samples_per_s"]), 1),
        "epoch_s": round(float(rec["seconds"]), 2),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Encoded dataset (default: synthesise --preset).")
    p.add_argument("--preset", default="tiny", help="ralm data synth preset without --data.")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="Process counts.")
    p.add_argument("--steps", type=int, default=200, help="Global steps of the timed epoch.")
    p.add_argument("--batch-size", type=int, default=256, help="Global batch (paper: 256).")
    p.add_argument("--dim", type=int, default=128, help="Embedding dimension (paper: 128).")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            data = Path(tmp) / "data"
            subprocess.run(
                [sys.executable, "-m", "ralm", "data", "synth", "--preset", a.preset,
                 "--format", "encoded", "--out", str(data)],
                check=True, capture_output=True,
            )  # fmt: skip
        rows = [run(data, Path(tmp) / f"run{n}", n, a.steps, a.batch_size, a.dim) for n in a.procs]
    base = rows[0]
    cores = os.cpu_count()
    print(f"stage 1, {a.steps} steps of global batch {a.batch_size}, dim {a.dim}, {cores} cores")
    print(f"{'procs':>5} {'samples/s':>10} {'x':>6} {'epoch s':>8} {'wall s':>7}")
    for r in rows:
        ratio = r["samples_per_s"] / base["samples_per_s"]
        print(
            f"{r['procs']:>5} {r['samples_per_s']:>10,.0f} {ratio:>6.2f} {r['epoch_s']:>8.2f} "
            f"{r['wall_s']:>7.1f}"
        )


if __name__ == "__main__":
    main()
