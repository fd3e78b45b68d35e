"""The real server (uvicorn on 127.0.0.1, subprocess) on a small trained run, over HTTP."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .server_proc import AUTH, ServerProcess

Run = tuple[Path, Path, list[int]]
LOOKALIKE = {"group_hint": "g0", "age": 0.2}  # the toy data's group 0 profile
UNRELATED = {"group_hint": "g2", "age": 0.8}


def _recommend(url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + "/recommend", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_servable(url: str, item: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/items/{item}", timeout=10)
        if r.status_code == 200 and r.json()["servable"]:
            return dict(r.json())
        time.sleep(0.3)
    raise TimeoutError(f"{item} never became servable")


@pytest.fixture(scope="module")
def server(trained_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    run, data, _ = trained_run
    state = tmp_path_factory.mktemp("serve") / "state"
    srv = ServerProcess(run, data, state, "--recluster-every", "2", "--min-seeds", "5",
                        "--no-fast-path")  # fmt: skip
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_new_item_reaches_lookalike_users_after_one_cycle(
    server: ServerProcess, trained_run: Run
) -> None:
    groups = trained_run[2]
    # the new item catches on within one taste group (the audience of a typical item)
    seeds = [f"u{u}" for u, g in enumerate(groups) if g == 0][:90]
    before = _recommend(server.url, {"features": LOOKALIKE, "n": 10})
    assert "fresh-item" not in [it["item_id"] for it in before["items"]]
    clicks = [{"user_id": u, "item_id": "fresh-item"} for u in seeds]
    r = httpx.post(server.url + "/clicks", json={"clicks": clicks}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json() == {"accepted": len(seeds), "new_seeds": len(seeds)}
    info = _wait_servable(server.url, "fresh-item")  # one re-cluster cycle (T = 2 s)
    assert info["clustered_seeds"] == len(seeds) == sum(info["cluster_sizes"])
    like = _recommend(server.url, {"features": LOOKALIKE, "n": 10})
    other = _recommend(server.url, {"features": UNRELATED, "n": 10})
    assert like["index_version"] > before["index_version"]
    assert "fresh-item" in [it["item_id"] for it in like["items"]]
    assert "fresh-item" not in [it["item_id"] for it in other["items"]]
    oov = _recommend(server.url, {"features": {"group_hint": "never-seen", "age": 0.5}, "n": 3})
    assert len(oov["items"]) == 3  # unknown values are OOV, not errors


def test_bad_inputs_get_4xx_and_the_server_lives_on(server: ServerProcess) -> None:
    url = server.url
    cases = [
        ("/recommend", {"json": {"user_id": "u1", "n": 10**9}}, 422, "n"),
        ("/recommend", {"json": {"user_id": ["u1"]}}, 422, "user_id"),
        ("/recommend", {"json": {"features": {"no_such_field": 1}}}, 422, "no_such_field"),
        ("/recommend", {"json": {"user_id": "ghost"}}, 404, "user_id"),
        (
            "/recommend",
            {"content": b'{"user_id": ', "headers": {"content-type": "application/json"}},
            422,
            "json",
        ),
        ("/clicks", {"json": {"clicks": [{"user_id": "u1"}]}, "headers": AUTH}, 422, "item_id"),
        ("/clicks", {"json": {"clicks": []}, "headers": AUTH}, 422, "clicks"),
        ("/clicks", {"json": {"clicks": [{"user_id": "u1", "item_id": "x"}]}}, 401, "token"),
    ]
    for path, kw, code, needle in cases:
        r = httpx.post(url + path, timeout=10, **kw)
        assert r.status_code == code, (path, kw, r.text)
        assert needle in r.json()["detail"].lower(), r.text
    r = httpx.post(url + "/clicks", content=b"0" * (9 << 20), headers=AUTH, timeout=30)
    assert r.status_code == 413
    assert httpx.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    assert server.proc.poll() is None


def test_kill9_and_restart_keep_acknowledged_clicks(trained_run: Run, tmp_path: Path) -> None:
    run, data, _ = trained_run
    state = tmp_path / "state"
    srv = ServerProcess(run, data, state, "--recluster-every", "3600", "--min-seeds", "3")
    try:
        v0 = srv.wait_ready()["index_version"]
        acked = 0
        for b in range(5):
            batch = [{"user_id": f"u{10 * b + j}", "item_id": "durable", "ts": 100.0 + b}
                     for j in range(10)]  # fmt: skip
            r = httpx.post(srv.url + "/clicks", json={"clicks": batch}, headers=AUTH, timeout=30)
            assert r.status_code == 200
            acked += r.json()["new_seeds"]
    finally:
        srv.kill9()  # right after the last acknowledgement
    again = ServerProcess(run, data, state, "--recluster-every", "3600", "--min-seeds", "3")
    try:
        v1 = again.wait_ready()["index_version"]
        info = httpx.get(again.url + "/items/durable", timeout=10).json()
        assert info["n_seeds"] == acked == 50
        assert v1 >= v0  # versions never go back across restarts
        r = httpx.post(again.url + "/admin/recluster", headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json()["version"] > v1
        assert httpx.get(again.url + "/items/durable", timeout=10).json()["servable"]
    finally:
        again.stop()


@pytest.mark.slow
def test_concurrent_recommend_clicks_and_recluster(trained_run: Run, tmp_path: Path) -> None:
    run, data, groups = trained_run
    srv = ServerProcess(run, data, tmp_path / "state", "--recluster-every", "1",
                        "--min-seeds", "3")  # fmt: skip
    errors: list[str] = []
    versions: dict[int, list[int]] = {}
    counts = {"recommend": 0, "clicks": 0}
    stop = time.monotonic() + 30.0
    lock = threading.Lock()

    def reader(i: int) -> None:
        rng = random.Random(i)
        seen: list[int] = []
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while time.monotonic() < stop:
                body: dict[str, Any] = {"user_id": f"u{rng.randrange(len(groups))}", "n": 20}
                if rng.random() < 0.3:
                    body = {"features": LOOKALIKE, "n": 20, "exclude": ["i1"]}
                r = c.post("/recommend", json=body)
                if r.status_code != 200:
                    errors.append(f"recommend {r.status_code} {r.text}")
                    continue
                seen.append(r.json()["index_version"])
                with lock:
                    counts["recommend"] += 1
        versions[i] = seen

    def writer(i: int) -> None:
        rng = random.Random(100 + i)
        with httpx.Client(base_url=srv.url, timeout=30, headers=AUTH) as c:
            while time.monotonic() < stop:
                item = f"live-{rng.randrange(20)}"
                users = rng.sample(range(len(groups)), 5)
                clicks = [{"user_id": f"u{u}", "item_id": item} for u in users]
                r = c.post("/clicks", json={"clicks": clicks})
                if r.status_code != 200:
                    errors.append(f"clicks {r.status_code} {r.text}")
                with lock:
                    counts["clicks"] += 1
                time.sleep(0.05)

    try:
        v0 = srv.wait_ready()["index_version"]
        stop = time.monotonic() + 30.0
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = httpx.get(srv.url + "/healthz", timeout=10).json()
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
    finally:
        srv.stop()
    assert not errors, errors[:5]
    assert counts["recommend"] > 50 and counts["clicks"] > 50
    for seen in versions.values():  # each client sees versions that never go back
        assert seen == sorted(seen)
    assert health["index_version"] > v0 and health["recluster_error"] is None
    assert max(max(s) for s in versions.values()) > v0
    assert 'ralm_recluster_duration_seconds_count{kind="full"}' in metrics
    assert "ralm_seeds_ingested_total" in metrics
