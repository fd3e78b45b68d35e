"""FeatureEncoder: raw values of new users -> the same codes as ingestion; OOV; errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from generic_fixture import write_tiny

from ralm.data.batching import gather_users
from ralm.data.feature_encoder import FeatureEncoder
from ralm.data.ingest import ingest, load_raw
from ralm.data.schema import load_schema
from ralm.data.splits import SplitConfig
from ralm.data.toy import make_toy_dataset
from ralm.errors import DataError


@pytest.fixture
def tiny(tmp_path: Path):
    cfg = SplitConfig(method="global_time", valid_frac=0.0, test_frac=0.1, cold_item_frac=0.0)
    return ingest(load_raw(load_schema(write_tiny(tmp_path))), cfg)


def _assert_same(a, b) -> None:
    assert a.univalent.keys() == b.univalent.keys()
    for k in a.univalent:
        torch.testing.assert_close(a.univalent[k], b.univalent[k])
    for k in a.multivalent:
        torch.testing.assert_close(a.multivalent[k][0], b.multivalent[k][0])
        torch.testing.assert_close(a.multivalent[k][1], b.multivalent[k][1])
    torch.testing.assert_close(a.continuous, b.continuous)


def test_raw_features_of_known_users_reproduce_their_codes(tiny) -> None:
    enc = FeatureEncoder.from_dataset(tiny)
    records: list[dict[str, Any]] = [
        {"gender": "F", "tags": ["a", "b"], "age": 20, "genres": ["x", "y", "z"],
         "history": ["i1", "i2", "i3"]},
        {"gender": "M", "tags": ["c", "a"], "genres": ["x", "y"], "history": ["i1"]},  # no age
        {"gender": "X", "tags": ["d"], "age": 100.0, "history": []},  # u5: unknown values
    ]  # fmt: skip
    users = np.array([0, 3, 4])
    _assert_same(enc.batch(records), gather_users(tiny, users))


def test_decode_then_encode_is_identity_on_toy() -> None:
    ds = make_toy_dataset(seed=5)
    enc = FeatureEncoder.from_dataset(ds)
    users = np.arange(0, ds.n_users, 7)
    records = [enc.decode_user(ds, int(u)) for u in users]
    _assert_same(enc.batch(records), gather_users(ds, users))


def test_unknown_values_are_oov_and_missing_fields_empty(tiny) -> None:
    enc = FeatureEncoder.from_dataset(tiny)
    b = enc.batch([{"gender": "nobody", "history": ["i2", "new-item"]}, {}])
    assert b.univalent["gender"].tolist() == [0, 0]
    values, offsets = b.multivalent["history"]
    assert values.tolist() == [2, 0] and offsets.tolist() == [0, 2]
    assert b.multivalent["tags"][0].numel() == 0
    assert b.continuous.shape == (2, 1) and b.continuous.sum() == 0
    assert len(enc.batch([])) == 0


@pytest.mark.parametrize(
    ("record", "pattern"),
    [
        ({"gendr": "F"}, r"record 0: unknown field\(s\) \['gendr'\]"),
        ({"gender": ["F"]}, r"record 0, field 'gender': expected a string"),
        ({"tags": "a|b"}, r"record 0, field 'tags': multivalent field needs a list"),
        ({"age": "old"}, r"record 0, field 'age': expected a number"),
        ({"age": True}, r"record 0, field 'age': expected a number"),
    ],
)
def test_wrong_input_is_named(tiny, record: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        FeatureEncoder.from_dataset(tiny).batch([record])


def test_integral_numbers_match_string_vocab(tiny) -> None:
    enc = FeatureEncoder.from_dataset(tiny)
    assert enc.batch([{"history": ["i1"]}]).multivalent["history"][0].tolist() == [1]
    ds = make_toy_dataset(seed=1)
    ds.vocabs["group_hint"] = np.array(["1", "2", "3"])
    b = FeatureEncoder.from_dataset(ds).batch([{"group_hint": 2}, {"group_hint": 2.0}])
    assert b.univalent["group_hint"].tolist() == [2, 2]


def test_movielens_raw_values_are_mapped_like_the_reader(tmp_path: Path) -> None:
    from test_readers import write_ml1m, write_ml100k

    from ralm.data.readers import read_ml1m, read_ml100k

    none = SplitConfig(valid_frac=0.0, test_frac=0.0, cold_item_frac=0.0)
    ds = ingest(read_ml100k(write_ml100k(tmp_path / "a")), none)
    enc = FeatureEncoder.from_dataset(ds)
    raw = {"gender": "m", "age": 24, "occupation": "technician", "zip": "85711"}
    stored = {"gender": "M", "age": "18-24", "occupation": "technician", "zip": "85"}
    _assert_same(enc.batch([raw]), enc.batch([stored]))
    uni = enc.batch([raw]).univalent
    assert all(int(uni[k][0]) == int(ds.univalent[k][0]) for k in uni)  # user "1"
    ds1 = ingest(read_ml1m(write_ml1m(tmp_path / "b")), none)
    enc1 = FeatureEncoder.from_dataset(ds1)
    b = enc1.batch([{"gender": "M", "age": 56, "occupation": 16, "zip": "70072"}])
    assert all(int(b.univalent[k][0]) == int(ds1.univalent[k][1]) for k in b.univalent)  # "2"
