"""Version pointer and leader lock: against a real redis-server, and the file versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ralm.serve.coordination import (
    FileLeaderLock,
    FileVersionPointer,
    LeaderLock,
    Leadership,
    RedisLeaderLock,
    RedisVersionPointer,
    VersionPointer,
    VersionWatcher,
    coordination_for,
    wait_newer,
)

from .redis_fixture import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    c = redis_server.client()
    yield c
    c.close()


def _key() -> str:
    return f"t{uuid.uuid4().hex}:"


# ---- Redis ------------------------------------------------------------------------------
def test_redis_pointer_is_monotonic_and_announced(client: Any, redis_server: RedisServer) -> None:
    p = _key()
    ptr = RedisVersionPointer(client, prefix=p)
    assert isinstance(ptr, VersionPointer)
    assert ptr.current() is None
    sub = client.pubsub()
    sub.subscribe(ptr.channel)
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    assert ptr.publish(1, "/shared/index/v1")
    assert not ptr.publish(1, "/shared/index/other")  # the same version again
    assert not ptr.publish(0, "/shared/index/v0")  # never backwards
    assert ptr.publish(3, "/shared/index/v3")
    other = RedisVersionPointer(redis_server.client(), prefix=p)  # another replica
    cur = other.current()
    assert cur is not None and (cur.version, cur.location) == (3, "/shared/index/v3")
    assert cur.published_at == pytest.approx(time.time(), abs=60)
    got = [sub.get_message(timeout=2) for _ in range(2)]
    assert [json.loads(m["data"])["version"] for m in got] == [1, 3]
    sub.close()
    assert wait_newer(other, than=2, timeout_s=1) == cur
    assert wait_newer(other, than=3, timeout_s=0.3, poll_s=0.05) is None


def test_redis_lock_one_holder_and_safe_release(client: Any) -> None:
    key = _key() + "leader"
    a = RedisLeaderLock(client, key, ttl_ms=1000)
    b = RedisLeaderLock(client, key, ttl_ms=1000)
    assert isinstance(a, LeaderLock)
    assert a.try_acquire() and a.is_leader()
    assert not b.try_acquire() and not b.is_leader()
    assert not b.release()  # compare-and-delete: b cannot free a's lock
    assert client.get(key) == a.token
    for _ in range(15):  # 1.5 s, more than the TTL: renewals keep it
        time.sleep(0.1)
        assert a.renew()
        assert not b.try_acquire()
    assert a.release() and not a.is_leader()
    assert b.try_acquire()  # released: passes at once
    assert client.get(key) == b.token


def test_redis_lock_passes_when_the_leader_stops_renewing(client: Any) -> None:
    key = _key() + "leader"
    a = RedisLeaderLock(client, key, ttl_ms=300, margin=0.2)
    b = RedisLeaderLock(client, key, ttl_ms=300)
    t0 = time.monotonic()
    assert a.try_acquire()
    while not b.try_acquire():
        assert time.monotonic() - t0 < 2.0, "the lock never expired"
        # a's own belief ends before the key expires, so the two never both lead
        assert not (a.is_leader() and b.is_leader())
        time.sleep(0.01)
    waited = time.monotonic() - t0
    assert waited >= 0.25  # not before the lease ran out
    assert not a.is_leader()
    assert not a.renew()  # the old leader learns it lost
    assert not a.release() and client.get(key) == b.token  # and cannot free b's lock


def test_fenced_publish_refuses_a_deposed_leader(client: Any) -> None:
    p = _key()
    ptr = RedisVersionPointer(client, prefix=p)
    a = RedisLeaderLock(client, p + "leader", ttl_ms=200)
    b = RedisLeaderLock(client, p + "leader", ttl_ms=5000)
    assert not ptr.publish(1, "v1", fence=a)  # not holding it yet
    assert a.try_acquire()
    assert ptr.publish(1, "v1", fence=a)
    time.sleep(0.3)  # a is paused past its lease; b takes over
    assert b.try_acquire()
    assert not ptr.publish(2, "v2-from-a", fence=a)
    assert ptr.publish(2, "v2", fence=b)
    assert ptr.current().location == "v2"  # type: ignore[union-attr]


def test_two_leaderships_exactly_one_leads_and_a_dead_one_is_replaced(client: Any) -> None:
    key = _key() + "leader"
    ls = [Leadership(RedisLeaderLock(client, key, ttl_ms=1000), 0.05).start() for _ in range(2)]
    try:
        deadline = time.monotonic() + 3
        while not any(x.is_leader() for x in ls):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        owner = client.get(key)
        for _ in range(120):  # 1.2 s: more than the TTL, renewals keep the same leader
            assert sum(x.is_leader() for x in ls) <= 1
            assert client.get(key) == owner
            time.sleep(0.01)
        leader = next(x for x in ls if x.lock.token == owner)
        other = next(x for x in ls if x is not leader)
        leader.stop(release=False)  # dies: stops renewing, does not release
        t0 = time.monotonic()
        while not other.is_leader():
            assert time.monotonic() - t0 < 3.0, "no one took over"
            assert not leader.is_leader() or not other.is_leader()
            time.sleep(0.01)
        assert client.get(key) == other.lock.token
    finally:
        for x in ls:
            x.stop()
    assert client.get(key) is None  # released on stop


def test_coordination_for_redis_url(redis_server: RedisServer) -> None:
    ptr, lock = coordination_for(redis_server.url, prefix=_key())
    assert isinstance(ptr, RedisVersionPointer) and isinstance(lock, RedisLeaderLock)
    assert lock.try_acquire() and ptr.publish(1, "x", fence=lock) and lock.release()


# ---- one machine --------------------------------------------------------------------------
def test_file_pointer_is_monotonic_and_atomic(tmp_path: Path) -> None:
    ptr, lock = coordination_for(tmp_path / "state")
    assert isinstance(ptr, FileVersionPointer) and isinstance(lock, FileLeaderLock)
    assert ptr.current() is None
    assert ptr.publish(2, "/state/index/v2")
    assert not ptr.publish(2, "/elsewhere") and not ptr.publish(1, "/old")
    assert not ptr.publish(3, "/x", fence=lock)  # fenced: not leading
    assert lock.try_acquire() and ptr.publish(3, "/state/index/v3", fence=lock)
    again = FileVersionPointer(ptr.path)
    assert again.current().version == 3  # type: ignore[union-attr]
    assert json.loads(ptr.path.read_text())["location"] == "/state/index/v3"
    assert [p.name for p in ptr.path.parent.iterdir() if ".tmp" in p.name] == []
    lock.release()


def test_file_lock_one_holder_and_release(tmp_path: Path) -> None:
    a, b = FileLeaderLock(tmp_path / "l"), FileLeaderLock(tmp_path / "l")
    assert a.try_acquire() and a.try_acquire() and a.renew()
    assert not b.try_acquire() and not b.is_leader() and not b.release()
    assert a.release() and not a.is_leader()
    assert b.try_acquire()
    b.release()


def test_file_lock_passes_when_the_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "l"
    code = (
        "import sys, time\n"
        "from ralm.serve.coordination import FileLeaderLock\n"
        "l = FileLeaderLock(sys.argv[1]); assert l.try_acquire()\n"
        "print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    mine = FileLeaderLock(path)
    assert not mine.try_acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert mine.try_acquire()  # the kernel dropped the dead holder's lock
    mine.release()


def test_bad_lock_settings(client: Any) -> None:
    with pytest.raises(ValueError, match="ttl_ms"):
        RedisLeaderLock(client, "k", ttl_ms=1)


def _wait_for(cond: Any, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - t0


def test_redis_watcher_is_woken_by_the_publish(client: Any, redis_server: RedisServer) -> None:
    p = _key()
    leader = RedisVersionPointer(client, prefix=p)
    leader.publish(1, "v1")
    got: list[int] = []
    replica = RedisVersionPointer(redis_server.client(), prefix=p)
    w = VersionWatcher(replica, lambda v: got.append(v.version), poll_s=30.0).start()
    try:
        _wait_for(lambda: got == [1])  # the first poll finds what was published before
        time.sleep(0.1)  # the watcher is now waiting on the channel, not polling
        leader.publish(2, "v2")
        assert _wait_for(lambda: got == [1, 2]) < 5.0  # far less than poll_s
    finally:
        w.stop()


def test_file_watcher_polls_and_retries_a_failed_load(tmp_path: Path) -> None:
    ptr = FileVersionPointer(tmp_path / "CURRENT.json")
    calls: list[int] = []

    def load(v: Any) -> None:
        calls.append(v.version)
        if len(calls) == 1:
            raise OSError("shared storage not there yet")

    w = VersionWatcher(ptr, load, poll_s=0.02, seen=0).start()
    try:
        ptr.publish(1, "v1")
        _wait_for(lambda: w.seen == 1)
        assert calls[:2] == [1, 1]  # failed once, taken on the next poll
        ptr.publish(2, "v2")
        _wait_for(lambda: w.seen == 2)
    finally:
        w.stop()
    assert not w.check()  # nothing newer
