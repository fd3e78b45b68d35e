"""The pipeline benchmark (benchmarks/bench_pipeline.py): per-step peak RSS from
``os.wait4`` against a known allocation, the memory guard, and one tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_pipeline.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_pipeline"] = mod
    spec.loader.exec_module(mod)
    return mod


PEAK_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import bench_pipeline as b
r = b.Runner(b.Path(sys.argv[2]), step_timeout=120, min_available=0.0, env=dict(os.environ))
big = "import numpy as np; a = np.ones(300 * 2**20, np.uint8); print(int(a.sum()))"
out = [r.run(n, [sys.executable, "-c", c]) for n, c in (("big", big), ("small", "print(1)"))]
print(json.dumps([[x.peak_rss_gib, x.rc, x.wall_s, x.cpu_s] for x in out]))
"""


def test_peak_rss_is_the_childs_own(tmp_path: Path) -> None:
    """A child that touches 300 MiB, then a small one: each step gets its own peak.

    Run from a fresh small interpreter, as the benchmark is: the kernel's ``ru_maxrss`` of
    a child also counts the launching process's pages copied before ``exec`` (the pytest
    process holds torch and would dominate)."""
    probe = [sys.executable, "-c", PEAK_PROBE, str(SCRIPT.parent), str(tmp_path)]
    proc = subprocess.run(probe, capture_output=True, text=True, timeout=300, check=True)
    (big, rc, wall, cpu), (small, _, _, _) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.29 < big < 0.29 + 0.15  # 300 MiB = 0.293 GiB + the interpreter and numpy
    assert small < 0.06
    assert rc == 0 and wall > 0 and cpu > 0
    assert (tmp_path / "logs" / "big.log").read_text().strip() == str(300 * 2**20)


def test_failed_step_and_memory_guard_abort(tmp_path: Path) -> None:
    bench = load_bench()
    runner = bench.Runner(tmp_path, step_timeout=120, min_available=0.0, env=dict(os.environ))
    with pytest.raises(bench.Abort, match=r"\[fails\] exit 3"):
        runner.run("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    guard = bench.Runner(tmp_path, step_timeout=120, min_available=1e9, env=dict(os.environ))
    with pytest.raises(bench.Abort, match="MemAvailable"):
        guard.run("sleeps", [sys.executable, "-c", "import time; time.sleep(60)"])
    slow = bench.Runner(tmp_path, step_timeout=0.5, min_available=0.0, env=dict(os.environ))
    with pytest.raises(bench.Abort, match="step timeout"):
        slow.run("sleeps", [sys.executable, "-c", "import time; time.sleep(60)"])


def test_scaled_preset() -> None:
    bench = load_bench()
    assert bench.scaled(1.0) == {"users": 2_984_724, "items": 43_500, "clicks": 8_891_670}
    assert bench.scaled(0.1) == {"users": 298_472, "items": 4_350, "clicks": 889_167}


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), RALM_NO_PROGRESS="1")
    out = tmp_path / "run"
    argv = [
        sys.executable, str(SCRIPT), "--scale", "0.003", "--out", str(out),
        "--user-steps", "20", "--lookalike-steps", "20",
        "--requests", "60", "--sequential", "20", "--concurrency", "4",
        "--min-available-gib", "0.5",
    ]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = ["synth", "prepare_floor", "prepare", "stage1", "stage2", "export"]
    steps += ["serve_floor", "serve"]
    for name in steps:  # one line per step: name, wall, peak RSS, CPU
        line = re.search(rf"^{name}\s+(\d+\.\d)\s+(\d+\.\d\d)\s+(\d+\.\d)", proc.stdout, re.M)
        assert line is not None, f"no line for {name}:\n{proc.stdout}"
        assert float(line.group(1)) > 0 and float(line.group(2)) > 0
    assert "caps: stage1 --epochs 1 --steps-per-epoch 20" in proc.stdout
    assert "errors 0" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == steps
    assert report["aborted"] is None
    serve = report["steps"][-1]["extra"]
    assert serve["sequential"]["requests"] == 20 and serve["c4"]["requests"] == 40
    assert serve["errors"] == 0
    assert (out / "run" / "lookalike" / "seed_index" / "meta.json").is_file()
    # --reuse: the finished steps are reported from the earlier run, serve runs again
    again = subprocess.run([*argv, "--reuse"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for name in steps[:-1]:
        assert re.search(rf"^{name}\s.*\(reused: an earlier run\)$", again.stdout, re.M), name
    assert not re.search(r"^serve\s.*reused", again.stdout, re.M)
    rerun = json.loads((out / "report.json").read_text())["steps"]
    assert [s["wall_s"] for s in rerun[:-1]] == [s["wall_s"] for s in report["steps"][:-1]]
    assert rerun[-1]["extra"]["errors"] == 0 and "reused" not in rerun[-1]["extra"]
