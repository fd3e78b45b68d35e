"""SeedIndex artifact: round trip, atomic overwrite, corruption and version checks, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.errors import CheckpointError
from ralm.lookalike.checkpoint import load_lookalike_model, save_model, write_config
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.index_builder import build_seed_index, index_items
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import seed_sets
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex

M = 12  # width of the `universal` fixture in conftest.py


@pytest.fixture()
def index_and_model(toy: EncodedDataset, universal: np.ndarray):
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=4))
    seeds = seed_sets(toy)
    idx = build_seed_index(model, universal, (seeds.offsets, seeds.users), item_ids=toy.item_ids)
    return idx, model, seeds


def test_build_fields_and_round_trip(index_and_model, tmp_path: Path) -> None:
    idx, _, seeds = index_and_model
    assert idx.centroids.shape == (idx.n_items, 4, 8) and idx.gram.shape == (idx.n_items, 4, 4)
    np.testing.assert_array_equal(idx.n_seeds, seeds.counts)
    np.testing.assert_array_equal(idx.sizes.sum(1), seeds.counts)
    np.testing.assert_allclose(
        idx.gram, idx.centroids @ idx.centroids.transpose(0, 2, 1), rtol=1e-5, atol=1e-5
    )
    idx.save(tmp_path / "si")
    back = SeedIndex.load(tmp_path / "si")
    for name in ("centroids", "mask", "sizes", "global_vec", "gram", "n_seeds", "item_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(idx, name))
    assert back.version == idx.version and back.created_at == pytest.approx(idx.created_at)


def test_atomic_overwrite_leaves_no_temporaries(index_and_model, tmp_path: Path) -> None:
    idx, _, _ = index_and_model
    idx.save(tmp_path / "si")
    idx.with_version(7).save(tmp_path / "si")
    assert SeedIndex.load(tmp_path / "si").version == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["si"]


def test_corrupt_or_foreign_index_raises(index_and_model, tmp_path: Path) -> None:
    idx, _, _ = index_and_model
    root = idx.save(tmp_path / "si")
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        SeedIndex.load(root)
    (root / "meta.json").write_text(json.dumps(meta))
    (root / meta["chunks"][0]["file"]).write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupted"):
        SeedIndex.load(root)
    (root / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"meta\.json"):
        SeedIndex.load(root)
    with pytest.raises(CheckpointError, match="missing"):
        SeedIndex.load(tmp_path / "nowhere")


def test_index_scoring_matches_pairs_path(index_and_model, universal: np.ndarray) -> None:
    idx, model, _ = index_and_model
    with torch.no_grad():
        e_u = model.transform(torch.from_numpy(universal[:6]))  # (6, 8)
        full = model.score(e_u, **idx.tensors(), chunk_items=7)  # (6, I)
        t = idx.tensors()
        items = torch.arange(6)
        pairs = model.score_pairs(
            e_u, t["centroids"][items], t["mask"][items], sizes=t["sizes"][items]
        )
    np.testing.assert_allclose(torch.diagonal(full[:, :6]).numpy(), pairs.numpy(), atol=1e-6)


def test_model_checkpoint_round_trip_and_corruption(tmp_path: Path) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=4, variant="average")
    model = LookalikeModel(cfg)
    write_config(tmp_path, {"model": cfg.model_dump()})
    save_model(tmp_path, model)
    back, back_cfg = load_lookalike_model(tmp_path)
    assert back_cfg == cfg and not back.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_lookalike_model(tmp_path)
    write_config(tmp_path, {"model": {**cfg.model_dump(), "k": "many"}})
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_lookalike_model(tmp_path)


def _small(n: int, k: int = 3, h: int = 4, chunk: int = 4, fill: float | None = None) -> SeedIndex:
    rng = np.random.default_rng(n)
    cen = (
        rng.normal(size=(n, k, h)).astype(np.float32)
        if fill is None
        else np.full((n, k, h), fill, np.float32)
    )
    upd = IndexUpdate(
        item_ids=np.asarray([f"i{j}" for j in range(n)]),
        centroids=cen,
        mask=np.ones((n, k), bool),
        sizes=np.full((n, k), 2, np.int64),
        global_vec=cen.mean(1),
        gram=cen @ cen.transpose(0, 2, 1),
        n_seeds=np.full(n, 2 * k, np.int64),
        servable=np.ones(n, bool),
        clustered_at=np.full(n, 5.0),
    )
    return SeedIndex.from_update(upd, version=1, chunk_items=chunk)


def _upd(ids: list[str], k: int = 3, h: int = 4, value: float = 7.0) -> IndexUpdate:
    u = len(ids)
    cen = np.full((u, k, h), value, np.float32)
    return IndexUpdate(
        item_ids=np.asarray(ids), centroids=cen, mask=np.ones((u, k), bool),
        sizes=np.full((u, k), 9, np.int64), global_vec=cen.mean(1),
        gram=cen @ cen.transpose(0, 2, 1), n_seeds=np.full(u, 27, np.int64),
        servable=np.ones(u, bool), clustered_at=np.full(u, 123.0),
    )  # fmt: skip


def test_from_update_chunks_are_views() -> None:
    idx = _small(10)
    assert [len(c) for c in idx.chunks] == [4, 4, 2]
    assert np.shares_memory(idx.chunks[1].centroids, idx.centroids)


def test_update_rebuilds_only_touched_chunks_and_appends() -> None:
    old = _small(10)
    before = old.centroids.copy()
    new = old.updated(_upd(["i5", "new-a", "new-b", "new-c"]))
    assert new.version == 2 and new.n_items == 13 and old.n_items == 10
    assert new.chunks[0] is old.chunks[0]  # untouched chunk shared, not copied
    assert new.chunks[1] is not old.chunks[1] and len(new.chunks) == 4
    np.testing.assert_array_equal(old.centroids, before)  # the old version is unchanged
    cen = new.centroids
    assert np.all(cen[5] == 7) and np.all(cen[10:] == 7)
    np.testing.assert_array_equal(cen[:5], before[:5])
    np.testing.assert_array_equal(cen[6:10], before[6:10])
    assert new.row_of["new-b"] == 11 and new.item_ids[10] == "new-a"
    assert list(new.item_ids[:10]) == list(old.item_ids) and "new-a" not in old.row_of
    assert new.sizes[11].tolist() == [9, 9, 9] and new.clustered_at[5] == 123.0
    assert new.clustered_at[4] == 5.0 and new.n_seeds[12] == 27
    got = new.gather(np.array([12, 0]), ("centroids", "mask"))
    np.testing.assert_array_equal(got["centroids"][1], before[0])
    with pytest.raises(ValueError, match="must exceed"):
        new.updated(_upd(["x"]), version=2)
    e = SeedIndex.empty(3, 4).updated(_upd(["a"]), version=1)
    assert e.n_items == 1 and e.n_servable == 1 and len(e.chunks) == 1


def test_publish_writes_only_changed_chunks(tmp_path: Path) -> None:
    v1 = _small(10)
    v1.save(tmp_path / "v1")
    v2 = v1.updated(_upd(["i1"]))  # chunk 0 changes, chunks 1 and 2 are shared
    v2.save(tmp_path / "v2", prev=tmp_path / "v1")
    m1 = json.loads((tmp_path / "v1" / "meta.json").read_text())["chunks"]
    m2 = json.loads((tmp_path / "v2" / "meta.json").read_text())["chunks"]
    assert m1[0]["file"] != m2[0]["file"] and [c["file"] for c in m1[1:]] == [
        c["file"] for c in m2[1:]
    ]
    for c in m2[1:]:  # hard links: the same inode, no second copy
        a, b = tmp_path / "v1" / c["file"], tmp_path / "v2" / c["file"]
        assert a.stat().st_ino == b.stat().st_ino
    assert (tmp_path / "v1" / m1[0]["file"]).stat().st_ino != (
        tmp_path / "v2" / m2[0]["file"]
    ).stat().st_ino
    import shutil

    shutil.rmtree(tmp_path / "v1")  # pruning an old version never breaks a newer one
    back = SeedIndex.load(tmp_path / "v2")
    for name in ("centroids", "mask", "sizes", "global_vec", "gram", "n_seeds", "servable"):
        np.testing.assert_array_equal(getattr(back, name), getattr(v2, name))
    assert list(back.item_ids) == list(v2.item_ids) and back.version == 2


def test_load_refuses_non_finite_and_checksum_mismatch(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    idx = _small(6)
    root = idx.save(tmp_path / "si")
    meta = json.loads((root / "meta.json").read_text())
    f = root / meta["chunks"][1]["file"]
    arrays = load_file(str(f))
    arrays["centroids"][0, 0, 0] = np.nan
    save_file(arrays, str(f))
    with pytest.raises(CheckpointError, match=f"{f.name}.*sha256"):
        SeedIndex.load(root)  # the checksum catches any overwrite
    import hashlib

    meta["chunks"][1]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{f.name}: centroids has non-finite"):
        SeedIndex.load(root)  # a matching checksum does not make NaN acceptable
    f.write_bytes(f.read_bytes()[:100])  # truncated: the error names the file
    with pytest.raises(CheckpointError, match=f.name):
        SeedIndex.load(root)


def test_load_refuses_inconsistent_shapes(tmp_path: Path) -> None:
    import hashlib

    from safetensors.numpy import load_file, save_file

    root = _small(6).save(tmp_path / "si")
    meta = json.loads((root / "meta.json").read_text())
    f = root / meta["chunks"][0]["file"]
    arrays = load_file(str(f))
    del arrays["servable"]
    save_file(arrays, str(f))
    meta["chunks"][0]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lacks the array 'servable'"):
        SeedIndex.load(root)
    meta["n_items"] = 5
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="n_items"):
        SeedIndex.load(root)


def test_faiss_clusters_do_not_depend_on_the_other_items_of_a_call(
    toy: EncodedDataset, universal: np.ndarray
) -> None:
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3, kmeans_backend="faiss"))
    seeds = seed_sets(toy)
    ids = np.asarray(toy.item_ids).astype(str)
    whole = index_items(model, universal, (seeds.offsets, seeds.users), item_ids=ids, seed=3)
    half = toy.n_items // 2
    lo, hi = seeds.offsets[half], seeds.offsets[-1]
    part = index_items(
        model, universal, (seeds.offsets[half:] - lo, seeds.users[lo:hi]),
        item_ids=ids[half:], seed=3,
    )  # fmt: skip
    np.testing.assert_array_equal(part.centroids, whole.centroids[half:])
    np.testing.assert_array_equal(part.sizes, whole.sizes[half:])
    np.testing.assert_array_equal(part.global_vec, whole.global_vec[half:])


def test_items_without_seeds_have_zero_global_vectors(universal: np.ndarray) -> None:
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    offsets = np.array([0, 0, 4, 4])  # items 0 and 2 have no seeds
    upd = index_items(model, universal, (offsets, np.arange(4)), min_seeds=1)
    assert np.isfinite(upd.global_vec).all() and not upd.global_vec[[0, 2]].any()
    assert upd.servable.tolist() == [False, True, False]
    assert upd.n_seeds.tolist() == [0, 4, 0]
