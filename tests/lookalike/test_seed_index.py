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
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import seed_sets
from ralm.lookalike.seed_index import SeedIndex, build_seed_index

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
    idx.version = 7
    idx.save(tmp_path / "si")
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
    (root / "arrays.safetensors").write_bytes(b"\x00" * 10)
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
