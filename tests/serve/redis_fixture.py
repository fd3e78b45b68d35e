"""A real redis-server for the tests: started on a free loopback port, stopped by its PID.

No mocks. When ``redis-server`` (or redis-py) is missing the Redis tests FAIL, so CI cannot
pass without them; set ``RALM_ALLOW_NO_REDIS=1`` to skip them instead in a local loop.
Use in a test module::

    @pytest.fixture(scope="module")
    def redis_server(tmp_path_factory):
        yield from running_redis(tmp_path_factory.mktemp("redis"))
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_redis() -> str:
    """Path of redis-server; fails the test (or skips with RALM_ALLOW_NO_REDIS=1)."""
    exe = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        exe, why = None, "redis-py is not installed (pip install -e '.[dev]')"
    else:
        why = "redis-server is not on PATH (apt-get install redis-server; .ci/run does it)"
    if exe is None:
        if os.environ.get("RALM_ALLOW_NO_REDIS") == "1":
            pytest.skip(why)
        pytest.fail(why + "; set RALM_ALLOW_NO_REDIS=1 to skip the Redis tests locally")
    return exe


class RedisServer:
    """One redis-server process with its data folder.

    Args:
        root: data folder (``--dir``), kept across restarts.
        appendonly: turn the AOF on (with ``appendfsync``) instead of no persistence.
        appendfsync: ``always``, ``everysec`` or ``no``.
    """

    def __init__(self, root: Path, appendonly: bool = False, appendfsync: str = "always"):
        self.exe = require_redis()
        self.root = root
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on a free port (the same port again after a stop); wait for PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            port = self.port or _free_port()
            cmd = [
                self.exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync, "--dir", str(self.root),
                "--daemonize", "no", "--logfile", str(self.root / "redis.log"),
            ]  # fmt: skip
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready(port):
                self.port = port
                return self
            self._reap(signal.SIGKILL)
            if self.port:  # a restart must reuse the port: retry only while it is busy
                time.sleep(0.2 * (attempt + 1))
        log = (self.root / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start: {log}")

    def _wait_ready(self, port: int, timeout: float = 10.0) -> bool:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
                return True
            except redis.RedisError:
                time.sleep(0.02)
        return False

    def _reap(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM to its PID)."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """``kill -9`` it: no shutdown, no final write."""
        self._reap(signal.SIGKILL)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)


def running_redis(root: Path, **opts: object) -> Iterator[RedisServer]:
    """Generator for a fixture: a started server, stopped by its PID afterwards."""
    srv = RedisServer(root, **opts)  # type: ignore[arg-type]
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
