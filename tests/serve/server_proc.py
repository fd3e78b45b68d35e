"""Run ``ralm serve`` as a real uvicorn process on 127.0.0.1 for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m ralm serve ...`` in a subprocess; ``kill9`` ends it without any cleanup.

    Args:
        run: training run folder.
        data: encoded dataset folder.
        state: service state folder (seed store, published indexes).
        args: extra CLI flags.
    """

    def __init__(self, run: Path, data: Path, state: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state.parent / f"server-{self.port}.log"
        cmd = [
            sys.executable, "-m", "ralm", "serve", "--run", str(run), "--data", str(data),
            "--state-dir", str(state), "--port", str(self.port), "--token", TOKEN, *args,
        ]  # fmt: skip
        env = {**os.environ, "RALM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop/kill9)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Poll /healthz until it answers (start-up imports torch and faiss)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                r = httpx.get(self.url + "/healthz", timeout=2.0)
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        """SIGKILL: no shutdown hooks, no WAL checkpoint."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
                return
        self._log.close()
