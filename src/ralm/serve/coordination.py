"""Coordination of several service replicas: the published index version and the leader.

- **Version pointer**: names the index version every replica should serve. The leader
  writes the version folder (or blob) to shared storage first, then swaps the pointer in
  one atomic step; replicas poll :meth:`current` (or, with Redis, subscribe to the channel
  the pointer is announced on) and load the version it names. A pointer never moves back,
  and a publish can be *fenced* by the leader lock, so a leader that lost its lock (paused
  past its TTL) cannot overwrite the version of its successor.
- **Leader lock**: exactly one process re-clusters at a time. Redis: ``SET key token NX PX
  ttl``, renewed by compare-and-``PEXPIRE``, released by compare-and-``DEL`` (Lua, so a
  process never deletes a lock it no longer holds); a leader that dies stops renewing and
  the key expires after ``ttl``. A holder believes it leads only until ``ttl * (1 -
  margin)`` after the last successful call was *sent*, so its belief ends before the key
  can expire. One machine: an ``flock`` on a file in the state folder (the kernel releases
  it when the holder dies).

The re-clustering leader's order of steps: write the version folder, ``publish(version,
location, fence=lock, expect=v0)``, and only when that returned True
``store.mark_clustered(...)``: a deposed leader's publish is refused, so it must not mark
items clean either. ``expect`` is the version the pointer named when the cycle began: a
cycle that ran while another leader published (the lock lost and taken back meanwhile) was
built without that version's items, so its publish is refused too.

Redis keys (``P`` the prefix): ``P index:current`` (JSON ``{"version", "location",
"published_at"}``), channel ``P index:published`` (the same JSON), ``P leader`` (the
holder's token).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ralm.common.atomic import atomic_write_text

log = logging.getLogger(__name__)

_PUBLISH = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
local cur = redis.call('GET', KEYS[1])
local v = cur and tonumber(cjson.decode(cur)['version']) or 0
if ARGV[5] ~= '' and v ~= tonumber(ARGV[5]) then return -2 end
if cur and v >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class PublishedVersion:
    """What the pointer names.

    Args:
        version: index version number (increases with every publish).
        location: where the version lives (a folder on shared storage, a blob URL).
        published_at: unix time of the publish.
    """

    version: int
    location: str
    published_at: float

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "location": self.location, "published_at": self.published_at}
        )

    @classmethod
    def from_json(cls, raw: str) -> PublishedVersion:
        d = json.loads(raw)
        return cls(int(d["version"]), str(d["location"]), float(d["published_at"]))


# ---- leader locks -------------------------------------------------------------------------
@runtime_checkable
class LeaderLock(Protocol):
    """A lock that at most one process holds; ``is_leader`` is the holder's own belief."""

    token: str

    def try_acquire(self) -> bool:
        """Take the lock if free (or keep it if held); True when this process leads."""
        ...

    def renew(self) -> bool:
        """Extend a held lock; False (and no longer leader) when it was lost."""
        ...

    def release(self) -> bool:
        """Give the lock up if this process holds it; True when it did."""
        ...

    def is_leader(self) -> bool: ...


class RedisLeaderLock:
    """``SET key token NX PX ttl`` with renewal and compare-and-delete release.

    Args:
        client: redis-py client (``decode_responses=True``).
        key: the lock key (one per job that must run once).
        ttl_ms: lease; a holder that stops renewing loses the lock after this long.
        margin: fraction of the TTL a holder stops believing early (clock drift, latency).
        token: this holder's identity (default: a random one).
    """

    def __init__(
        self,
        client: Any,
        key: str = "ralm:leader",
        ttl_ms: int = 10_000,
        margin: float = 0.2,
        token: str | None = None,
    ) -> None:
        if ttl_ms < 10 or not 0.0 <= margin < 1.0:
            raise ValueError(f"need ttl_ms >= 10 and 0 <= margin < 1, got {ttl_ms}, {margin}")
        self.r = client
        self.key = key
        self.ttl_ms = int(ttl_ms)
        self.margin = float(margin)
        self.token = token or f"{os.getpid()}-{uuid.uuid4().hex}"
        self._until = 0.0
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _held_from(self, sent: float) -> None:
        self._until = sent + self.ttl_ms / 1000.0 * (1.0 - self.margin)

    def try_acquire(self) -> bool:
        sent = time.monotonic()
        if self.r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self._held_from(sent)
            return True
        return self.renew()  # held by us already: extend; by someone else: False

    def renew(self) -> bool:
        sent = time.monotonic()
        if int(self._renew(keys=[self.key], args=[self.token, self.ttl_ms])) == 1:
            self._held_from(sent)
            return True
        self._until = 0.0
        return False

    def release(self) -> bool:
        self._until = 0.0
        return int(self._release(keys=[self.key], args=[self.token])) == 1

    def is_leader(self) -> bool:
        return time.monotonic() < self._until


class FileLeaderLock:
    """One machine: an exclusive ``flock`` on ``path`` (released by the kernel on death).

    Args:
        path: the lock file (created with its folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, self.token.encode())  # who holds it, for people reading the file
        self._fd = fd
        return True

    def renew(self) -> bool:
        return self._fd is not None

    def release(self) -> bool:
        if self._fd is None:
            return False
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        return True

    def is_leader(self) -> bool:
        return self._fd is not None


class Leadership:
    """Keeps trying to lead: a daemon thread renews a held lock or tries to take it.

    Args:
        lock: the lock to hold.
        interval_s: seconds between attempts (well under the lock's TTL, e.g. TTL / 3).
    """

    def __init__(self, lock: LeaderLock, interval_s: float = 1.0) -> None:
        self.lock = lock
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Leadership:
        self._thread = threading.Thread(target=self._run, name="ralm-leadership", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            was = self.lock.is_leader()
            try:
                now = self.lock.renew() if was else self.lock.try_acquire()
            except Exception:  # the server may be away for a moment: try again later
                log.exception("leader lock %s: attempt failed", self.lock.token)
                now = self.lock.is_leader()
            if now != was:
                log.info("%s %s leadership", self.lock.token, "took" if now else "lost")
            self._stop.wait(self.interval_s)

    def is_leader(self) -> bool:
        return self.lock.is_leader()

    def stop(self, release: bool = True) -> None:
        """Stop the thread; with ``release`` hand the lock over at once (else it expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if release:
            with contextlib.suppress(Exception):
                self.lock.release()


# ---- version pointers ---------------------------------------------------------------------
@runtime_checkable
class VersionPointer(Protocol):
    """The atomic pointer naming the index version replicas serve."""

    def current(self) -> PublishedVersion | None: ...

    def publish(
        self,
        version: int,
        location: str,
        fence: LeaderLock | None = None,
        expect: int | None = None,
    ) -> bool:
        """Point at ``version`` if it is newer than the current one (and, with ``fence``,
        only while that lock is held; with ``expect``, only while the pointer names that
        version, 0 = none); True when the pointer moved."""
        ...


def wait_newer(
    pointer: VersionPointer, than: int, timeout_s: float, poll_s: float = 0.2
) -> PublishedVersion | None:
    """Poll ``pointer`` until it names a version newer than ``than`` (None on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        cur = pointer.current()
        if cur is not None and cur.version > than:
            return cur
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


class RedisVersionPointer:
    """A Redis key set with ``SET`` (in a Lua script: monotonic, optionally fenced) and
    announced with ``PUBLISH`` on ``channel``.

    Args:
        client: redis-py client (``decode_responses=True``).
        prefix: key prefix (the key is ``prefix + "index:current"``).
    """

    def __init__(self, client: Any, prefix: str = "ralm:") -> None:
        self.r = client
        self.key = prefix + "index:current"
        self.channel = prefix + "index:published"
        self._publish = client.register_script(_PUBLISH)

    def current(self) -> PublishedVersion | None:
        raw = self.r.get(self.key)
        return None if raw is None else PublishedVersion.from_json(raw)

    def publish(
        self,
        version: int,
        location: str,
        fence: LeaderLock | None = None,
        expect: int | None = None,
    ) -> bool:
        value = PublishedVersion(int(version), str(location), time.time()).to_json()
        if isinstance(fence, RedisLeaderLock):  # checked inside the same atomic script
            keys, token = [self.key, fence.key], fence.token
        else:
            if fence is not None and not fence.is_leader():
                return False
            keys, token = [self.key, self.key], ""
        want = "" if expect is None else str(int(expect))  # compared inside the script too
        args = [int(version), value, token, self.channel, want]
        return int(self._publish(keys=keys, args=args)) == 1


class FileVersionPointer:
    """One machine (or a shared file system): a JSON file replaced atomically.

    Publishes are serialised by an ``flock`` on ``path + ".lock"``.

    Args:
        path: the pointer file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def current(self) -> PublishedVersion | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return PublishedVersion.from_json(raw)

    def publish(
        self,
        version: int,
        location: str,
        fence: LeaderLock | None = None,
        expect: int | None = None,
    ) -> bool:
        if fence is not None and not fence.is_leader():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            cur = self.current()
            if expect is not None and (cur.version if cur is not None else 0) != int(expect):
                return False
            if cur is not None and cur.version >= int(version):
                return False
            atomic_write_text(
                self.path, PublishedVersion(int(version), str(location), time.time()).to_json()
            )
            return True
        finally:
            os.close(fd)  # closing drops the flock


class VersionWatcher:
    """A replica's side of the pointer: calls ``on_new`` whenever it names a newer version.

    Polls every ``poll_s``; with a :class:`RedisVersionPointer` it also listens on the
    pointer's channel, so a publish wakes it at once (the poll still catches what a
    dropped subscription missed). When ``on_new`` raises, the version is tried again at
    the next wake-up.

    Args:
        pointer: the pointer to follow.
        on_new: called with each newer :class:`PublishedVersion`, from the watcher thread.
        poll_s: seconds between polls.
        seen: the version this replica already serves.
    """

    def __init__(
        self,
        pointer: VersionPointer,
        on_new: Callable[[PublishedVersion], object],
        poll_s: float = 1.0,
        seen: int = 0,
    ) -> None:
        self.pointer = pointer
        self.on_new = on_new
        self.poll_s = float(poll_s)
        self.seen = int(seen)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> VersionWatcher:
        self._thread = threading.Thread(target=self._run, name="ralm-version-watch", daemon=True)
        self._thread.start()
        return self

    def check(self) -> bool:
        """One poll: hand a newer version to ``on_new``; True when one was taken."""
        cur = self.pointer.current()
        if cur is None or cur.version <= self.seen:
            return False
        self.on_new(cur)
        self.seen = cur.version
        return True

    def _run(self) -> None:
        sub = None
        if isinstance(self.pointer, RedisVersionPointer):
            sub = self.pointer.r.pubsub(ignore_subscribe_messages=True)
            sub.subscribe(self.pointer.channel)
        try:
            while not self._stop.is_set():
                try:
                    self.check()
                except Exception:
                    log.exception("version watcher: taking the published version failed")
                if sub is None:
                    self._stop.wait(self.poll_s)
                    continue
                deadline = time.monotonic() + self.poll_s
                try:  # wait for a message in short slices, so stop() is seen quickly
                    while not self._stop.is_set() and time.monotonic() < deadline:
                        left = deadline - time.monotonic()
                        if sub.get_message(timeout=max(0.0, min(0.25, left))) is not None:
                            break
                except Exception:  # the subscription dropped: fall back to polling
                    self._stop.wait(self.poll_s)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    sub.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def coordination_for(
    location: str | Path, prefix: str = "ralm:", ttl_ms: int = 10_000
) -> tuple[VersionPointer, LeaderLock]:
    """The pointer and leader lock of a deployment.

    Args:
        location: ``redis://...`` (several replicas) or a state folder (one machine).
        prefix: Redis key prefix.
        ttl_ms: Redis lock lease.
    """
    loc = str(location)
    if loc.startswith(("redis://", "rediss://", "unix://")):
        from ralm.serve.redis_store import connect

        client = connect(loc)
        return RedisVersionPointer(client, prefix), RedisLeaderLock(
            client, prefix + "leader", ttl_ms
        )
    root = Path(location)
    return FileVersionPointer(root / "index" / "CURRENT.json"), FileLeaderLock(root / "leader.lock")
