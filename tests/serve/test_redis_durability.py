"""What the docs promise for the Redis store, checked with kill -9 (docs/SERVING.md).

With ``appendonly yes`` + ``appendfsync always`` every acknowledged ``add_clicks`` call
survives a ``kill -9`` of the writing replica followed by a ``kill -9`` and restart of
redis-server, and a call in flight is applied all or nothing. Without the AOF a restart
loses the clicks (the control that shows the check can see a loss).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ralm.serve.redis_store import RedisSeedStore

from .redis_fixture import RedisServer

BATCH = 40

WRITER = f"""
import sys, time
from ralm.serve.redis_store import RedisSeedStore
from ralm.serve.seed_store import Click
st = RedisSeedStore(sys.argv[1], max_seeds=100000, prefix="dur:")
k = 0
while True:
    st.add_clicks([Click(f"u{{k}}-{{j}}", f"item{{k % 5}}", float(k)) for j in range({BATCH})])
    print(k, flush=True)  # acknowledged: add_clicks returned
    k += 1
"""


def _write_then_kill(srv: RedisServer, n_acks: int) -> int:
    """Run a writer replica, ``kill -9`` it after ``n_acks`` acknowledged calls; returns
    the last acknowledged batch number."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, srv.url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last + 1 >= n_acks:
            break
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it is writing the next call
    proc.wait(10)
    proc.stdout.close()
    assert last + 1 == n_acks, "the writer died early"
    return last


def _batches_present(st: RedisSeedStore, upto: int) -> list[int]:
    """Per batch 0..upto, how many of its clicks are stored."""
    seeds = st.seeds_many([f"item{i}" for i in range(5)])
    have = {u for users in seeds.values() for u in users}
    return [sum(f"u{k}-{j}" in have for j in range(BATCH)) for k in range(upto + 1)]


def test_acknowledged_clicks_survive_kill9_of_replica_and_server(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "aof", appendonly=True, appendfsync="always").start()
    try:
        assert srv.client().config_get("appendfsync") == {"appendfsync": "always"}
        last = _write_then_kill(srv, n_acks=60)
        srv.kill()  # kill -9 redis-server: no shutdown, no final rewrite
        srv.start()  # same folder, same port: replays the AOF
        st = RedisSeedStore(srv.url, max_seeds=100000, prefix="dur:")
        counts = _batches_present(st, last + 5)
        assert counts[: last + 1] == [BATCH] * (last + 1)  # every acknowledged call
        assert all(c in (0, BATCH) for c in counts[last + 1 :])  # in flight: all or nothing
        assert st.n_seed_rows() == sum(counts)
        st.close()
    finally:
        srv.stop()


def test_without_aof_a_restart_loses_the_clicks(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "none", appendonly=False).start()
    try:
        last = _write_then_kill(srv, n_acks=5)
        st = RedisSeedStore(srv.url, max_seeds=100000, prefix="dur:")
        assert _batches_present(st, last) == [BATCH] * (last + 1)
        st.close()
        srv.kill()
        srv.start()
        st = RedisSeedStore(srv.url, max_seeds=100000, prefix="dur:")
        assert st.n_seed_rows() == 0 and st.n_items() == 0
        st.close()
    finally:
        srv.stop()
