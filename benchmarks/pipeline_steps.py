"""The step runner of ``bench_pipeline.py``: subprocess steps, their peak RSS, the guards.

:class:`Runner` starts each step as its own subprocess (in its own process group) and
reaps it with ``os.wait4``, so a step's wall time, CPU time and peak RSS (the kernel's
``ru_maxrss`` of that one child) are its own; it aborts the run (:class:`Abort`) when the
host's available memory falls under the limit, a step runs over its timeout or fails.
Also here: the floor programs (``PREPARE_FLOOR``, ``SERVE_FLOOR``) that the benchmark runs
as steps, and small helpers. Standard library only: the launching process stays small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_pipeline")

GIB = 2**30


@dataclass
class StepResult:
    """Wall time, peak RSS and CPU time of one subprocess step."""

    name: str
    command: list[str]
    wall_s: float
    peak_rss_gib: float
    cpu_s: float
    rc: int
    log: str
    extra: dict[str, Any] = field(default_factory=dict)


class Abort(RuntimeError):
    """The run was stopped: low host memory, a step timeout or a failed step."""


def available_gib() -> float:
    """MemAvailable of the host (GiB), from /proc/meminfo."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def rss_gib(pid: int) -> float:
    """Current VmRSS of ``pid`` (GiB); 0 when it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return 0.0


class Runner:
    """Runs steps as subprocesses, one at a time, guarding memory and time.

    Args:
        out: run folder; each step's stdout/stderr go to ``out/logs/<name>.log``.
        step_timeout: seconds one step may run.
        min_available: abort when the host's MemAvailable falls under this (GiB).
        env: environment of the steps.
    """

    def __init__(self, out: Path, step_timeout: float, min_available: float, env: dict[str, str]):
        self.out, self.step_timeout, self.min_available, self.env = (
            out,
            step_timeout,
            min_available,
            env,
        )
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.results: list[StepResult] = []
        self.reuse: dict[str, StepResult] = {}

    def load_earlier(self) -> None:
        """Offer the finished steps of ``out/report.json`` for reuse (``--reuse``)."""
        path = self.out / "report.json"
        if path.is_file():
            for raw in json.loads(path.read_text())["steps"]:
                self.reuse[raw["name"]] = StepResult(**raw)

    def start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path, float]:
        """Start one step in its own process group; returns (process, log path, t0)."""
        path = self.out / "logs" / f"{name}.log"
        log.info("[%s] %s", name, show(argv))
        fh = open(path, "wb")  # noqa: SIM115 - closed by the child's exit (inherited fd)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        fh.close()
        return proc, path, t0

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the step's process group (the step and anything it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def wait(
        self,
        name: str,
        argv: list[str],
        proc: subprocess.Popen[bytes],
        path: Path,
        t0: float,
        check: bool = True,
    ) -> StepResult:
        """Reap the step with ``os.wait4`` (its own rusage), guarding memory and time."""
        last_beat = t0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            now = time.perf_counter()
            avail = available_gib()
            if avail < self.min_available:
                self.kill(proc)
                os.wait4(proc.pid, 0)
                raise Abort(f"[{name}] host MemAvailable {avail:.1f} GiB < {self.min_available}")
            if now - t0 > self.step_timeout:
                self.kill(proc)
                os.wait4(proc.pid, 0)
                raise Abort(f"[{name}] over the step timeout of {self.step_timeout:.0f} s")
            if now - last_beat > 60:
                log.info(
                    "[%s] %.0f s, RSS %.2f GiB, host available %.1f GiB",
                    name,
                    now - t0,
                    rss_gib(proc.pid),
                    avail,
                )
                last_beat = now
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        res = StepResult(
            name=name,
            command=argv,
            wall_s=wall,
            peak_rss_gib=ru.ru_maxrss * 1024 / GIB,  # Linux: KiB
            cpu_s=ru.ru_utime + ru.ru_stime,
            rc=proc.returncode,
            log=str(path),
        )
        if check and res.rc != 0:
            tail = path.read_text(errors="replace")[-3000:]
            raise Abort(f"[{name}] exit {res.rc}; log {path}:\n{tail}")
        log.info("[%s] %.1f s, peak RSS %.2f GiB", name, res.wall_s, res.peak_rss_gib)
        return res

    def run(
        self, name: str, argv: list[str], check: bool = True, output: Path | None = None
    ) -> StepResult:
        """Run one step to completion; ``output`` (its folder) is removed first.

        With ``self.reuse`` (results of an earlier run in the same folder), a step that
        finished there and whose ``output`` still exists is not run again: its earlier
        figures are reported, marked ``reused``.
        """
        prior = self.reuse.get(name)
        if prior is not None and prior.rc == 0 and (output is None or output.exists()):
            prior.extra["reused"] = True
            log.info("[%s] reused from the earlier run: %.1f s", name, prior.wall_s)
            self.results.append(prior)
            return prior
        self.reuse.clear()  # a step ran again: every later step must run again too
        if output is not None and output.exists():
            shutil.rmtree(output)
        proc, path, t0 = self.start(name, argv)
        res = self.wait(name, argv, proc, path, t0, check=check)
        self.results.append(res)
        return res


def ralm(*args: str) -> list[str]:
    """The argv of one ``ralm`` CLI call through this interpreter."""
    return [sys.executable, "-m", "ralm", *args]


def last_json(path: Path) -> dict[str, Any]:
    """The last line of a floor step's log, parsed as JSON."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    return dict(json.loads(lines[-1]))


PREPARE_FLOOR = """
import json, sys, time
import numpy as np, pyarrow.parquet as pq
t0 = time.perf_counter()
names = ("users", "interactions", "items")
tables = {n: pq.read_table(f"{sys.argv[1]}/{n}.parquet") for n in names}
ts = tables["interactions"].column("timestamp").to_numpy()
order = np.argsort(ts, kind="stable")
rows = sum(t.num_rows for t in tables.values())
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows}))
"""

SERVE_FLOOR = """
import json, sys, threading, time
import torch
torch.set_num_threads(1)
from ralm.lookalike.seed_index import SeedIndex
idx = SeedIndex.load(sys.argv[1])
cen = torch.from_numpy(idx.centroids.copy())  # (I, k, h)
flat = cen.reshape(-1, cen.shape[-1])  # (I*k, h)
x = torch.randn(cen.shape[-1], 2)  # (h, 2B), B = 1
box = {}
def run():
    torch.set_num_threads(1)  # per thread: a fresh thread's matmul would use every core
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter(); flat @ x; best = min(best, time.perf_counter() - t0)
    box["t"] = best
th = threading.Thread(target=run); th.start(); th.join()
print(json.dumps({"matmul_b1_ms": box["t"] * 1000, "items": int(cen.shape[0]),
                  "k": int(cen.shape[1]), "h": int(cen.shape[2])}))
"""

FLOOR_NAMES = {PREPARE_FLOOR: "PREPARE_FLOOR", SERVE_FLOOR: "SERVE_FLOOR"}


def show(argv: list[str]) -> str:
    """A command as a shell line, the floor programs named rather than spelled out."""
    return shlex.join([FLOOR_NAMES.get(a, a) for a in argv])


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
