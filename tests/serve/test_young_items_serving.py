"""The young-item rule from the seed index to the service: first-click times are recorded
in the index, kept across re-clusterings, read from imported history, and the served
prior follows an item's age."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ralm.lookalike import index_io
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.index_builder import build_seed_index, index_items
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import SeedIndex
from ralm.serve import scoring
from ralm.serve.store import SQLiteSeedStore

DAY = 86400.0
M, H, K = 6, 4, 3


def _model(**update: object) -> LookalikeModel:
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=H, k=K).model_copy(update=update))
    with torch.no_grad():
        model.prior_weight.fill_(0.5)
    return model.eval()


def _index(model: LookalikeModel, first_seen: np.ndarray | None = None) -> SeedIndex:
    rng = np.random.default_rng(0)
    seeds = rng.normal(size=(40, M)).astype(np.float32)
    offsets = np.array([0, 10, 20, 30, 40])
    return build_seed_index(
        model,
        seeds,
        (offsets, np.arange(40)),
        item_ids=np.array(["a", "b", "c", "d"]),
        first_seen=first_seen,
    )


def test_first_seen_round_trips_and_an_old_format_loads_as_mature(tmp_path: Path) -> None:
    model = _model()
    idx = _index(model, np.array([0.0, 5.0, 7.5, 1e9]))
    root = idx.save(tmp_path / "si")
    np.testing.assert_array_equal(SeedIndex.load(root).first_seen, [0.0, 5.0, 7.5, 1e9])
    # rewrite it as format 2 (no first_seen array): it loads with 0 (not known) everywhere
    meta = json.loads((root / "meta.json").read_text())
    for entry in meta["chunks"]:
        arrays = dict(st_load((root / entry["file"]).read_bytes()))
        del arrays["first_seen"]
        data = bytes(st_save(arrays))
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        (root / entry["file"]).write_bytes(data)
    meta["format_version"] = 2
    (root / "meta.json").write_text(json.dumps(meta))
    old = SeedIndex.load(root)
    np.testing.assert_array_equal(old.first_seen, np.zeros(4))
    np.testing.assert_array_equal(old.centroids, idx.centroids)
    # saved again (linking from the old folder where it can): a format-3 index that loads
    again = old.with_version(5).save(tmp_path / "si2", prev=root)
    assert json.loads((again / "meta.json").read_text())["format_version"] == 3
    assert index_io.FORMAT_VERSION == 3
    np.testing.assert_array_equal(SeedIndex.load(again).first_seen, np.zeros(4))


def test_re_clustering_keeps_the_earliest_known_first_click() -> None:
    model = _model()
    prev = _index(model, np.array([100.0, 0.0, 300.0, 400.0]))
    rng = np.random.default_rng(1)
    seeds = rng.normal(size=(15, M)).astype(np.float32)
    upd = index_items(
        model,
        seeds,
        (np.array([0, 5, 10, 15]), np.arange(15)),
        prev,
        item_ids=["a", "b", "e"],  # two known items and a new one
        first_seen=np.array([900.0, 250.0, 0.0]),
    )
    # a: the index's 100 is earlier; b: the index did not know (0), the store's 250;
    # e: new and not known
    np.testing.assert_array_equal(upd.first_seen, [100.0, 250.0, 0.0])
    with pytest.raises(ValueError, match="first_seen"):
        index_items(model, seeds, (np.array([0, 15]), np.arange(15)), first_seen=np.ones(3))


def test_imported_history_is_first_seen_at_its_earliest_click(tmp_path: Path) -> None:
    store = SQLiteSeedStore(tmp_path / "s.sqlite", max_seeds=2)
    try:
        # item x: three clicks, the oldest trimmed away (N = 2); item y: one click
        store.bulk_import([("u1", "x", 50.0), ("u2", "x", 10.0), ("u3", "x", 30.0),
                           ("u1", "y", 70.0)])  # fmt: skip
        got = {it.item_id: it for it in store.items()}
        assert got["x"].first_seen == 10.0 and got["x"].n_seeds == 2
        assert got["y"].first_seen == 70.0
    finally:
        store.close()


def test_served_prior_boosts_a_young_item_and_fades_with_its_age() -> None:
    model = _model(young_age=10 * DAY, young_boost=8.0)
    now = 1_000 * DAY
    # d is 1 day old (boost 8 by the cap; 10 days / 1 day = 10 > 8), the others are mature
    # or not known
    idx = _index(model, np.array([0.0, now - 500 * DAY, now - 20 * DAY, now - 1 * DAY]))
    chunk = idx.chunks[0]
    e_u = model.transform(torch.randn(3, M))
    terms = scoring.chunk_terms(model, chunk, now=now)
    got = model.score_prepared(e_u, terms)
    t = idx.tensors()
    n = torch.from_numpy(idx.sizes).sum(1).double()
    plain = model.score(e_u, t["centroids"], t["mask"], t["global_vec"], sizes=t["sizes"])
    lift = torch.zeros(4, dtype=torch.float64)
    lift[3] = model.gamma.double() * (torch.log1p(8 * n[3]) - torch.log1p(n[3]))
    torch.testing.assert_close(got.double(), plain.double() + lift[None, :], atol=1e-5, rtol=0)
    # cached within the refresh interval, prepared again after it: 5 days (and the refresh
    # interval) later the boost is 10 days / the item's age then
    assert scoring.chunk_terms(model, chunk, now=now + 10) is terms
    later = now + scoring.YOUNG_REFRESH_S + 5 * DAY
    aged = model.score_prepared(e_u, scoring.chunk_terms(model, chunk, now=later))
    boost = 10 * DAY / (6 * DAY + scoring.YOUNG_REFRESH_S)
    lift[3] = model.gamma.double() * (torch.log1p(n[3] * boost) - torch.log1p(n[3]))
    torch.testing.assert_close(aged.double(), plain.double() + lift[None, :], atol=1e-5, rtol=0)


def test_a_chunk_without_young_items_is_prepared_once() -> None:
    model = _model(young_age=10 * DAY)
    now = 1_000 * DAY
    idx = _index(model, np.array([0.0, now - 500 * DAY, now - 20 * DAY, now - 11 * DAY]))
    terms = scoring.chunk_terms(model, idx.chunks[0], now=now)
    assert scoring.chunk_terms(model, idx.chunks[0], now=now + 30 * DAY) is terms
