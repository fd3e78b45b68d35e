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
