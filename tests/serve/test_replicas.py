"""Several replicas on one real redis-server and one shared state folder.

In-process: two :class:`RalmService` objects (the planted model) share a Redis store; one
leads, the other follows the published versions. Over HTTP (slow): two ``ralm serve``
processes on a small trained run; a click sent to one becomes servable on the other after
one cycle, both answer alike, and a SIGKILLed leader is replaced within the lock's TTL with
no acknowledged click lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ralm.errors import CheckpointError
from ralm.serve.replication import Replication
from ralm.serve.service import RalmService
from ralm.serve.snapshot_io import list_versions
from ralm.serve.store import Click

from .conftest import background_clicks, make_service
from .planted import group_users
from .redis_fixture import RedisServer
from .server_proc import AUTH, ServerProcess


def _until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def _replica(state: Path, url: str, **cfg: object) -> RalmService:
    opts: dict[str, object] = {"store": url, "leader_ttl_s": 1.0, "version_poll_s": 0.2}
    opts.update(cfg)
    return make_service(state, **opts)


def _rep(svc: RalmService) -> Replication:
    assert svc.replication is not None
    return svc.replication


def _top(svc: RalmService, group: str = "g0", n: int = 6) -> list[tuple[str, float]]:
    res = svc.recommend(features={"group": group}, n=n)
    return [(it.item_id, it.score) for it in res.items]


# ---- in process --------------------------------------------------------------------------
def test_one_leader_publishes_and_the_follower_serves_its_versions(
    tmp_path: Path, redis_url: str
) -> None:
    state = tmp_path / "shared"
    a = _replica(state, redis_url, fast_path=False)
    a.add_clicks(background_clicks())
    a.start()  # first: takes the lock, clusters the pending items
    b = _replica(state, redis_url, fast_path=False)
    b.start()
    try:
        assert (a.role, b.role) == ("leader", "follower")
        assert a.health()["role"] == "leader" and b.health()["role"] == "follower"
        v1 = a.holder.version
        assert v1 >= 1 and _rep(a).published() is not None
        assert _rep(a).published().version == v1  # type: ignore[union-attr]
        _until(lambda: b.holder.version == v1, what="follower at the leader's version")
        # a click sent to the follower: the follower does not re-cluster, the leader does
        b.add_clicks([Click(u, "fresh", time.time()) for u in group_users(0, 20)])
        assert b.reclusterer.run_full().skipped == "follower"
        assert b.reclusterer.run_fast().skipped == "follower"
        assert b.holder.version == v1 and "fresh" not in b.holder.current().row_of
        rep = a.reclusterer.run_full()
        assert rep.n_items == 1 and rep.version is not None and rep.version > v1
        _until(lambda: b.holder.version == rep.version, what="follower took the new version")
        info = b.item_info("fresh")
        assert info["servable"] and info["clustered_seeds"] == 20
        assert not info["pending_recluster"]  # marked clustered after the fenced publish
        # the same version answers the same, on either replica
        assert _top(a) == _top(b)
        assert _top(a, "g1") == _top(b, "g1")
        assert "fresh" in [i for i, _ in _top(b)]  # among group 0's six items
        assert "fresh" not in [i for i, _ in _top(b, "g1", 5)]
        # the version folder is on the shared state folder, named by the pointer
        pv = _rep(b).published()
        assert pv is not None and pv.location == f"index/v{rep.version:08d}"
        assert (state / pv.location / "meta.json").is_file()
        assert b.health()["published_version"] == rep.version == b.health()["index_version"]
    finally:
        b.close()
        a.close()


def test_a_deposed_leader_publishes_nothing_and_marks_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    state = tmp_path / "shared"
    a = _replica(state, redis_url, leader_ttl_s=60.0)
    b = _replica(state, redis_url, leader_ttl_s=60.0)
    try:
        assert _rep(a).lock.try_acquire()  # no renewal thread: the test moves the lock
        a.add_clicks(background_clicks(items_per_group=1, clickers=10))
        first = a.reclusterer.run_full()
        assert first.version is not None and not a.store.items(changed_only=True)
        a.add_clicks([Click(u, "late", time.time()) for u in group_users(1, 10)])
        # a's lease is taken over while a still believes it leads (a pause past the TTL)
        _rep(a).client.set(_rep(a).lock.key, _rep(b).lock.token)
        assert _rep(a).is_leader() and _rep(b).lock.try_acquire()
        refused = a.reclusterer.run_full()
        assert refused.skipped == "refused" and refused.version is None
        assert [it.item_id for it in a.store.items(changed_only=True)] == ["late"]
        assert a.holder.version == first.version  # it serves nothing the others would not
        pv = _rep(a).published()
        assert pv is not None and pv.version == first.version
        orphan = max(int(p.name[1:]) for p in list_versions(state / "index"))
        # the new leader builds on the published version and skips the orphan folder
        rep = b.reclusterer.run_full()
        assert rep.n_items == 1 and rep.version is not None and rep.version > orphan
        assert not b.store.items(changed_only=True)
        assert b.item_info("late")["servable"]
    finally:
        b.close()
        a.close()


def test_an_unloadable_version_keeps_the_last_good_one_and_is_redone(
    tmp_path: Path, redis_url: str
) -> None:
    state = tmp_path / "shared"
    a = _replica(state, redis_url, leader_ttl_s=60.0)
    b = _replica(state, redis_url, leader_ttl_s=60.0)
    try:
        assert _rep(a).lock.try_acquire()
        a.add_clicks(background_clicks(items_per_group=1, clickers=10))
        good = a.reclusterer.run_full().version
        assert good is not None and _rep(b).take() and b.holder.version == good
        a.add_clicks([Click(u, "new", time.time()) for u in group_users(2, 10)])
        bad = a.reclusterer.run_full().version
        assert bad is not None
        folder = state / "index" / f"v{bad:08d}"
        chunk = next(folder.glob("chunk-*.safetensors"))
        data = bytearray(chunk.read_bytes())
        data[-8:] = b"\xff" * 8  # flipped bytes: the sha256 no longer matches
        chunk.unlink()  # (hard-linked: replace the file, not the shared inode)
        chunk.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="chunk-"):
            _rep(b).take()
        h = b.health()
        assert b.holder.version == good and h["status"] == "degraded"
        assert f"published version {bad}" in h["reason"]
        # b becomes the leader: it cannot build on the bad version, so it re-clusters
        # everything from what it serves and publishes past it
        _rep(a).stop()
        assert _rep(b).lock.try_acquire()
        rep = b.reclusterer.run_full()
        assert rep.version is not None and rep.version > bad
        assert b.item_info("new")["servable"] and b.health()["status"] == "ok"
        assert b.holder.version == rep.version
        # a replica started now restores the published version without re-clustering
        c = _replica(state, redis_url)
        try:
            assert c.holder.version == rep.version and c.item_info("new")["servable"]
            assert _top(c) == _top(b)
        finally:
            c.close()
    finally:
        b.close()
        a.close()


def test_the_fast_path_goes_through_the_leader_too(tmp_path: Path, redis_url: str) -> None:
    state = tmp_path / "shared"
    a = _replica(state, redis_url, leader_ttl_s=60.0, fast_path_min_seeds=3)
    b = _replica(state, redis_url, leader_ttl_s=60.0, fast_path_min_seeds=3)
    try:
        assert _rep(a).lock.try_acquire()
        a.add_clicks([Click(u, "quick", time.time()) for u in group_users(0, 3)])
        assert b.reclusterer.run_fast().skipped == "follower"
        rep = a.reclusterer.run_fast()
        assert rep.n_items == 1 and rep.version is not None
        pv = _rep(b).published()
        assert pv is not None and pv.version == rep.version
        assert (state / pv.location / "meta.json").is_file()  # a fast version is a folder too
        assert _rep(b).take() and b.item_info("quick")["servable"]
        assert b.item_info("quick")["pending_recluster"]  # the next full cycle redoes it
        key = _rep(a).lock.key
        a.close()  # a clean stop hands the lock over at once
        assert _rep(b).client.get(key) is None and _rep(b).lock.try_acquire()
    finally:
        b.close()
        a.close()


def test_the_default_store_is_still_sqlite_in_the_state_folder(tmp_path: Path) -> None:
    svc = make_service(tmp_path / "state")
    try:
        assert svc.replication is None and svc.role == "leader"
        assert (tmp_path / "state" / "seeds.sqlite3").is_file()
        assert svc.health()["published_version"] is None
    finally:
        svc.close()


# ---- two real processes over HTTP --------------------------------------------------------
Run = tuple[Path, Path, list[int]]
LOOKALIKE = {"group_hint": "g0", "age": 0.2}
TTL = 3.0


def _health(srv: ServerProcess) -> dict[str, Any]:
    r = httpx.get(srv.url + "/healthz", timeout=5)
    assert r.status_code == 200
    return dict(r.json())


def _servable(srv: ServerProcess, item: str) -> bool:
    r = httpx.get(f"{srv.url}/items/{item}", timeout=5)
    return r.status_code == 200 and bool(r.json()["servable"])


def _post_clicks(srv: ServerProcess, clicks: list[dict[str, Any]]) -> dict[str, Any]:
    r = httpx.post(srv.url + "/clicks", json={"clicks": clicks}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _recommend(srv: ServerProcess) -> dict[str, Any]:
    r = httpx.post(srv.url + "/recommend", json={"features": LOOKALIKE, "n": 10}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.slow
def test_two_replica_processes_share_clicks_versions_and_leadership(
    trained_run: Run, redis_server: RedisServer, tmp_path: Path
) -> None:
    c = redis_server.client()
    c.flushdb()
    run, data, groups = trained_run
    state = tmp_path / "shared-state"
    flags = ("--store", redis_server.url, "--recluster-every", "1", "--min-seeds", "5",
             "--no-fast-path", "--leader-ttl", str(TTL), "--version-poll", "0.5")  # fmt: skip
    a = ServerProcess(run, data, state, *flags)
    b: ServerProcess | None = None
    try:
        a.wait_ready()
        _until(lambda: _health(a)["role"] == "leader", what="a leads")
        b = ServerProcess(run, data, state, *flags)
        hb = b.wait_ready()
        assert hb["role"] == "follower"
        # a click sent to the leader is servable on the follower after one cycle
        seeds = [f"u{u}" for u, g in enumerate(groups) if g == 0][:60]
        _post_clicks(a, [{"user_id": u, "item_id": "fresh-item"} for u in seeds])
        t0 = time.monotonic()
        _until(lambda: _servable(b, "fresh-item"), 30, "fresh-item servable on b")
        click_to_servable = time.monotonic() - t0

        # the same version answers the same on both replicas
        def same_version() -> tuple[dict[str, Any], dict[str, Any]] | None:
            x, y = _recommend(a), _recommend(b)
            return (x, y) if x["index_version"] == y["index_version"] else None

        ra, rb = _until(same_version, what="both at one version")
        assert ra["items"] == rb["items"]
        assert "fresh-item" in [it["item_id"] for it in rb["items"]]
        # a stream of clicks to the leader, killed mid-stream
        acked: list[int] = []
        stop = threading.Event()

        def stream() -> None:
            i = 0
            while not stop.is_set():
                batch = [{"user_id": f"s{i}-{j}", "item_id": "stream-item"} for j in range(5)]
                try:
                    _post_clicks(a, batch)
                except Exception:
                    return  # the leader died: this call was not acknowledged
                acked.append(i)
                i += 1

        th = threading.Thread(target=stream)
        th.start()
        _until(lambda: len(acked) >= 5, what="some acknowledged clicks")
        killed = time.monotonic()
        a.kill9()
        stop.set()
        th.join(30)
        _until(lambda: _health(b)["role"] == "leader", TTL + 5, "b leads")
        failover = time.monotonic() - killed
        assert failover <= TTL * 1.25 + 1.5, failover  # TTL + one attempt + slack
        info = httpx.get(b.url + "/items/stream-item", timeout=5).json()
        assert info["n_seeds"] >= 5 * len(acked)  # no acknowledged click lost
        assert info["n_seeds"] <= 5 * (len(acked) + 1)  # plus the one in flight at most
        # re-clustering continues on the new leader
        v = _health(b)["index_version"]
        more = [f"u{u}" for u, g in enumerate(groups) if g == 1][:60]
        _post_clicks(b, [{"user_id": u, "item_id": "after-failover"} for u in more])
        _until(lambda: _servable(b, "after-failover"), 30, "after-failover servable")
        assert _health(b)["index_version"] > v
        # the killed replica comes back as a follower serving the published version
        a = ServerProcess(run, data, state, *flags)
        ha = a.wait_ready()
        assert ha["role"] == "follower" and ha["index_version"] >= v + 1
        _until(lambda: _servable(a, "after-failover"), 30, "after-failover servable on a")
        print(f"click to servable on the other replica {click_to_servable:.2f}s; "
              f"failover {failover:.2f}s (TTL {TTL}s)")  # fmt: skip
    finally:
        c.close()
        a.stop()
        if b is not None:
            b.stop()
