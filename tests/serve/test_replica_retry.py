"""Replicas: a full cycle refused because another leader published meanwhile is retried
soon (not a whole period later), a bounded number of times; and a new leader does not
build on a published version the store records as built by other model weights (real
redis-server, in-process replicas, staged as in ``test_replica_race.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from ralm.lookalike.seed_index import IndexUpdate
from ralm.serve.recluster import BuildJob, LocalBackend
from ralm.serve.replication import Replication
from ralm.serve.service import RalmService
from ralm.serve.store import Click

from .conftest import background_clicks, make_service
from .planted import group_users


def _replica(state: Path, url: str, **cfg: object) -> RalmService:
    # no start(): no renewal thread and no watcher; the test moves the lock itself
    opts: dict[str, object] = {"leader_ttl_s": 60.0, "fast_path_min_seeds": 3}
    opts.update(cfg)
    return make_service(state, store=url, **opts)


def _rep(svc: RalmService) -> Replication:
    assert svc.replication is not None
    return svc.replication


def _handover(a: RalmService, b: RalmService) -> None:
    """A's lease is taken over by B while A still believes it leads (a pause past TTL)."""
    _rep(a).client.set(_rep(a).lock.key, _rep(b).lock.token)
    assert _rep(a).is_leader() and _rep(b).lock.try_acquire()


def _give_back(a: RalmService, b: RalmService) -> None:
    """B lets the lock go (a clean stop) and A takes it again."""
    assert _rep(b).lock.release() and _rep(a).lock.try_acquire()


class OtherLeaderPublishes:
    """A's backend: the real local build, during which (the first ``times`` builds) B
    takes the lock, publishes a new item with its fast path and hands the lock back, so
    A's publish is refused (the pointer moved since A's cycle began)."""

    name = "other-leader-publishes"

    def __init__(self, a: RalmService, b: RalmService, times: int) -> None:
        self.a, self.b, self.times = a, b, times
        self.inner = LocalBackend()
        self.builds: list[float] = []
        self.b_versions: list[int] = []

    def build(self, job: BuildJob) -> tuple[IndexUpdate, int]:
        got = self.inner.build(job)
        self.builds.append(time.monotonic())
        if len(self.builds) <= self.times:
            _handover(self.a, self.b)
            n = len(self.builds)
            clicks = [Click(u, f"quick{n}", time.time()) for u in group_users(0, 3, start=n)]
            self.b.add_clicks(clicks)
            fast = self.b.reclusterer.run_fast()
            assert fast.version is not None
            self.b_versions.append(fast.version)
            _give_back(self.a, self.b)
        return got

    def close(self) -> None:
        return None


def _two_leaders(tmp_path: Path, url: str) -> tuple[RalmService, RalmService, int]:
    state = tmp_path / "shared"
    a, b = _replica(state, url), _replica(state, url)
    assert _rep(a).lock.try_acquire()
    a.add_clicks(background_clicks(items_per_group=1, clickers=10))
    v1 = a.reclusterer.run_full().version
    assert v1 is not None and _rep(b).take()
    a.add_clicks([Click(u, "slow", time.time()) for u in group_users(1, 10)])
    return a, b, v1


def _wait(cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(cond())  # type: ignore[operator]


def test_a_refused_full_cycle_is_retried_soon_and_clusters_its_items(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The period is an hour: without the retry "slow" would stay pending for an hour."""
    a, b, _ = _two_leaders(tmp_path, redis_url)
    try:
        backend = OtherLeaderPublishes(a, b, times=1)
        a.reclusterer.backend = backend
        with caplog.at_level(logging.WARNING, logger="ralm.serve.recluster"):
            full = a.reclusterer.run_full()  # A's cycle (start-up or the loop's): refused
        assert full.skipped == "refused" and full.version is None
        assert full.moved_to == backend.b_versions[0]
        assert a.item_info("slow")["pending_recluster"]
        assert any("retry 1 of 3" in r.getMessage() for r in caplog.records), caplog.text
        a.reclusterer.start()  # the background thread: full cycles every hour, retry now
        assert _wait(lambda: not a.item_info("slow")["pending_recluster"], 20.0), (
            "the refused full cycle was not retried before the period"
        )
        assert len(backend.builds) == 2
        pv = _rep(a).published()
        assert pv is not None and pv.version > backend.b_versions[0]
        _rep(b).take()
        for svc in (a, b):  # built on B's version: B's item kept, A's item clustered
            assert svc.holder.version == pv.version
            assert svc.item_info("quick1")["servable"] and svc.item_info("slow")["servable"]
            assert not svc.item_info("slow")["pending_recluster"]
        assert not a.store.items(changed_only=True)
    finally:
        a.close()
        b.close()


def test_a_full_cycle_refused_again_and_again_is_retried_a_bounded_number_of_times(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another leader publishes during every attempt: A retries ``full_retries`` times
    (at once, then backing off), then waits for the period; its items stay pending."""
    a, b, _ = _two_leaders(tmp_path, redis_url)
    try:
        backend = OtherLeaderPublishes(a, b, times=1_000)
        a.reclusterer.backend = backend
        a.reclusterer.full_retry_delay_s = 0.2
        assert a.reclusterer.full_retries == 3
        with caplog.at_level(logging.WARNING, logger="ralm.serve.recluster"):
            first = a.reclusterer.run_full()
            assert first.skipped == "refused" and first.moved_to is not None
            a.reclusterer.start()
            assert _wait(lambda: len(backend.builds) >= 4, 20.0), backend.builds
            time.sleep(2.0)  # far longer than the last back-off (0.4 s at most)
        assert len(backend.builds) == 4, "retried more than 3 times in a row"
        gaps = [t1 - t0 for t0, t1 in zip(backend.builds, backend.builds[1:], strict=False)]
        assert gaps[1] >= 0.1 and gaps[2] >= 0.2  # backing off: 0.2 s, 0.4 s (jitter x0.5..1)
        assert a.reclusterer.retry_full_at is None  # back to the hourly period
        assert any("refused 4 times in a row" in r.getMessage() for r in caplog.records)
        assert "slow" in [it.item_id for it in a.store.items(changed_only=True)]
        pv = _rep(a).published()
        assert pv is not None and pv.version == backend.b_versions[-1]  # B's, never A's
        # the next attempt that is not refused publishes them (the counter starts again)
        a.reclusterer.stop()
        backend.times = 0
        done = a.reclusterer.run_full()
        assert done.version is not None and not a.store.items(changed_only=True)
    finally:
        a.close()
        b.close()


def test_a_new_leader_does_not_build_on_a_version_of_other_weights(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """C ignored the pointer's version at start-up (other weights published it); when C
    becomes leader, its cycle must not load that version either."""
    state = tmp_path / "shared"
    a = _replica(state, redis_url)
    c: RalmService | None = None
    try:
        assert _rep(a).lock.try_acquire()
        a.add_clicks(background_clicks(items_per_group=1, clickers=10))
        assert a.reclusterer.run_full().version is not None
        a.add_clicks([Click(u, "quick", time.time()) for u in group_users(0, 3)])
        va = a.reclusterer.run_fast().version
        assert va is not None
        meta = a.store.get_meta("index")
        assert meta["version"] == va
        a.store.set_meta("index", {**meta, "fingerprint": "other-weights"})  # A's weights
        c = _replica(state, redis_url)
        assert c.holder.version < va  # ignored at start-up
        assert _rep(a).lock.release() and _rep(c).lock.try_acquire()  # A stops; C leads
        with caplog.at_level(logging.WARNING, logger="ralm.serve.service"):
            c.reclusterer.run_fast()
            c.reclusterer.run_fast()
        assert c.holder.version != va, "the leader loaded the version of other weights"
        said = [r for r in caplog.records if "built by other model weights" in r.getMessage()]
        assert len(said) == 1, caplog.text  # once per refused version
        done = c.reclusterer.run_full()  # every item re-clustered by C's weights
        assert done.version is not None and done.version > va
        assert c.store.get_meta("index")["fingerprint"] == c.model.fingerprint
        assert not c.store.items(changed_only=True)
        assert c.item_info("quick")["servable"]
    finally:
        if c is not None:
            c.close()
        a.close()


def test_a_refusal_because_the_lock_was_lost_schedules_no_retry(
    tmp_path: Path, redis_url: str
) -> None:
    """Deposed for good (B keeps the lock): B re-clusters; A must not retry."""
    a, b, _ = _two_leaders(tmp_path, redis_url)
    try:

        class Deposed(LocalBackend):
            def build(self, job: BuildJob) -> tuple[IndexUpdate, int]:
                got = super().build(job)
                _handover(a, b)  # A still believes it leads until it checks
                return got

        a.reclusterer.backend = Deposed()
        full = a.reclusterer.run_full()
        assert full.skipped == "refused" and full.moved_to is None  # the fence refused it
        assert a.reclusterer.retry_full_at is None
    finally:
        a.close()
        b.close()
