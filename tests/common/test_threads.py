"""The one thread policy: passive OpenMP waiting before torch loads, one default count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ralm.common.threads import default_threads
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


def test_cli_sets_passive_wait_policy_before_torch_and_the_thread_default() -> None:
    """``python -m ralm`` in a clean environment: the policy is in place when torch loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RALM_THREADS")}
    env["RALM_THREADS"] = "1"
    code = (
        "import sys, runpy\n"
        "sys.argv = ['ralm', '--help']\n"
        "try:\n"
        "    runpy.run_module('ralm', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "import os, torch\n"
        "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE 1"
