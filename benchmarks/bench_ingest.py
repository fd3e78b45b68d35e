"""Benchmark: generic ingestion (`ralm data prepare` on a TOML + Parquet dataset).

Writes a synthetic dataset in the generic Parquet format with the generator, then times
``prepare`` on it and prints wall time and peak RSS.

    python benchmarks/bench_ingest.py --preset wechat   # the paper's scale (~1-2 min)
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from ralm.data.prepare import prepare
from ralm.data.synth import generate, preset, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small", help="tiny | small | wechat")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        toml = write_parquet(generate(preset(args.preset)), Path(tmp) / "raw")
        t0 = time.perf_counter()
        ds = prepare(str(toml), Path(tmp) / "encoded")
        wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"preset={args.preset} users={ds.n_users:,} items={ds.n_items:,} "
        f"interactions={len(ds.interactions):,} prepare_wall_s={wall:.1f} peak_rss_gib={rss:.2f}"
    )


if __name__ == "__main__":
    main()
