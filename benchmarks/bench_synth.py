"""Wall time and peak RSS of the synthetic generator, per preset.

Each preset runs in a fresh subprocess so its peak RSS (``resource.getrusage``) is its own.

    python benchmarks/bench_synth.py                       # tiny and small, parquet
    python benchmarks/bench_synth.py --preset wechat --format encoded
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def run_one(preset_name: str, fmt: str, seed: int) -> dict[str, float | int | str]:
    """Generate and write one preset in this process; returns the measurements."""
    from ralm.data.synth import generate, preset, write_encoded, write_parquet

    cfg = preset(preset_name, seed=seed)
    t0 = time.perf_counter()
    data = generate(cfg)
    t_gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        if fmt == "parquet":
            write_parquet(data, tmp)
        else:
            write_encoded(data, tmp)
        t_all = time.perf_counter() - t0
        size = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tmp) for f in files
        )
    return {
        "preset": preset_name,
        "format": fmt,
        "users": data.n_users,
        "items": data.n_items,
        "clicks": data.n_clicks,
        "generate_s": round(t_gen, 2),
        "total_s": round(t_all, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "output_mib": round(size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", action="append", help="tiny | small | wechat (repeatable)")
    parser.add_argument("--format", default="parquet", choices=["parquet", "encoded"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    presets = args.preset or ["tiny", "small"]
    if args.child:
        print(json.dumps(run_one(presets[0], args.format, args.seed)))
        return
    env = {**os.environ, "RALM_NO_PROGRESS": "1"}
    cols = ["preset", "format", "users", "items", "clicks", "generate_s", "total_s"]
    cols += ["peak_rss_mib", "output_mib"]
    print(" | ".join(cols))
    for name in presets:
        cmd = [sys.executable, __file__, "--child", "--preset", name, "--format", args.format]
        out = subprocess.run(
            [*cmd, "--seed", str(args.seed)], check=True, capture_output=True, text=True, env=env
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(" | ".join(str(row[c]) for c in cols), flush=True)


if __name__ == "__main__":
    main()
