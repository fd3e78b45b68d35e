"""The one raw-feature transform engine (readers and FeatureEncoder), against a naive loop."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_readers import write_ml1m, write_ml100k

from ralm.data.batching import gather_users
from ralm.data.feature_encoder import FeatureEncoder
from ralm.data.ingest import ingest
from ralm.data.movielens import movielens_transforms
from ralm.data.readers import read_ml1m, read_ml100k
from ralm.data.splits import SplitConfig
from ralm.data.transforms import apply_ops, apply_ops_one
from ralm.errors import ConfigError

NO_SPLIT = SplitConfig(valid_frac=0.0, test_frac=0.0, cold_item_frac=0.0)


def _naive(token: str | None, ops) -> str | None:
    """Reference: one value at a time, plain Python."""
    if token is None:
        return None
    token = token.strip()
    for op in ops:
        if op["op"] == "upper":
            token = token.upper()
        elif op["op"] == "prefix":
            token = token[: op["n"]]
        elif op["op"] == "bucket":
            try:  # plain decimals only ("1_0" and "0x1" are no numbers here)
                x = float(token) if "_" not in token else None
            except ValueError:
                x = None
            if x is None:
                continue
            if x != x or x in (float("inf"), float("-inf")) or token.lower().lstrip("+-") in (
                "inf", "infinity", "nan"
            ):  # fmt: skip
                continue
            token = op["labels"][bisect.bisect_right(op["edges"], x)]
        elif op["op"] == "map":
            token = op["values"].get(token, token)
    return token


OPS = [
    movielens_transforms(True)["age"],
    movielens_transforms(True)["zip"],
    movielens_transforms(True)["occupation"],
    [{"op": "upper"}, {"op": "map", "values": {"M": "MALE"}}, {"op": "prefix", "n": 3}],
]
VALUES = [None, "", " 27 ", "18", "17.9", "56", "1e2", "-3", "inf", "nan", "1e999", "25-34",
          "85711", " t8h1n", "12", "13", "programmer", "m", "M", "über", "1_0"]  # fmt: skip


@pytest.mark.parametrize("ops", OPS)
def test_engine_matches_a_naive_per_value_loop(ops) -> None:
    got = apply_ops(pa.array(VALUES, pa.string()), ops).to_pylist()
    assert got == [_naive(v, ops) for v in VALUES]
    assert [apply_ops_one(v, ops) for v in VALUES] == got
    assert apply_ops(pa.array(got, pa.string()), ops).to_pylist() == got  # idempotent


def test_numbers_are_transformed_like_their_strings() -> None:
    ops = movielens_transforms()["age"]
    assert apply_ops(pa.array([24, 53, None]), ops).to_pylist() == ["18-24", "50-55", None]


def test_bad_ops_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown transform op 'lower'"):
        apply_ops(pa.array(["a"]), [{"op": "lower"}])
    with pytest.raises(ConfigError, match="malformed transform op"):
        apply_ops(pa.array(["a"]), [{"op": "prefix"}])


@pytest.mark.parametrize("which", ["ml100k", "ml1m"])
def test_raw_records_of_new_users_encode_as_the_reader_did(tmp_path: Path, which: str) -> None:
    if which == "ml100k":
        ds = ingest(read_ml100k(write_ml100k(tmp_path / "d")), NO_SPLIT)
        records = [
            {"gender": "m", "age": 24, "occupation": "technician", "zip": "85711"},
            {"gender": " F", "age": "53", "occupation": "other", "zip": "t8h1n"},
        ]
    else:
        ds = ingest(read_ml1m(write_ml1m(tmp_path / "d")), NO_SPLIT)
        records = [
            {"gender": "F", "age": "1", "occupation": "10", "zip": "48067"},
            {"gender": "M", "age": 56, "occupation": 16, "zip": "70072"},
        ]
    enc = FeatureEncoder.from_dataset(ds)
    got, want = enc.batch(records), gather_users(ds, np.array([0, 1]))
    for name in ("gender", "age", "occupation", "zip"):
        assert got.univalent[name].tolist() == want.univalent[name].tolist(), name
        assert (want.univalent[name] > 0).all()
