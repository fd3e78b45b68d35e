"""Training throughput under ``torchrun``: 1 process vs N processes (DDP, gloo).

Runs the real command, ``python -m torch.distributed.run --standalone --nproc_per_node P
-m ralm train user ...`` (``--stage user``) or ``... -m ralm train lookalike ...``
(``--stage lookalike``, after one short stage-1 run that every process count shares),
once per process count on the same encoded dataset and the same global batch, and prints
the samples/s of the training epoch (from the run's ``config.json`` history: global
examples / seconds of rank 0's epoch) and the wall time of the whole command (start-up,
validation and checkpoints included), with the ratio to the first run. Every process
trains with ``--threads`` intra-op threads (default 1, so P processes use P cores; one
value per process count compares e.g. 2 processes x 1 thread with 1 process x 2 threads),
under the CLI's own OpenMP wait policy (``ralm.common.threads``). For stage 2 it also
prints the clicks (positives) per second and the minutes one epoch over the paper's 7.01M
TRAIN clicks would take at that rate (an epoch holds ``1 + neg_ratio`` rows per click).

Without ``--data`` a synthetic dataset is written first (``ralm data synth --preset``)::

    python benchmarks/bench_ddp.py --preset tiny --procs 1 2 --steps 200
    python benchmarks/bench_ddp.py --data /tmp/ml100k --procs 1 2 --steps 200
    python benchmarks/bench_ddp.py --stage lookalike --data /tmp/ws --procs 1 2 \
        --steps 200 --batch-size 128 --neg-ratio 1
    python benchmarks/bench_ddp.py --stage lookalike --data /tmp/ws --procs 1 2 1 \
        --threads 1 1 2 --steps 600 --neg-ratio 1
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

PAPER_TRAIN_CLICKS = 7_014_038  # TRAIN clicks of the paper-scale wechat preset


def run(
    data: Path, out: Path, procs: int, steps: int, batch: int, dim: int,
    user_model: Path | None = None, neg_ratio: int = 4, matmul_dtype: str = "float32",
    threads: int = 1,
) -> dict:  # fmt: skip
    """One ``ralm train user`` epoch (or ``train lookalike`` with ``user_model``) of
    ``steps`` global steps on ``procs`` processes."""
    stage = ["user", "--dim", str(dim)]
    if user_model is not None:
        stage = [
            "lookalike", "--user-model", str(user_model), "--neg-ratio", str(neg_ratio),
            "--matmul-dtype", matmul_dtype,
        ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", "-m", "ralm", "train", *stage, "--data", str(data),
        "--out", str(out), "--epochs", "1", "--steps-per-epoch", str(steps),
        "--batch-size", str(batch), "--threads", str(threads),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RALM_NO_PROGRESS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    if user_model is None:
        rec = json.loads((out / "config.json").read_text())["history"][-1]
    else:  # stage 2 keeps its epochs in history.json
        rec = json.loads((out / "history.json").read_text())[-1]
        rec["seconds"] = rec.get("seconds", rec.get("epoch_s", float("nan")))
    return {
        "procs": procs,
        "threads": threads,
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
    p.add_argument("--stage", choices=["user", "lookalike"], default="user")
    p.add_argument("--neg-ratio", type=int, default=4, help="Stage 2: negatives per click.")
    p.add_argument(
        "--matmul-dtype",
        default="float32",
        choices=["float32", "bfloat16", "auto"],
        help="Stage 2: [lookalike_train] matmul_dtype (bfloat16 = mixed-precision products).",
    )
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="Intra-op threads per process: one value for every run, or one per --procs.",
    )
    a = p.parse_args()
    if len(a.threads) not in (1, len(a.procs)):
        p.error("--threads takes one value or one per --procs value")
    threads = a.threads * len(a.procs) if len(a.threads) == 1 else a.threads
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            data = Path(tmp) / "data"
            subprocess.run(
                [sys.executable, "-m", "ralm", "data", "synth", "--preset", a.preset,
                 "--format", "encoded", "--out", str(data)],
                check=True, capture_output=True,
            )  # fmt: skip
        user_model = None
        if a.stage == "lookalike":  # one short stage-1 model shared by every process count
            user_model = Path(tmp) / "user"
            subprocess.run(
                [sys.executable, "-m", "ralm", "train", "user", "--data", str(data),
                 "--out", str(user_model), "--epochs", "1", "--steps-per-epoch", "50",
                 "--threads", "1"],
                check=True, capture_output=True, env=dict(os.environ, RALM_NO_PROGRESS="1"),
            )  # fmt: skip
        rows = [
            run(data, Path(tmp) / f"run{i}", n, a.steps, a.batch_size, a.dim, user_model,
                a.neg_ratio, a.matmul_dtype, t)
            for i, (n, t) in enumerate(zip(a.procs, threads, strict=True))
        ]  # fmt: skip
    base = rows[0]
    cores = os.cpu_count()
    what = (
        "stage 1"
        if a.stage == "user"
        else f"stage 2 (neg_ratio {a.neg_ratio}, matmul_dtype {a.matmul_dtype})"
    )
    print(f"{what}, {a.steps} steps of global batch {a.batch_size}, {cores} cores")
    extra = f" {'clicks/s':>9} {'paper epoch min':>15}" if a.stage == "lookalike" else ""
    print(f"{'procs':>5} {'thr':>3} {'samples/s':>10} {'x':>6} {'epoch s':>8} {'wall s':>7}{extra}")
    for r in rows:
        ratio = r["samples_per_s"] / base["samples_per_s"]
        line = (
            f"{r['procs']:>5} {r['threads']:>3} {r['samples_per_s']:>10,.0f} {ratio:>6.2f} "
            f"{r['epoch_s']:>8.2f} {r['wall_s']:>7.1f}"
        )
        if a.stage == "lookalike":
            clicks = r["samples_per_s"] / (1 + a.neg_ratio)
            line += f" {clicks:>9,.0f} {PAPER_TRAIN_CLICKS / clicks / 60:>15.1f}"
        print(line)


if __name__ == "__main__":
    main()
