"""Several replicas of the service on one Redis store: the leader and the published versions.

Every replica serves; exactly one (the holder of the Redis leader lock,
:class:`ralm.serve.coordination.RedisLeaderLock` renewed by a
:class:`~ralm.serve.coordination.Leadership` thread) re-clusters, full cycles and the fast
path alike. The leader publishes a version in this order:

1. write the version folder ``state/index/vNNNNNNNN`` (stage 2's verified format) to the
   state folder every replica shares (a shared file system), under a name of its own
   first, then renamed into place without ever replacing an existing folder;
2. move the version pointer in Redis (``publish(version, "index/vNNNNNNNN", fence=lock,
   expect=v0)``: atomic, never backwards, refused once the lock is lost, and refused when
   the pointer no longer names ``v0``, the version it named when the cycle began: another
   leader published meanwhile, so this cycle was built without that version's items);
3. only when the pointer moved: serve it itself and mark the items clustered in the store.

Followers run a :class:`~ralm.serve.coordination.VersionWatcher` (Redis pub/sub plus a
poll) and load each newer version from the folder the pointer names, verified (sha256,
shapes, finite floats) before it replaces the served one; a version that fails to load is
logged, reported by ``/healthz`` and retried at the next wake-up, while the last good one
keeps serving. A follower that becomes leader first takes the pointer's version, so its
first cycle builds on what the others serve (the service skips a version the store records
as built by other model weights). A full cycle refused because the pointer moved is
retried soon, a bounded number of times (:class:`ralm.serve.recluster.Reclusterer`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ralm.common.atomic import fsync_dir
from ralm.errors import CheckpointError, RalmError
from ralm.lookalike.seed_index import SeedIndex
from ralm.serve.coordination import (
    Leadership,
    PublishedVersion,
    RedisLeaderLock,
    RedisVersionPointer,
    VersionWatcher,
)
from ralm.serve.index_holder import IndexHolder
from ralm.serve.snapshot_io import list_versions, load_snapshot, version_dir

log = logging.getLogger(__name__)

BOOTSTRAP_TTL_MS = 600_000  # lease of the lock that lets one replica fill an empty store


class Replication:
    """The replica side of a deployment sharing one Redis store and one state folder.

    Args:
        client: redis-py client (``decode_responses=True``) of the store's server.
        state_dir: the state folder every replica shares (published versions live in
            ``state_dir/index``).
        holder: this replica's served index.
        ttl_s: leader lock lease.
        poll_s: version pointer poll period.
        prefix: Redis key prefix (the store's).
    """

    def __init__(
        self,
        client: Any,
        state_dir: Path,
        holder: IndexHolder | None = None,
        ttl_s: float = 10.0,
        poll_s: float = 1.0,
        prefix: str = "ralm:",
    ) -> None:
        self.client = client
        self.state_dir = Path(state_dir)
        self.index_dir = self.state_dir / "index"
        self.holder = holder
        self.prefix = prefix
        self.pointer = RedisVersionPointer(client, prefix)
        self.lock = RedisLeaderLock(client, prefix + "leader", int(ttl_s * 1000))
        self.leadership = Leadership(self.lock, interval_s=max(0.01, ttl_s / 4))
        self.watcher: VersionWatcher | None = None
        self.poll_s = float(poll_s)
        self.saved_dir: Path | None = None  # last version folder taken (chunk hard links)
        self.load_error: str | None = None
        self._take = threading.Lock()  # the watcher and the leader's cycle take versions
        self.on_taken: Callable[[SeedIndex], None] | None = None

    # ---- role --------------------------------------------------------------------------
    def is_leader(self) -> bool:
        """This replica's own belief that it holds the leader lock (ends before the lease)."""
        return self.lock.is_leader()

    @property
    def role(self) -> str:
        return "leader" if self.is_leader() else "follower"

    def start(self, seen: int) -> None:
        """Try to lead once now, then keep trying (thread); follow the pointer (thread)."""
        try:
            self.lock.try_acquire()
        except Exception:  # the Leadership thread tries again
            log.exception("leader lock: first attempt failed")
        self.leadership.start()
        self.watcher = VersionWatcher(self.pointer, self._on_new, self.poll_s, seen=seen)
        self.watcher.start()

    def stop(self) -> None:
        """Stop following and release the lock at once (a successor need not wait)."""
        if self.watcher is not None:
            self.watcher.stop()
        self.leadership.stop(release=True)
        with contextlib.suppress(Exception):
            self.client.close()

    @contextmanager
    def bootstrap_lock(self, timeout_s: float = 900.0) -> Iterator[None]:
        """Held by one replica at a time while it fills an empty store with history."""
        lk = RedisLeaderLock(self.client, self.prefix + "bootstrap", BOOTSTRAP_TTL_MS)
        deadline = time.monotonic() + timeout_s
        while not lk.try_acquire():
            if time.monotonic() > deadline:
                raise RalmError(f"{self.prefix}bootstrap: another replica holds it too long")
            time.sleep(0.2)
        try:
            yield
        finally:
            lk.release()

    # ---- taking published versions ----------------------------------------------------
    def published(self) -> PublishedVersion | None:
        """What the pointer names now."""
        return self.pointer.current()

    def published_version(self) -> int:
        """The version the pointer names now (0 = none): a leader's cycle reads it before
        it takes the newest version, and its :meth:`commit` publishes only over it."""
        pv = self.pointer.current()
        return 0 if pv is None else pv.version

    def path_of(self, pv: PublishedVersion) -> Path:
        """The version folder a pointer names (relative to the shared state folder)."""
        p = Path(pv.location)
        return self.index_dir / p.name if p.is_absolute() else self.state_dir / p

    def load(self, pv: PublishedVersion) -> SeedIndex:
        """Read and verify the version ``pv`` names (CheckpointError when unsound)."""
        path = self.path_of(pv)
        snap = load_snapshot(path)
        if snap.version != pv.version:
            raise CheckpointError(
                f"{path / 'meta.json'}: holds version {snap.version}, the pointer names "
                f"{pv.version}"
            )
        return snap

    def _on_new(self, pv: PublishedVersion) -> None:
        """Watcher callback: serve ``pv`` if newer than the served version."""
        self.take(pv)

    def take(self, pv: PublishedVersion | None = None) -> bool:
        """Serve the pointer's version (or ``pv``) if newer than what is served.

        Returns True when a version was taken. Raises CheckpointError (after recording it
        for ``/healthz``) when the named version does not load; the served one stays.
        """
        assert self.holder is not None
        pv = pv if pv is not None else self.pointer.current()
        if pv is None:
            return False
        with self._take:
            if pv.version <= self.holder.version:
                return False
            try:
                snap = self.load(pv)
            except CheckpointError as e:
                self.load_error = f"published version {pv.version}: {e}"
                log.error("not serving %s", self.load_error)
                raise
            self.holder.publish(snap)
            self.saved_dir = self.path_of(pv)
            self.load_error = None
            log.info("serving published index version %d (%s)", pv.version, pv.location)
        if self.on_taken is not None:
            self.on_taken(snap)
        return True

    def restore(self, pv: PublishedVersion) -> tuple[SeedIndex | None, bool]:
        """Start-up: the pointer's version, else the newest sound version on disk.

        Returns ``(index or None, exact)``; ``exact`` is False when a fallback was used
        (clusterings newer than it are lost and must be redone).
        """
        preferred = self.path_of(pv)
        order = [preferred] + [p for p in list_versions(self.index_dir) if p != preferred]
        for path in order:
            if not path.is_dir():
                continue
            try:
                snap = self.load(pv) if path == preferred else load_snapshot(path)
            except CheckpointError as e:
                log.error("skipping unsound published index: %s", e)
                if path == preferred:
                    self.load_error = f"published version {pv.version}: {e}"
                continue
            self.saved_dir = path
            log.info("restored index version %d from %s", snap.version, path)
            return snap, path == preferred
        log.warning("no sound published index in %s", self.index_dir)
        return None, False

    # ---- the leader's publish ------------------------------------------------------------
    def commit(
        self, snap: SeedIndex, kind: str, base: int, expect: int | None = None
    ) -> SeedIndex | None:
        """Leader: write ``snap`` as a version folder, move the pointer (fenced), serve it.

        The version is raised past the pointer's and past every folder on disk (a deposed
        leader may have left an unpublished one). Returns the published index, or None
        when this replica is not (or no longer) the leader, when the served version moved
        past ``base`` (the version ``snap`` was built on) meanwhile, or when the pointer no
        longer names ``expect`` (what it named when the cycle began; checked again inside
        the publish script): another leader published while this cycle ran (this replica
        lost the lock and took it back before its watcher took that version), and ``snap``
        lacks what that version added. Then nothing is published and the caller must not
        mark items clustered; the next cycle builds on the newer version.
        """
        assert self.holder is not None
        if not self.is_leader():
            return None
        with self._take:
            if self.holder.version != base:
                log.warning("%s cycle built on version %d, now %d: redone", kind, base,
                            self.holder.version)  # fmt: skip
                return None
            cur = self.pointer.current()
            now = cur.version if cur is not None else 0
            if expect is not None and now != expect:
                log.warning("%s cycle began at published version %d, now %d: redone", kind,
                            expect, now)  # fmt: skip
                return None
            floor = max(cur.version if cur is not None else 0, _newest_on_disk(self.index_dir))
            if snap.version <= floor:
                snap = snap.with_version(floor + 1)
            snap, path = self._write_new(snap, kind)
            location = path.relative_to(self.state_dir).as_posix()
            if not self.pointer.publish(snap.version, location, fence=self.lock, expect=expect):
                log.warning(
                    "%s publish of version %d refused (leadership lost or pointer moved)",
                    kind,
                    snap.version,
                )
                return None
            self.saved_dir = path
            self.load_error = None  # a version that did not load is superseded
            self.holder.publish(snap)
            if self.watcher is not None:
                self.watcher.seen = max(self.watcher.seen, snap.version)
        if self.on_taken is not None:
            self.on_taken(snap)
        return snap

    def _write_new(self, snap: SeedIndex, kind: str) -> tuple[SeedIndex, Path]:
        """Write ``snap`` as a NEW version folder (its version raised past any folder on
        disk); returns it with its folder.

        The folder is written under a name of this replica's own, then renamed to
        ``vNNNNNNNN`` with ``rename(2)``, which refuses a non-empty target. So a folder is
        never replaced: a deposed leader still writing the version number its successor
        chose and published (it was a temporary when the successor looked) must not put
        its older index under the name the pointer gives every replica. On a clash the
        version is raised and written again (the chunks are hard-linked).
        """
        prev = self.saved_dir if self.saved_dir is not None and self.saved_dir.is_dir() else None
        while True:
            while version_dir(self.index_dir, snap.version).exists():
                snap = snap.with_version(snap.version + 1)
            final = version_dir(self.index_dir, snap.version)
            stage = final.with_name(f".{final.name}.tmp-{self.lock.token}")
            snap.save(stage, prev=prev)
            try:
                os.rename(stage, final)
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
                if not final.exists():
                    raise
                log.warning("%s version %d: another replica wrote that folder; raised",
                            kind, snap.version)  # fmt: skip
                continue
            fsync_dir(self.index_dir)
            return snap, final


def _newest_on_disk(root: Path) -> int:
    found = list_versions(root)
    return int(found[0].name[1:]) if found else 0
