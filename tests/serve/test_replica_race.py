"""Issue 13 on replicas: a cycle that snapshotted the store must not publish over a version
another leader published meanwhile (real redis-server, two in-process replicas).

The interleaving: leader A starts a full cycle (it reads the changed items, then builds);
A pauses past its lease, B takes the lock, clicks of a new item arrive and B's fast path
publishes it servable; B hands the lock back (a clean stop, or its own pause) and A takes
it again before A's watcher took B's version (a pub/sub message in flight, a missed one
waiting for the next poll, or a slow load). A's build then ends. A's version was built on
the version before B's, so publishing it would drop B's item (``in_index: false``) or
put back an older clustering of an item B re-clustered. The publish must be refused: the
pointer no longer names the version A's cycle started from.

The folder side of the same hand-over: a deposed leader still writing the version number
its successor chose and published must not replace the successor's folder (every replica
that loads the pointer's version later would get the deposed leader's older index).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ralm.lookalike.seed_index import IndexUpdate
from ralm.serve.coordination import RedisLeaderLock, RedisVersionPointer
from ralm.serve.recluster import BuildJob, CycleReport, LocalBackend
from ralm.serve.replication import Replication
from ralm.serve.service import RalmService
from ralm.serve.store import Click

from .conftest import background_clicks, make_service
from .planted import group_users
from .redis_fixture import RedisServer


def _replica(state: Path, url: str) -> RalmService:
    # no start(): no renewal thread and no watcher, so the test moves the lock and decides
    # when a replica takes a published version (A's watcher "has not taken it yet")
    return make_service(state, store=url, leader_ttl_s=60.0, fast_path_min_seeds=3)


def _rep(svc: RalmService) -> Replication:
    assert svc.replication is not None
    return svc.replication


class GatedBackend:
    """The real local backend, held at a gate after it read and clustered the seeds
    (a long build: clicks arrive before it publishes)."""

    name = "gated"

    def __init__(self) -> None:
        self.inner = LocalBackend()
        self.entered = threading.Event()
        self.release = threading.Event()

    def build(self, job: BuildJob) -> tuple[IndexUpdate, int]:
        got = self.inner.build(job)  # the seeds are read and clustered now
        self.entered.set()
        assert self.release.wait(60), "the test never opened the gate"
        return got

    def close(self) -> None:
        self.release.set()


def _handover(a: RalmService, b: RalmService) -> None:
    """A's lease is taken over by B while A still believes it leads (a pause past TTL)."""
    _rep(a).client.set(_rep(a).lock.key, _rep(b).lock.token)
    assert _rep(a).is_leader() and _rep(b).lock.try_acquire()


def _give_back(a: RalmService, b: RalmService) -> None:
    """B lets the lock go (a clean stop) and A takes it again."""
    assert _rep(b).lock.release() and _rep(a).lock.try_acquire()


def _start_gated_full(a: RalmService) -> tuple[GatedBackend, threading.Thread, list[CycleReport]]:
    gate = GatedBackend()
    a.reclusterer.backend = gate
    out: list[CycleReport] = []
    t = threading.Thread(target=lambda: out.append(a.reclusterer.run_full()), daemon=True)
    t.start()
    assert gate.entered.wait(60), "A's full cycle never finished its build"
    return gate, t, out


def _finish(gate: GatedBackend, t: threading.Thread, out: list[CycleReport]) -> CycleReport:
    gate.release.set()
    t.join(60)
    assert not t.is_alive() and len(out) == 1
    return out[0]


def test_a_stale_full_cycle_does_not_drop_an_item_the_fast_path_published(
    tmp_path: Path, redis_url: str
) -> None:
    state = tmp_path / "shared"
    a, b = _replica(state, redis_url), _replica(state, redis_url)
    try:
        assert _rep(a).lock.try_acquire()
        a.add_clicks(background_clicks(items_per_group=1, clickers=10))
        v1 = a.reclusterer.run_full().version
        assert v1 is not None and _rep(b).take() and b.holder.version == v1
        a.add_clicks([Click(u, "slow", time.time()) for u in group_users(1, 10)])
        gate, t, out = _start_gated_full(a)  # A snapshotted the changes: "slow" only
        _handover(a, b)
        # clicks of a new item after A's snapshot; B's fast path makes it servable
        b.add_clicks([Click(u, "quick", time.time()) for u in group_users(0, 3)])
        fast = b.reclusterer.run_fast()  # "slow" too: not servable in A's version either
        assert fast.n_items == 2 and fast.version is not None and fast.version > v1
        assert b.item_info("quick")["servable"]
        _give_back(a, b)
        assert a.holder.version == v1  # A's watcher has not taken B's version yet
        full = _finish(gate, t, out)
        # the served versions keep the fast-path item, on every replica
        pv = _rep(b).published()
        assert pv is not None
        _rep(a).take()
        _rep(b).take()
        for svc in (a, b):
            info = svc.item_info("quick")
            assert info["in_index"] and info["servable"], (svc.role, pv.version, info)
        # A's cycle was refused, so its items stay pending and nothing is lost
        assert full.skipped == "refused" and full.version is None
        assert pv.version == fast.version == b.holder.version == a.holder.version
        assert "slow" in [it.item_id for it in a.store.items(changed_only=True)]
        # A's next cycle builds on B's version: both items servable, nothing pending
        a.reclusterer.backend = LocalBackend()
        nxt = a.reclusterer.run_full()
        assert nxt.version is not None and nxt.version > fast.version
        assert _rep(b).take()
        for svc in (a, b):
            assert svc.item_info("quick")["servable"] and svc.item_info("slow")["servable"]
            assert not svc.item_info("slow")["pending_recluster"]
        assert not a.store.items(changed_only=True)
    finally:
        b.close()
        a.close()


def test_a_stale_full_cycle_does_not_put_back_an_older_clustering(
    tmp_path: Path, redis_url: str
) -> None:
    state = tmp_path / "shared"
    a, b = _replica(state, redis_url), _replica(state, redis_url)
    try:
        assert _rep(a).lock.try_acquire()
        a.add_clicks(background_clicks(items_per_group=1, clickers=10))
        v1 = a.reclusterer.run_full().version
        assert v1 is not None
        a.add_clicks([Click(u, "grow", time.time()) for u in group_users(1, 10)])
        gate, t, out = _start_gated_full(a)  # A clustered "grow" with 10 seeds
        _handover(a, b)
        # more clicks on "grow"; B's full cycle clusters all 20 and marks it clustered
        b.add_clicks([Click(u, "grow", time.time()) for u in group_users(1, 20)[10:]])
        done = b.reclusterer.run_full()
        assert done.version is not None and b.item_info("grow")["clustered_seeds"] == 20
        assert not b.store.items(changed_only=True)
        _give_back(a, b)
        full = _finish(gate, t, out)
        _rep(a).take()
        _rep(b).take()
        # A published nothing over B's version: "grow" keeps its 20-seed clustering (an
        # older 10-seed one would stay served with the item marked clean: until its next
        # click, not merely until the next cycle)
        for svc in (a, b):
            info = svc.item_info("grow")
            assert info["clustered_seeds"] == 20, (svc.role, info)
            assert svc.holder.version == done.version
        assert full.skipped == "refused" and not a.store.items(changed_only=True)
    finally:
        b.close()
        a.close()


def test_the_pointer_publishes_only_over_the_expected_version(redis_server: RedisServer) -> None:
    c = redis_server.client()
    c.flushdb()
    try:
        ptr = RedisVersionPointer(c, "race:")
        lock = RedisLeaderLock(c, "race:leader", 60_000)
        assert lock.try_acquire()
        assert not ptr.publish(1, "v1", fence=lock, expect=3)  # the pointer is empty (0)
        assert ptr.publish(1, "v1", fence=lock, expect=0)
        assert ptr.publish(2, "v2", fence=lock, expect=1)
        assert not ptr.publish(4, "v4", fence=lock, expect=1)  # it moved past 1 meanwhile
        assert ptr.publish(4, "v4", fence=lock, expect=2)
        assert ptr.publish(5, "v5")  # no expectation: as before
        cur = ptr.current()
        assert cur is not None and cur.version == 5
    finally:
        c.close()


def test_a_publish_over_a_version_published_while_the_folder_was_written_is_refused(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race inside ``commit``: after its checks, while A writes the version
    folder, B publishes; the pointer script itself must refuse A's publish."""
    from ralm.lookalike.seed_index import SeedIndex

    state = tmp_path / "shared"
    a, b = _replica(state, redis_url), _replica(state, redis_url)
    try:
        assert _rep(a).lock.try_acquire()
        a.add_clicks(background_clicks(items_per_group=1, clickers=10))
        v1 = a.reclusterer.run_full().version
        assert v1 is not None and _rep(b).take()
        a.add_clicks([Click(u, "slow", time.time()) for u in group_users(1, 10)])
        real_save = SeedIndex.save
        fast: list[CycleReport] = []
        calls: list[int] = []

        def save_while_b_publishes(self: SeedIndex, *args: object, **kw: object) -> object:
            calls.append(1)
            if len(calls) == 1:  # A's save: B leads, publishes, hands the lock back
                _handover(a, b)
                b.add_clicks([Click(u, "quick", time.time()) for u in group_users(0, 3)])
                fast.append(b.reclusterer.run_fast())
                _give_back(a, b)
            return real_save(self, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(SeedIndex, "save", save_while_b_publishes)
        full = a.reclusterer.run_full()
        assert fast and fast[0].version is not None and fast[0].version > v1
        assert full.skipped == "refused" and full.version is None
        pv = _rep(b).published()
        assert pv is not None and pv.version == fast[0].version
        _rep(a).take()
        for svc in (a, b):
            assert svc.holder.version == pv.version and svc.item_info("quick")["servable"]
        assert "slow" in [it.item_id for it in a.store.items(changed_only=True)]
    finally:
        b.close()
        a.close()


def test_a_deposed_leader_still_writing_its_folder_never_replaces_a_published_one(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's commit chose version n and is slow writing its folder (a pause, a slow shared
    file system); meanwhile it loses the lock, A leads, chooses n as well (B's folder is
    still a temporary) and publishes it. B's folder, renamed into place afterwards, must
    not replace A's: the pointer names A's, and every replica that loads it (a follower
    waking late, a restart) must get what A serves, not B's version without A's items."""
    from ralm.lookalike.seed_index import SeedIndex

    state = tmp_path / "shared"
    a, b = _replica(state, redis_url), _replica(state, redis_url)
    c: RalmService | None = None
    try:
        assert _rep(b).lock.try_acquire()
        b.add_clicks(background_clicks(items_per_group=1, clickers=10))
        v1 = b.reclusterer.run_full().version
        assert v1 is not None and _rep(a).take()
        real_save = SeedIndex.save
        in_b, release = threading.Event(), threading.Event()
        b_thread: list[threading.Thread] = []

        def save(self: SeedIndex, *args: object, **kw: object) -> object:
            if threading.current_thread() in b_thread:  # B's write: held until A published
                in_b.set()
                assert release.wait(60)
            return real_save(self, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(SeedIndex, "save", save)
        b.add_clicks([Click(u, "early", time.time()) for u in group_users(1, 3)])
        out: list[CycleReport] = []
        t = threading.Thread(target=lambda: out.append(b.reclusterer.run_fast()), daemon=True)
        b_thread.append(t)
        t.start()
        assert in_b.wait(60), "B's fast cycle never reached its folder write"
        _handover(b, a)  # B, paused in its write, loses the lock; A leads
        a.add_clicks([Click(u, "quick", time.time()) for u in group_users(0, 3)])
        fast = a.reclusterer.run_fast()  # "early" and "quick"
        assert fast.n_items == 2 and fast.version is not None and fast.version > v1
        release.set()
        t.join(60)
        assert not t.is_alive() and out[0].skipped == "refused"  # fenced: B lost the lock
        pv = _rep(a).published()
        assert pv is not None and pv.version == fast.version == a.holder.version
        # what the pointer names on disk is what A serves
        c = _replica(state, redis_url)  # a replica (re)started now restores the pointer's
        assert c.holder.version == fast.version
        _rep(b).take()
        for name, svc in (("a", a), ("b", b), ("c", c)):
            info = svc.item_info("quick")
            assert info["in_index"] and info["servable"], (name, svc.holder.version, info)
            assert svc.item_info("early")["servable"]
    finally:
        if c is not None:
            c.close()
        b.close()
        a.close()
