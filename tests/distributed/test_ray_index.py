"""The Ray backend builds exactly the single-process index, and fails safely.

A real local Ray runtime (2 CPUs, no dashboard) is started once for the module. The
single-process references are the local re-clustering job and stage 2's builder called
directly in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

import ralm
from ralm.distributed.ray_index import (
    RAY_FAULT_ENV,
    RayBackend,
    item_chunks,
    ray_cluster_for_model,
    ray_index_items,
)
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.index_builder import cluster_for_model, index_items, transform_seeds
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex
from ralm.serve.config import ServeConfig
from ralm.serve.index_holder import IndexHolder
from ralm.serve.recluster import LocalBackend, Reclusterer
from ralm.serve.runtime import ServingModel, TableEmbedder
from ralm.serve.seed_store import Click, SeedStore
from ralm.serve.store import SQLiteSeedStore

M, H, K = 12, 8, 3
N_USERS, N_ITEMS = 400, 37
COMPARED = ("item_ids", "centroids", "mask", "sizes", "global_vec", "gram", "n_seeds", "servable")


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _model(backend: str = "faiss", variant: str = "ralm") -> LookalikeModel:
    torch.manual_seed(0)
    cfg = LookalikeConfig(m=M, h=H, k=K, kmeans_backend=backend, variant=variant)
    return LookalikeModel(cfg).eval()


def _world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, float]]]:
    """User ids, their universal embeddings and clicks: item j gets 0..60 distinct users."""
    rng = np.random.default_rng(seed)
    user_ids = np.asarray([f"u{j}" for j in range(N_USERS)])
    universal = rng.normal(size=(N_USERS, M)).astype(np.float32)  # (U, m)
    clicks = []
    for i in range(N_ITEMS):
        n = int(rng.integers(0, 61)) if i % 9 else 2  # some items with <= k seeds
        for t, u in enumerate(rng.choice(N_USERS, n, replace=False)):
            clicks.append((str(user_ids[u]), f"item{i:03d}", 1000.0 + t))
    return user_ids, universal, clicks


def _job(
    tmp: Path, name: str, model: LookalikeModel, backend: object, clicks: list,
    store: SeedStore | None = None,
) -> tuple[Reclusterer, SeedStore]:  # fmt: skip
    """A re-clustering job over ``clicks`` (a new SQLite store unless ``store`` is given)."""
    user_ids, universal, _ = _world()
    store = store or SQLiteSeedStore(tmp / f"{name}.sqlite3")
    store.bulk_import(clicks)
    serving = ServingModel(scorer=model, embedder=TableEmbedder(user_ids, universal))
    cfg = ServeConfig(state_dir=tmp, min_seeds=4, fast_path=False, seed=7)
    holder = IndexHolder(SeedIndex.empty(serving.k, serving.h))
    return Reclusterer(store, holder, serving, cfg, backend=backend), store  # type: ignore[arg-type]


def _assert_same(a: SeedIndex, b: SeedIndex) -> None:
    assert a.n_items == b.n_items
    order = np.asarray([b.row_of[i] for i in a.item_ids.tolist()])
    got = b.gather(order)
    for name in COMPARED[1:]:
        np.testing.assert_array_equal(getattr(a, name), got[name], err_msg=name)


def _assert_same_update(a: IndexUpdate, b: IndexUpdate) -> None:
    for name in COMPARED:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_item_chunks_cover_items_in_order() -> None:
    n = [5, 0, 7, 3, 9, 1, 1, 8]
    got = item_chunks(n, items_per_task=3, max_seeds=6, seed_cap=12)
    assert [i for c in got for i in range(c.start, c.stop)] == list(range(len(n)))
    assert all(c.stop - c.start <= 3 for c in got)
    for c in got:  # a chunk never runs past a seed group (the local path's memory bound)
        assert sum(min(x, 6) for x in n[c][:-1]) < 12


@pytest.mark.parametrize(
    ("variant", "kmeans"), [("ralm", "faiss"), ("average", "faiss"), ("ralm", "torch")]
)
def test_ray_cycles_equal_local_cycles(
    ray_runtime: None, tmp_path: Path, variant: str, kmeans: str
) -> None:
    """Cold then warm full cycles: Ray tasks of 5 items each == the local job, exactly."""
    _, _, clicks = _world()
    model = _model(kmeans, variant=variant)
    local, s1 = _job(tmp_path, "local", model, LocalBackend(), clicks)
    backend = RayBackend(items_per_task=5)
    remote, s2 = _job(tmp_path, "ray", model, backend, clicks)
    try:
        for cycle in range(2):
            if cycle:  # new seeds for a third of the items, and two new items: warm start
                more = [Click(f"u{j}", f"item{i:03d}", 5000.0 + j) for i in range(0, 40, 3)
                        for j in range(30, 38)]  # fmt: skip
                s1.add_clicks(more)
                s2.add_clicks(more)
            r1, r2 = local.run_full(), remote.run_full()
            assert r1.n_items == r2.n_items > 0 and r1.n_seeds == r2.n_seeds
            assert backend.last_tasks == -(-r2.n_items // 5) > 1
            _assert_same(local.holder.current(), remote.holder.current())
            assert remote.holder.current().version == local.holder.current().version == cycle + 1
        assert remote.holder.current().n_items == s2.n_items() > N_ITEMS - 3
        assert "item039" in remote.holder.current().row_of  # a new item
        assert not s2.items(changed_only=True)  # the Ray cycle marked its items clustered
    finally:
        s1.close()
        s2.close()
        backend.close()


def test_torch_backend_equals_local_in_any_chunking(ray_runtime: None, tmp_path: Path) -> None:
    """The torch backend seeds every item from (seed, item id): tasks of 7 items == local."""
    _, _, clicks = _world(1)
    model = _model("torch")
    local, s1 = _job(tmp_path, "local", model, LocalBackend(), clicks)
    remote, s2 = _job(tmp_path, "ray", model, RayBackend(items_per_task=7), clicks)
    try:
        local.run_full()
        remote.run_full()
        _assert_same(local.holder.current(), remote.holder.current())
    finally:
        s1.close()
        s2.close()


@pytest.mark.parametrize("kmeans", ["faiss", "torch"])
def test_ray_index_items_equals_index_items(ray_runtime: None, kmeans: str) -> None:
    """Training's form: the seeds and CSR in the object store, 7 tasks of 6 items."""
    _, universal, _ = _world(2)
    model = _model(kmeans)
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, size=N_ITEMS)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = rng.integers(0, N_USERS, size=int(offsets[-1]))
    ids = [f"it{i}" for i in range(N_ITEMS)]
    prev = None
    for _cycle in range(2):  # cold, then warm-started by id from the first index
        ref = index_items(
            model, universal, (offsets, rows), prev, item_ids=ids, seed=5, min_seeds=3,
            clustered_at=1.0,
        )  # fmt: skip
        got = ray_index_items(
            model, universal, (offsets, rows), prev, item_ids=ids, seed=5, min_seeds=3,
            clustered_at=1.0, items_per_task=6,
        )  # fmt: skip
        _assert_same_update(ref, got)
        prev = SeedIndex.from_update(ref, version=1)
        rows = rows[::-1].copy()


@pytest.mark.parametrize("kmeans", ["faiss", "torch"])
def test_ray_cluster_for_model_equals_training_clustering(ray_runtime: None, kmeans: str) -> None:
    _, universal, _ = _world(4)
    model = _model(kmeans)
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 40, size=N_ITEMS)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    emb = transform_seeds(model, universal, rng.integers(0, N_USERS, size=int(offsets[-1])))
    ref = cluster_for_model(model, emb, offsets, seed=11)
    got = ray_cluster_for_model(model, emb, offsets, seed=11, items_per_task=8)
    warm_ref = cluster_for_model(model, emb, offsets, init=ref, seed=12)
    warm_got = ray_cluster_for_model(model, emb, offsets, init=ref, seed=12, items_per_task=8)
    for a, b in ((ref, got), (warm_ref, warm_got)):
        for name in ("centroids", "mask", "sizes", "assign"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_failed_first_attempts_are_retried(
    ray_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task fails (raises) once; the retries build the index."""
    _, _, clicks = _world()
    markers = tmp_path / "markers"
    markers.mkdir()
    model = _model()
    local, s1 = _job(tmp_path, "local", model, LocalBackend(), clicks)
    backend = RayBackend(items_per_task=13, max_retries=1)
    remote, s2 = _job(tmp_path, "ray", model, backend, clicks)
    monkeypatch.setenv(RAY_FAULT_ENV, f"once:{markers}")
    try:
        local.run_full()
        rep = remote.run_full()
        assert rep.version == 1
        assert len(list(markers.iterdir())) == backend.last_tasks > 1  # each failed once
        _assert_same(local.holder.current(), remote.holder.current())
    finally:
        s1.close()
        s2.close()


@pytest.mark.slow
def test_crashed_workers_are_retried(tmp_path: Path) -> None:
    """Every task's worker process dies once; the retries build the local index. Run by
    ray_crash_driver.py in its own process with its own Ray runtime (see its docstring)."""
    src = str(Path(ralm.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop(RAY_FAULT_ENV, None)
    res = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "ray_crash_driver.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["version"] == 1
    assert got["markers"] == got["tasks"] > 1  # each task's first worker died


def test_failing_cycle_keeps_the_previous_version(
    ray_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries exhausted: nothing is published, items stay pending, the error is reported."""
    _, _, clicks = _world()
    model = _model()
    backend = RayBackend(items_per_task=13, max_retries=1)
    job, store = _job(tmp_path, "ray", model, backend, clicks)
    try:
        job.run_full()
        before = job.holder.current()
        store.add_clicks([Click("u1", "item-new", 9000.0), Click("u2", "item-new", 9001.0)])
        monkeypatch.setenv(RAY_FAULT_ENV, "always")
        job.config = job.config.model_copy(update={"recluster_every_s": 0.2})
        job.start()
        deadline = time.monotonic() + 60
        while job.last_error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        job.stop()
        assert job.last_error is not None and "RayTaskFailed" in job.last_error
        assert "injected failure" in job.last_error
        assert job.holder.current() is before and before.version == 1
        assert [it.item_id for it in store.items(changed_only=True)] == ["item-new"]
        monkeypatch.delenv(RAY_FAULT_ENV)
        rep = job.run_full()  # the next cycle (fault gone) publishes
        assert rep.version == 2 and "item-new" in job.holder.current().row_of
    finally:
        store.close()


@pytest.mark.slow
def test_ray_cycle_on_a_real_run_with_online_users(
    ray_runtime: None, trained_run: tuple[Path, Path, list[int]], tmp_path: Path
) -> None:
    """The loader's embedder (table + stage-1 feature path) travels to the tasks; seeds of
    users first seen online are embedded there from their stored features."""
    from ralm.data.encoded import EncodedDataset
    from ralm.data.feature_encoder import FeatureEncoder
    from ralm.serve.loader import load_serving_model

    run, data, _ = trained_run
    serving = load_serving_model(run, data)
    ds = EncodedDataset.load(data)
    enc = FeatureEncoder.from_dataset(ds)
    history = list(serving.bootstrap_clicks())  # type: ignore[misc]
    online = [(f"new{u}", enc.decode_user(ds, u)) for u in range(12)]
    items = sorted({i for _, i, _ in history})[:5]
    fresh = [Click(uid, it, 9e9) for uid, _ in online for it in items]
    jobs, stores = [], []
    backend = RayBackend(items_per_task=4)
    for name, b in (("local", LocalBackend()), ("ray", backend)):
        store = SQLiteSeedStore(tmp_path / f"{name}.sqlite3")
        store.bulk_import(history)
        for uid, feats in online:
            store.put_user_features(uid, feats)
        store.add_clicks(fresh)
        cfg = ServeConfig(state_dir=tmp_path, min_seeds=3, fast_path=False, seed=3)
        holder = IndexHolder(SeedIndex.empty(serving.k, serving.h))
        jobs.append(Reclusterer(store, holder, serving, cfg, backend=b))
        stores.append(store)
    try:
        r1, r2 = jobs[0].run_full(), jobs[1].run_full()
        assert r1.n_seeds == r2.n_seeds == stores[1].n_seed_rows()  # online users embedded
        assert backend.last_tasks > 1
        _assert_same(jobs[0].holder.current(), jobs[1].holder.current())
    finally:
        for s in stores:
            s.close()


def test_ray_tasks_read_a_redis_store(ray_runtime: None, tmp_path: Path) -> None:
    """With the Redis store every task opens the URL (and the key prefix) itself; the index
    equals the local job's over a SQLite store holding the same clicks."""
    import uuid

    from ralm.serve.redis_store import RedisSeedStore
    from serve.redis_fixture import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    _, _, clicks = _world(6)
    model = _model()
    try:
        local, s1 = _job(tmp_path, "local", model, LocalBackend(), clicks)
        backend = RayBackend(items_per_task=9)
        store = RedisSeedStore(server.url, max_seeds=1000, prefix=f"t{uuid.uuid4().hex}:")
        remote, _ = _job(tmp_path, "redis", model, backend, clicks, store=store)
        local.run_full()
        rep = remote.run_full()
        assert rep.version == 1 and backend.last_tasks > 1
        _assert_same(local.holder.current(), remote.holder.current())
        assert not store.items(changed_only=True)
        s1.close()
        store.close()
    finally:
        server.stop()


def test_service_configured_for_ray(ray_runtime: None, tmp_path: Path) -> None:
    """``ServeConfig(recluster_backend="ray")``: the service's job runs its full cycles as
    Ray tasks and serves what they built (the planted groups' items rank first)."""
    from ralm.serve.service import RalmService
    from serve.conftest import background_clicks
    from serve.planted import planted_model

    cfg = ServeConfig(
        state_dir=tmp_path / "state", recluster_every_s=3600, min_seeds=5,
        recluster_backend="ray", ray_items_per_task=4,
    )  # fmt: skip
    svc = RalmService(planted_model(), cfg)
    try:
        svc.add_clicks(background_clicks())
        svc.start()  # an empty index: one full cycle before serving
        backend = svc.reclusterer.backend
        assert isinstance(backend, RayBackend) and backend.last_tasks == 4  # 15 items
        snap = svc.holder.current()
        assert snap.n_items == snap.n_servable == 15
        res = svc.recommend(features={"group": "g1"}, n=5)
        assert all(it.item_id.startswith("item-g1-") for it in res.items)
    finally:
        svc.close()
    assert ray.is_initialized()  # the backend did not start Ray, so it leaves it running


def test_a_hanging_cycle_times_out(
    ray_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timeout_s``: tasks that hang are cancelled, the cycle fails, nothing is published."""
    from ralm.distributed.ray_index import RayTaskFailed

    _, _, clicks = _world()
    backend = RayBackend(items_per_task=20, max_retries=0, timeout_s=1.0)
    job, store = _job(tmp_path, "ray", _model(), backend, clicks)
    monkeypatch.setenv(RAY_FAULT_ENV, "sleep:15")
    try:
        before = job.holder.current()
        t0 = time.monotonic()
        with pytest.raises(RayTaskFailed, match="GetTimeoutError"):
            job.run_full()
        assert time.monotonic() - t0 < 10
        assert job.holder.current() is before and len(store.items(changed_only=True)) > 0
    finally:
        store.close()
