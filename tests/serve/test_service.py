"""The service in-process: scoring against the stage-2 scorer, batching, exclusions,
seed thresholds, the fast path and restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.errors import DataError
from ralm.serve.config import ServeConfig
from ralm.serve.service import RalmService, UnknownUserError
from ralm.serve.store import Click

from .conftest import background_clicks, make_service
from .planted import group_users, planted_model


def test_ranking_equals_the_stage2_scorer_on_the_whole_table(service: RalmService) -> None:
    snap = service.holder.current()
    assert snap.n_items == 15 and snap.n_servable == 15
    res = service.recommend(features={"group": "g1"}, n=15)
    m = service.model
    with torch.no_grad():
        u = torch.from_numpy(m.embedder.embed_features([{"group": "g1"}]))  # (1, m)
        t = snap.tensors()  # the whole table: centroids, mask, global_vec, gram, sizes
        s = m.scorer.score(
            m.scorer.transform(u), t["centroids"], t["mask"], t["global_vec"], sizes=t["sizes"]
        )[0]  # (I,)
        p = m.scorer.pctr(s)
    order = torch.argsort(s, descending=True)
    assert [it.item_id for it in res.items] == [snap.item_ids[int(i)] for i in order]
    np.testing.assert_allclose([it.pctr for it in res.items], p[order].numpy(), rtol=1e-5)
    assert all(it.item_id.startswith("item-g1-") for it in res.items[:5])
    assert res.version == snap.version and res.user == "features"


def test_batched_results_equal_single_results(service: RalmService) -> None:
    users = [f"u{i}" for i in range(24)]
    single = {u: service.recommend(user_id=u, n=7).items for u in users}
    out: dict[str, list] = {}

    def go(u: str) -> None:
        out[u] = service.recommend(user_id=u, n=7).items

    threads = [threading.Thread(target=go, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for u in users:  # same scores; ids may only swap between float-level ties
        np.testing.assert_allclose(
            [r.score for r in out[u]], [r.score for r in single[u]], atol=1e-5
        )
        ref = {r.item_id: r.score for r in single[u]}
        for r in out[u]:
            assert r.item_id in ref or r.score <= single[u][-1].score + 1e-5
            assert abs(ref.get(r.item_id, r.score) - r.score) <= 1e-5
    # that concurrent requests are merged into fewer scorer calls, each getting its own
    # rows, is asserted deterministically in test_batcher.py (a bound here cannot fail)


def test_exclusions(service: RalmService) -> None:
    top = service.recommend(user_id="u0", n=3).items
    again = service.recommend(user_id="u0", n=3, exclude=[top[0].item_id, "no-such-item"]).items
    assert top[0].item_id not in [r.item_id for r in again]
    clicked = set(service.store.items_of_user("u0"))
    assert clicked
    res = service.recommend(user_id="u0", n=15, exclude_clicked=True).items
    assert clicked.isdisjoint(r.item_id for r in res)
    assert len(res) == 15 - len(clicked)  # never padded with excluded items


def test_unknown_user_and_stored_features(service: RalmService) -> None:
    with pytest.raises(UnknownUserError, match="user_id"):
        service.recommend(user_id="stranger", n=3)
    first = service.recommend(user_id="stranger", features={"group": "g2"}, n=3)
    assert first.user == "features"
    with pytest.raises(UnknownUserError):  # a read never writes the features
        service.recommend(user_id="stranger", n=3)
    assert service.store.user_features(["stranger"]) == {}
    service.set_user_features("stranger", {"group": "g2"})  # the explicit, authenticated write
    again = service.recommend(user_id="stranger", n=3)
    assert again.user == "stored-features"
    assert [r.item_id for r in again.items] == [r.item_id for r in first.items]
    with pytest.raises(DataError, match="group"):  # validated before anything is stored
        service.set_user_features("other", {"group": "nonsense"})
    assert service.store.user_features(["other"]) == {}


def test_min_seeds_without_fast_path(tmp_path: Path) -> None:
    svc = make_service(tmp_path, fast_path=False, min_seeds=5)
    svc.add_clicks(background_clicks())
    svc.add_clicks([Click(u, "thin", time.time()) for u in group_users(0, 4)])
    svc.start()
    try:
        info = svc.item_info("thin")
        assert info["in_index"] and not info["servable"] and info["clustered_seeds"] == 4
        assert "thin" not in [r.item_id for r in svc.recommend(user_id="u0", n=16).items]
        svc.add_clicks([Click(group_users(0, 5)[4], "thin", time.time())])  # a 5th seed
        svc.reclusterer.run_full()
        assert svc.item_info("thin")["servable"]
    finally:
        svc.close()


def test_new_item_fast_path_reaches_lookalikes_only(service: RalmService) -> None:
    v0 = service.holder.version
    service.add_clicks([Click(u, "fresh", time.time()) for u in group_users(2, 3)])
    assert service.reclusterer.run_fast().n_items == 1
    assert service.holder.version == v0 + 1
    info = service.item_info("fresh")
    assert info["servable"] and info["pending_recluster"]  # the full cycle still owes it
    like = [r.item_id for r in service.recommend(features={"group": "g2"}, n=6).items]
    other = [r.item_id for r in service.recommend(features={"group": "g0"}, n=6).items]
    assert "fresh" in like and "fresh" not in other
    assert service.reclusterer.run_full().n_items == 1
    assert not service.item_info("fresh")["pending_recluster"]


def test_online_users_become_seeds(service: RalmService) -> None:
    feats = {f"web-{i}": {"group": "g1"} for i in range(4)}
    clicks = [Click(uid, "web-item", time.time()) for uid in feats]
    clicks.append(Click("ghost", "web-item", time.time()))  # no features: not embeddable
    service.add_clicks(clicks, feats)
    service.reclusterer.run_full()
    info = service.item_info("web-item")
    assert info["n_seeds"] == 5 and info["clustered_seeds"] == 4 and info["servable"]


def test_restart_restores_index_and_versions_keep_increasing(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    svc.add_clicks(background_clicks())
    svc.start()
    svc.add_clicks([Click(u, "fresh", time.time()) for u in group_users(1, 6)])
    svc.reclusterer.run_fast()
    v, ids = svc.holder.version, list(svc.holder.current().item_ids)
    cen = svc.holder.current().centroids
    svc.close()

    again = make_service(tmp_path)
    snap = again.holder.current()
    try:
        assert snap.version > v  # never goes back, even past unsaved fast-path versions
        # the last *full* version is restored; the fast-path item is still pending
        assert list(snap.item_ids) == ids[:15]
        np.testing.assert_array_equal(snap.centroids, cen[:15])
        again.start()
        again.reclusterer.run_fast()
        assert again.item_info("fresh")["servable"] and again.holder.version > snap.version
    finally:
        again.close()


def test_corrupted_published_index_falls_back(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    svc.add_clicks(background_clicks())
    svc.start()
    svc.add_clicks([Click(u, "later", time.time()) for u in group_users(0, 6)])
    svc.reclusterer.run_full()
    v = svc.holder.version
    svc.close()
    newest = sorted((tmp_path / "index").glob("v*"))[-1]
    for f in newest.glob("chunk-*.safetensors"):
        f.unlink()  # a new inode: the older version's hard link keeps its bytes
        f.write_bytes(b"garbage")
    again = make_service(tmp_path)
    try:
        snap = again.holder.current()
        assert snap.version > v and "later" not in snap.row_of  # the older version
        assert {it.item_id for it in again.store.items(changed_only=True)} >= {"later"}
        assert again.reclusterer.run_full().n_items == 16  # everything is redone
        assert again.item_info("later")["servable"]
    finally:
        again.close()


def test_background_thread_serves_new_items_within_seconds(tmp_path: Path) -> None:
    svc = make_service(tmp_path, fast_path_every_s=0.2, recluster_every_s=1.0)
    svc.add_clicks(background_clicks())
    svc.start()
    try:
        v0 = svc.holder.version
        svc.add_clicks([Click(u, "breaking", time.time()) for u in group_users(1, 3)])
        deadline = time.monotonic() + 10
        while not svc.item_info("breaking")["servable"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.item_info("breaking")["servable"]
        while svc.item_info("breaking")["pending_recluster"] and time.monotonic() < deadline:
            time.sleep(0.05)  # then the full cycle (T = 1 s) clusters it properly
        assert not svc.item_info("breaking")["pending_recluster"]
        assert svc.holder.version >= v0 + 2
    finally:
        svc.close()


def test_failing_cycle_keeps_the_last_version(
    service: RalmService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("k-means exploded")

    before = service.holder.current()
    monkeypatch.setattr("ralm.serve.recluster.index_items", boom)
    service.add_clicks([Click(u, "doomed", time.time()) for u in group_users(0, 3)])
    with pytest.raises(RuntimeError):
        service.reclusterer.run_full()
    assert service.holder.current() is before  # nothing half-published
    assert service.item_info("doomed")["pending_recluster"]
    assert service.recommend(user_id="u0", n=3).version == before.version
    deadline = time.monotonic() + 10  # the background fast path fails too, and says so
    while service.health()["status"] == "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.health()["status"] == "degraded"
    assert "k-means exploded" in service.health()["recluster_error"]
    assert service.holder.current() is before


def test_other_model_weights_do_not_reuse_the_published_index(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    svc.add_clicks(background_clicks())
    svc.start()
    v = svc.holder.version
    svc.close()
    model = planted_model(seed=5)  # other weights, same shapes
    model.fingerprint = "retrained"
    again = RalmService(model, ServeConfig(state_dir=tmp_path, min_seeds=5))
    try:
        assert again.holder.current().n_items == 0 and again.holder.version > v
        again.start()  # everything is re-clustered with the new weights
        assert again.holder.current().n_items == 15
    finally:
        again.close()
