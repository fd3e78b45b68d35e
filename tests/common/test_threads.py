"""The one thread policy: bounded OpenMP spin-waiting before torch loads, one default count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ralm.common.threads import SPIN_COUNT, default_threads
from ralm.errors import ConfigError


def test_default_threads_env_and_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RALM_THREADS", raising=False)
    assert default_threads() == 1  # one thread per process unless asked
    monkeypatch.setenv("RALM_THREADS", "3")
    assert default_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("RALM_THREADS", bad)
        with pytest.raises(ConfigError, match="RALM_THREADS"):
            default_threads()


_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "RALM_THREADS")


def _policy_in_child(extra: dict[str, str]) -> list[str]:
    """``python -m ralm --help`` in a clean environment plus ``extra``; then torch loads
    and the child prints the wait-policy variables and the thread count it ended with."""
    env = {k: v for k, v in os.environ.items() if k not in _POLICY_VARS}
    env.update({"RALM_THREADS": "1", **extra})
    code = (
        "import sys, runpy\n"
        "sys.argv = ['ralm', '--help']\n"
        "try:\n"
        "    runpy.run_module('ralm', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "import os, torch\n"
        "print(*(os.environ.get(v, '-') for v in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT',"
        " 'KMP_BLOCKTIME')), torch.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1].split()


def test_cli_sets_bounded_spin_before_torch_and_the_thread_default() -> None:
    """The policy is in place when torch loads: a bounded spin, one thread."""
    assert _policy_in_child({}) == ["-", str(SPIN_COUNT), "0", "1"]


def test_a_wait_policy_the_caller_set_is_kept() -> None:
    assert _policy_in_child({"OMP_WAIT_POLICY": "PASSIVE"}) == ["PASSIVE", "-", "-", "1"]
    assert _policy_in_child({"GOMP_SPINCOUNT": "50"}) == ["-", "50", "-", "1"]


_OMP_CHILD = r"""
import ctypes, threading
import torch
from ralm.common.threads import inherit_threads
from ralm.serve.batcher import MicroBatcher

# torch's own OpenMP runtime (the copy bundled with the wheel, already loaded)
path = next(line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line)
omp = ctypes.CDLL(path)
torch.set_num_threads(1)
seen = {}

def fresh(name, pin):
    def run():
        if pin:
            inherit_threads()
        seen[name] = omp.omp_get_max_threads()
    th = threading.Thread(target=run)
    th.start()
    th.join()

fresh("fresh", False)
fresh("inherited", True)
batcher = MicroBatcher(lambda reqs: [omp.omp_get_max_threads() for _ in reqs], max_batch=4)
seen["batcher"] = batcher.submit(0).result(timeout=30)
batcher.close()
print(seen["fresh"], seen["inherited"], seen["batcher"], omp.omp_get_max_threads())
"""


def test_threads_started_later_get_the_process_thread_count() -> None:
    """``torch.set_num_threads`` reaches OpenMP in the calling thread only: a thread
    started later has the runtime default (here OMP_NUM_THREADS=3) until it calls
    ``inherit_threads``; the service's batcher thread does so first."""
    env = {k: v for k, v in os.environ.items() if k not in _POLICY_VARS}
    env["OMP_NUM_THREADS"] = "3"
    out = subprocess.run(
        [sys.executable, "-c", _OMP_CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "1", "1", "1"], out.stdout
