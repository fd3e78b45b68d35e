"""Issue 12 regressions on the served index: unsound versions, NaN-safe scoring, health,
relative state paths, servable-only scoring, crash temporaries, a corrupt seed store."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from ralm.errors import CheckpointError
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex
from ralm.serve.scoring import ScoreRequest, score_batch
from ralm.serve.service import RalmService
from ralm.serve.store import Click

from .conftest import background_clicks, make_service
from .planted import group_users


def _two_versions(state: Path) -> tuple[int, Path]:
    """A state folder with two published versions; returns (older version, newest folder)."""
    svc = make_service(state)
    svc.add_clicks(background_clicks())
    svc.start()
    older = svc.holder.version
    svc.add_clicks([Click(u, "later", time.time()) for u in group_users(0, 6)])
    svc.reclusterer.run_full()
    svc.close()
    newest = sorted((state / "index").glob("v*"))[-1]
    return older, newest


def _rewrite_chunk(folder: Path, edit: Any, fix_checksum: bool = True) -> None:
    """Apply ``edit(arrays)`` to the folder's first chunk as a new file (other versions that
    hard-link the old file keep it) and, optionally, record the new sha256 in meta.json."""
    meta = json.loads((folder / "meta.json").read_text())
    f = folder / meta["chunks"][0]["file"]
    arrays = load_file(str(f))
    edit(arrays)
    f.unlink()
    save_file(arrays, str(f))
    if fix_checksum:
        meta["chunks"][0]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        (folder / "meta.json").write_text(json.dumps(meta))


def _nan_centroids(a: dict[str, np.ndarray]) -> None:
    a["centroids"][:5] = np.nan


def _drop_servable(a: dict[str, np.ndarray]) -> None:
    del a["servable"]


def _short_ids(a: dict[str, np.ndarray]) -> None:
    a["item_id_offsets"] = a["item_id_offsets"][:-3]


def _wrong_shape(a: dict[str, np.ndarray]) -> None:
    a["global_vec"] = a["global_vec"][:, :3].copy()


@pytest.mark.parametrize(
    "edit, checksum",
    [
        (_nan_centroids, True),  # finite check (the checksum was forged)
        (_nan_centroids, False),  # checksum check
        (_drop_servable, True),
        (_short_ids, True),
        (_wrong_shape, True),
    ],
)
def test_unsound_version_falls_back_to_the_last_good_one(
    tmp_path: Path, edit: Any, checksum: bool, caplog: pytest.LogCaptureFixture
) -> None:
    older, newest = _two_versions(tmp_path)
    _rewrite_chunk(newest, edit, checksum)
    again = make_service(tmp_path)
    try:
        snap = again.holder.current()
        assert "later" not in snap.row_of and snap.n_items == 15  # the older version
        assert snap.version > older and again.health()["status"] == "ok"
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any(newest.name in m and "\n" not in m for m in errors), errors
        assert again.reclusterer.run_full().n_items == 16  # everything is redone
    finally:
        again.close()


def test_a_nan_item_never_hides_the_good_ones(service: RalmService) -> None:
    good = service.recommend(user_id="u1", n=5)
    snap = service.holder.current()
    k, h = snap.k, snap.h
    bad = np.full((1, k, h), np.nan, np.float32)
    upd = IndexUpdate(
        item_ids=np.asarray(["poisoned"]), centroids=bad, mask=np.ones((1, k), bool),
        sizes=np.full((1, k), 3, np.int64), global_vec=np.full((1, h), np.nan, np.float32),
        gram=np.full((1, k, k), np.nan, np.float32), n_seeds=np.array([9]),
        servable=np.array([True]), clustered_at=np.array([0.0]),
    )  # fmt: skip
    service.holder.publish(snap.updated(upd))
    res = service.recommend(user_id="u1", n=5)
    assert [r.item_id for r in res.items] == [r.item_id for r in good.items]
    health = service.health()
    assert health["status"] == "degraded" and "1 items have non-finite" in health["reason"]


def test_non_finite_scores_rank_last() -> None:
    class NanScorer:  # scores item 2 NaN and item 4 +inf
        def transform(self, u: torch.Tensor) -> torch.Tensor:
            return u

        def score(self, e_u: torch.Tensor, centroids: torch.Tensor, *a: Any, **kw: Any):
            s = centroids[:, 0, 0][None, :].repeat(e_u.shape[0], 1)  # (B, I)
            return s

        def pctr(self, s: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(s)

    cen = np.asarray([0.1, 0.5, np.nan, 0.3, np.inf, 0.2], np.float32).reshape(6, 1, 1)
    upd = IndexUpdate(
        item_ids=np.asarray([f"i{j}" for j in range(6)]), centroids=cen,
        mask=np.ones((6, 1), bool), sizes=np.ones((6, 1), np.int64),
        global_vec=cen[:, 0], gram=cen * cen, n_seeds=np.ones(6, np.int64),
        servable=np.ones(6, bool), clustered_at=np.zeros(6),
    )  # fmt: skip
    snap = SeedIndex.empty(1, 1, chunk_items=4).updated(upd)  # two chunks
    reqs = [ScoreRequest(np.zeros(1, np.float32), 6)]
    (res,) = score_batch(NanScorer(), snap, reqs)  # type: ignore[arg-type]
    assert [r.item_id for r in res.items] == ["i1", "i3", "i5", "i0"]


def test_unsound_model_is_reported(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    try:
        assert svc.health()["status"] == "ok" and svc.health()["reason"] is None
    finally:
        svc.close()
    from .planted import planted_model

    model = planted_model()
    with torch.no_grad():
        next(model.scorer.parameters()).fill_(float("nan"))
    from ralm.serve.config import ServeConfig

    bad = RalmService(model, ServeConfig(state_dir=tmp_path / "other", min_seeds=5))
    try:
        h = bad.health()
        assert h["status"] == "degraded" and h["reason"].startswith("model: non-finite")
    finally:
        bad.close()


def test_scorer_sees_only_servable_items(tmp_path: Path) -> None:
    svc = make_service(tmp_path, fast_path=False, min_seeds=5)
    svc.add_clicks(background_clicks())
    for j in range(6):  # six one-click items: in the index, not servable
        svc.add_clicks([Click(group_users(0, 1)[0], f"thin-{j}", time.time())])
    svc.start()
    seen: list[int] = []
    real = svc.model.scorer.score

    def counting(e_u: torch.Tensor, centroids: torch.Tensor, *a: Any, **kw: Any) -> Any:
        seen.append(int(centroids.shape[0]))
        return real(e_u, centroids, *a, **kw)

    try:
        snap = svc.holder.current()
        assert snap.n_items == 21 and snap.n_servable == 15
        svc.model.scorer.score = counting  # type: ignore[method-assign]
        res = svc.recommend(user_id="u0", n=21)
        assert sum(seen) == 15 and len(res.items) == 15
    finally:
        svc.close()


def test_state_paths_are_relative_and_a_copied_state_serves_its_own_index(
    tmp_path: Path,
) -> None:
    _, newest = _two_versions(tmp_path / "a")
    svc = make_service(tmp_path / "a")
    recorded = svc.store.get_meta("index")["path"]
    svc.close()
    assert recorded == f"index/{newest.name}"
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a" / "index")  # the original's index is gone
    copy = make_service(tmp_path / "b")
    try:
        assert "later" in copy.holder.current().row_of  # the newest version, from b
        assert copy.store.get_meta("index")["path"] == recorded
    finally:
        copy.close()


def test_half_written_versions_are_removed_at_start(tmp_path: Path) -> None:
    _two_versions(tmp_path)
    stale = tmp_path / "index" / ".v00000099.tmp-abc"
    stale.mkdir()
    (stale / "meta.json").write_text("{")
    (tmp_path / "index" / ".tmp-v00000098-123").mkdir()  # an older writer's naming
    svc = make_service(tmp_path)
    try:
        assert not stale.exists() and not (tmp_path / "index" / ".tmp-v00000098-123").exists()
    finally:
        svc.close()


def test_corrupt_seed_store_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "seeds.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CheckpointError, match=r"seeds\.sqlite3.*unreadable"):
        make_service(tmp_path)
