"""Target exclusion from item-attribute fields (``derived_from_items``): no leakage."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from generic_fixture import write_tiny

from ralm.data import batching
from ralm.data.batching import gather_users
from ralm.data.encoded import DerivedInfo, EncodedDataset, FieldInfo, Interactions, Split
from ralm.data.ingest import ingest, load_raw
from ralm.data.schema import load_schema
from ralm.data.splits import SplitConfig
from ralm.data.toy import make_toy_dataset

# item -> attribute codes of the hand-built dataset
ITEM_CODES = {0: [1, 2], 1: [2, 3], 2: [4], 3: [1]}
# TRAIN clicks: user 0 -> items 0, 1, 2; user 1 -> items 0, 3 (user 1 also has a TEST click)
CLICKS = [(0, 0), (0, 1), (0, 2), (1, 3), (1, 0)]


def _hand_built(with_history: bool = True) -> EncodedDataset:
    """2 users, 4 items, field ``genres``: user 0 {1: 1, 2: 2, 3: 1, 4: 1}, user 1 {1: 2, 2: 1}
    (code: number of the user's TRAIN items carrying it)."""
    user = np.array([u for u, _ in CLICKS] + [1])
    item = np.array([i for _, i in CLICKS] + [2])
    split = np.array([Split.TRAIN] * len(CLICKS) + [Split.TEST], dtype=np.int8)
    fields = [FieldInfo("genres", "multivalent", vocab_size=5, derived_from_items=True)]
    multivalent = {
        "genres": (np.array([0, 4, 6]), np.array([1, 2, 3, 4, 1, 2])),
    }
    derived = {
        "genres": DerivedInfo(
            counts=np.array([1, 2, 1, 1, 2, 1]),
            item_offsets=np.array([0, 2, 4, 5, 6]),
            item_values=np.array([1, 2, 2, 3, 4, 1]),
        )
    }
    if with_history:
        fields.insert(0, FieldInfo("history", "multivalent", vocab_size=5, item_history=True))
        multivalent["history"] = (np.array([0, 3, 5]), np.array([1, 2, 3, 1, 4]))
    return EncodedDataset(
        name="hand",
        user_ids=np.array(["a", "b"]),
        item_ids=np.array(["i0", "i1", "i2", "i3"]),
        fields=fields,
        univalent={},
        multivalent=multivalent,
        continuous=np.zeros((2, 0), dtype=np.float32),
        interactions=Interactions(
            user=user,
            item=item,
            ts=np.arange(user.size),
            label=np.ones(user.size, np.int8),
            split=split,
        ),
        vocabs={"genres": np.array(["g1", "g2", "g3", "g4"])},
        derived=derived,
    )


def _bags(ds: EncodedDataset, users: np.ndarray, targets: np.ndarray | None, field: str) -> list:
    values, offsets = gather_users(ds, users, exclude_items=targets).multivalent[field]
    v, o = values.numpy(), offsets.numpy()
    ends = np.append(o[1:], v.size)
    return [sorted(v[a:b].tolist()) for a, b in zip(o, ends, strict=True)]


def test_exclusion_removes_only_codes_whose_only_source_is_the_target() -> None:
    ds = _hand_built()
    users = np.array([0, 0, 0, 0, 1, 1])
    targets = np.array([0, 1, 2, -1, 3, 1])
    assert _bags(ds, users, targets, "genres") == [
        [2, 3, 4],  # item 0 = {1, 2}: 1 only from it -> dropped, 2 also from item 1 -> kept
        [1, 2, 4],  # item 1 = {2, 3}: 3 dropped, 2 shared with item 0
        [1, 2, 3],  # item 2 = {4}: dropped
        [1, 2, 3, 4],  # no target
        [1, 2],  # item 3 = {1}: 1 also comes from item 0
        [1, 2],  # item 1 is not in user 1's history: nothing of it is removed
    ]
    assert _bags(ds, users, targets, "history") == [[2, 3], [1, 3], [1, 2], [1, 2, 3], [1], [1, 4]]
    assert _bags(ds, users, None, "genres") == [[1, 2, 3, 4]] * 4 + [[1, 2]] * 2


def test_without_history_field_exclusion_applies_to_every_row() -> None:
    ds = _hand_built(with_history=False)
    users = np.array([0, 1, 1])
    # no history to check membership against: item 1's single-source codes always go
    assert _bags(ds, users, np.array([1, 3, 1]), "genres") == [[1, 2, 4], [1, 2], [1]]


def _reference_bags(ds: EncodedDataset, field: str, users, targets) -> list:
    """Naive Python: codes of the user's TRAIN items other than the target."""
    it = ds.interactions
    train = (it.split == Split.TRAIN) & (it.label > 0)
    items_of: dict[int, set[int]] = {}
    for u, i in zip(it.user[train].tolist(), it.item[train].tolist(), strict=True):
        items_of.setdefault(u, set()).add(i)
    info = ds.derived[field]
    codes = {
        j: set(info.item_values[info.item_offsets[j] : info.item_offsets[j + 1]].tolist())
        for j in range(ds.n_items)
    }
    out = []
    for u, t in zip(users.tolist(), targets.tolist(), strict=True):
        bag: set[int] = set()
        for j in items_of.get(u, set()) - {t}:
            bag |= codes[j]
        out.append(sorted(bag))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exclusion_matches_naive_reference_on_toy_data(seed: int) -> None:
    ds = make_toy_dataset(seed=seed, item_attributes=True)
    it = ds.interactions
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(it.split == Split.TRAIN)
    rows = rng.choice(train, 200, replace=False)
    users = np.r_[it.user[rows], rng.integers(0, ds.n_users, 100)]
    # TRAIN targets, random items (mostly not in the history) and "no target"
    targets = np.r_[it.item[rows], rng.integers(-1, ds.n_items, 100)]
    got = _bags(ds, users, targets, "topics")
    assert got == _reference_bags(ds, "topics", users, targets)
    # no exclusion: the stored bag is the union over all TRAIN items
    assert _bags(ds, users, None, "topics") == _reference_bags(
        ds, "topics", users, np.full(users.size, -1)
    )
    # the leak is real: some TRAIN targets lose codes
    full = _bags(ds, it.user[rows], None, "topics")
    assert any(a != b for a, b in zip(got[:200], full, strict=True))


def test_toy_without_item_attributes_is_unchanged() -> None:
    ds = make_toy_dataset(seed=5)
    assert [f.name for f in ds.fields] == ["group_hint", "history", "age"]
    assert ds.derived == {}
    assert "derived_from_items" not in json.dumps([f.to_json() for f in ds.fields])


def test_roundtrip_keeps_exclusion_info(tmp_path: Path) -> None:
    ds = make_toy_dataset(seed=6, item_attributes=True)
    back = EncodedDataset.load(ds.save(tmp_path / "toy"))
    assert [f.to_json() for f in back.fields] == [f.to_json() for f in ds.fields]
    assert back.fields[2].derived_from_items and not back.fields[1].derived_from_items
    assert set(back.derived) == {"topics"}
    for part in ("counts", "item_offsets", "item_values"):
        np.testing.assert_array_equal(
            getattr(back.derived["topics"], part), getattr(ds.derived["topics"], part)
        )
    it = ds.interactions
    rows = np.flatnonzero(it.split == Split.TRAIN)[:100]
    assert _bags(back, it.user[rows], it.item[rows], "topics") == _bags(
        ds, it.user[rows], it.item[rows], "topics"
    )


def test_mismatched_counts_are_rejected(tmp_path: Path) -> None:
    root = make_toy_dataset(seed=6, item_attributes=True).save(tmp_path / "toy")
    np.save(root / "features" / "topics.counts.npy", np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="topics"):
        EncodedDataset.load(root)


def test_old_dataset_without_arrays_loads_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_toy_dataset(seed=7, item_attributes=True)
    root = ds.save(tmp_path / "old")
    for part in ("counts", "item_offsets", "item_values"):
        (root / "features" / f"topics.{part}.npy").unlink()
    meta = json.loads((root / "meta.json").read_text())
    for f in meta["fields"]:
        f.pop("derived_from_items", None)  # as written before the flag existed
    meta["extra"]["schema"] = {"derived": [{"name": "topics", "source": "item:topic"}]}
    (root / "meta.json").write_text(json.dumps(meta))
    old = EncodedDataset.load(root)
    assert old.derived == {}
    assert old.fields[2].derived_from_items  # inferred from the recorded schema
    it = old.interactions
    rows = np.flatnonzero(it.split == Split.TRAIN)[:50]
    batching._warned.discard((old.name, "topics"))
    with caplog.at_level(logging.WARNING, logger="ralm.data.batching"):
        bags = _bags(old, it.user[rows], it.item[rows], "topics")
        _bags(old, it.user[rows], it.item[rows], "topics")
    assert bags == _bags(ds, it.user[rows], None, "topics")  # no exclusion info: unchanged
    warnings = [r for r in caplog.records if "no exclusion info" in r.getMessage()]
    assert len(warnings) == 1
    # history exclusion still works
    hist = _bags(old, it.user[rows], it.item[rows], "history")
    assert all(i + 1 not in bag for i, bag in zip(it.item[rows].tolist(), hist, strict=True))


def test_ingestion_writes_counts_and_item_codes(tmp_path: Path) -> None:
    split = SplitConfig(method="global_time", valid_frac=0.0, test_frac=0.1, cold_item_frac=0.0)
    ds = ingest(load_raw(load_schema(write_tiny(tmp_path))), split)
    genres = next(f for f in ds.fields if f.name == "genres")
    assert genres.derived_from_items and set(ds.derived) == {"genres"}
    info = ds.derived["genres"]
    vocab = ds.vocabs["genres"].tolist()
    item_codes = {
        str(ds.item_ids[j]): [
            vocab[c - 1] for c in info.item_values[info.item_offsets[j] : info.item_offsets[j + 1]]
        ]
        for j in range(ds.n_items)
    }
    assert item_codes == {"i1": ["x", "y"], "i2": ["y"], "i3": ["z"], "i4": ["x"]}
    off, val = ds.multivalent["genres"]
    u1 = int(np.flatnonzero(ds.user_ids == "u1")[0])
    # u1 clicked i1 twice, i2, i3: x from i1 only, y from i1 and i2, z from i3
    got = dict(
        zip(
            [vocab[c - 1] for c in val[off[u1] : off[u1 + 1]]],
            info.counts[off[u1] : off[u1 + 1]].tolist(),
            strict=True,
        )
    )
    assert got == {"x": 1, "y": 2, "z": 1}
    users = np.flatnonzero(ds.user_ids != "u5")
    it = ds.interactions
    train = (it.split == Split.TRAIN) & (it.label > 0)
    for u in users.tolist():
        items = np.unique(it.item[train & (it.user == u)])
        for t in [*items.tolist(), -1]:
            assert _bags(ds, np.array([u]), np.array([t]), "genres") == _reference_bags(
                ds, "genres", np.array([u]), np.array([t])
            )
