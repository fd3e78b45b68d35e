"""Issue 12 item 1: non-finite or overflowing numbers are rejected at ingestion.

Before the fix an ``inf`` in a continuous users column stored the range ``-inf..inf`` and
every normalised value became NaN (an all-NaN model downstream, exit 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from generic_fixture import USERS_CSV, write_tiny

from ralm.data.feature_encoder import FeatureEncoder
from ralm.data.features import minmax_normalise, minmax_scale
from ralm.data.ingest import ingest, load_raw
from ralm.data.prepare import prepare
from ralm.data.schema import load_schema
from ralm.data.splits import SplitConfig
from ralm.errors import DataError

SPLIT = SplitConfig(method="global_time", valid_frac=0.0, test_frac=0.1, cold_item_frac=0.0)
BAD_NUMBERS = ["inf", "-inf", "Infinity", "nan", "NaN", "1e400", "-" + "9" * 400]


def _users_with_age(value: str) -> str:
    return USERS_CSV.replace("u3,F,,40", f"u3,F,,{value}")


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_non_finite_continuous_value_is_rejected_naming_file_row_column(
    tmp_path: Path, value: str
) -> None:
    toml = write_tiny(tmp_path / "src", users=_users_with_age(value))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"users.csv, row 3 \(line 4\), column 'age': .*finite"):
        prepare(str(toml), out, SPLIT)
    assert not out.exists()  # nothing stored
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no half-written temporary


def test_parquet_float_inf_and_nan_are_rejected(tmp_path: Path) -> None:
    toml = write_tiny(tmp_path, "parquet")
    users = pq.read_table(tmp_path / "users.parquet")
    for bad in (math.inf, math.nan):
        ages = users["age"].to_pylist()
        ages[1] = bad
        pq.write_table(users.set_column(3, "age", pa.array(ages)), tmp_path / "users.parquet")
        with pytest.raises(DataError, match=r"users.parquet, row 2, column 'age'"):
            ingest(load_raw(load_schema(toml)), SPLIT)


def test_non_finite_as_missing_when_the_schema_says_so(tmp_path: Path) -> None:
    toml = write_tiny(tmp_path, users=_users_with_age("inf"))
    toml.write_text(
        toml.read_text().replace('name = "age"\nkind = "continuous"', 'name = "age"\n'
                                 'kind = "continuous"\nnon_finite = "missing"')
    )  # fmt: skip
    ds = ingest(load_raw(load_schema(toml)), SPLIT)
    age = next(f for f in ds.fields if f.name == "age")
    assert np.isfinite([age.min, age.max]).all()
    assert (age.min, age.max) == (20.0, 30.0)  # TRAIN users u1, u2 (u3 missing)
    assert np.isfinite(ds.continuous).all()
    u3 = int(np.flatnonzero(ds.user_ids == "u3")[0])
    assert ds.continuous[u3, 0] == 0.0  # missing -> the documented fill (training minimum)


@pytest.mark.parametrize("value", ["inf", "nan", "1e400"])
def test_non_finite_label_is_rejected(tmp_path: Path, value: str) -> None:
    inter = f"user_id,item_id,timestamp,label\nu1,i1,5,1\nu1,i2,6,{value}\n"
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'label': .*finite|overflow"):
        ingest(load_raw(load_schema(write_tiny(tmp_path, interactions=inter))), SPLIT)


@pytest.mark.parametrize("value", ["1e400", "9" * 30, "inf", "nan", "1" * 25 + ".5"])
def test_non_finite_or_huge_timestamp_is_rejected(tmp_path: Path, value: str) -> None:
    inter = f"user_id,item_id,timestamp\nu1,i1,5\nu1,i2,{value}\n"
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'timestamp': .*not a timestamp"):
        ingest(load_raw(load_schema(write_tiny(tmp_path, interactions=inter))), SPLIT)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e300 * 1e10])
def test_parquet_float_timestamp_non_finite_is_rejected(tmp_path: Path, bad: float) -> None:
    toml = write_tiny(tmp_path, "parquet")
    pq.write_table(
        pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [1.5, bad]}),
        tmp_path / "interactions.parquet",
    )
    with pytest.raises(DataError, match=r"interactions.parquet, row 2, column 'timestamp'"):
        ingest(load_raw(load_schema(toml)), SPLIT)


def test_extreme_finite_values_give_a_finite_range(tmp_path: Path) -> None:
    users = USERS_CSV.replace("u1,F,a|b,20", "u1,F,a|b,-1.7e308").replace(
        "u2,M,b,30", "u2,M,b,1.7e308"
    )
    ds = ingest(load_raw(load_schema(write_tiny(tmp_path, users=users))), SPLIT)
    assert np.isfinite(ds.continuous).all()
    assert ds.continuous.min() == 0.0 and ds.continuous.max() == 1.0


def test_minmax_scale_has_no_overflow_and_matches_the_formula() -> None:
    x = np.array([-1.7e308, 0.0, 1.7e308])
    np.testing.assert_array_equal(minmax_scale(x, -1.7e308, 1.7e308), [0.0, 0.5, 1.0])
    rng = np.random.default_rng(0)
    y = rng.normal(size=50) * 10
    np.testing.assert_allclose(minmax_scale(y, -3.0, 5.0), np.clip((y + 3) / 8, 0, 1))
    with pytest.raises(ValueError, match="non-finite"):
        minmax_normalise(np.array([1.0, np.inf]), np.arange(2))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 10**400])
def test_feature_encoder_rejects_non_finite_numbers(tmp_path: Path, value: float) -> None:
    ds = ingest(load_raw(load_schema(write_tiny(tmp_path))), SPLIT)
    with pytest.raises(DataError, match=r"record 0, field 'age': .*not a finite number"):
        FeatureEncoder.from_dataset(ds).batch([{"age": value}])


def test_exponent_timestamps_are_read(tmp_path: Path) -> None:
    inter = "user_id,item_id,timestamp\nu1,i1,9.783e8\nu1,i2,978300761.5\n"
    ds = ingest(load_raw(load_schema(write_tiny(tmp_path, interactions=inter))), SPLIT)
    assert sorted(ds.interactions.ts.tolist()) == [978300000, 978300761]


def test_out_of_range_parquet_numbers_are_data_errors_not_tracebacks(tmp_path: Path) -> None:
    toml = write_tiny(tmp_path, "parquet")
    big = pa.array([1, 2**64 - 1], pa.uint64())
    pq.write_table(
        pa.table({"user_id": big, "item_id": ["i1", "i2"], "timestamp": [1, 2]}),
        tmp_path / "interactions.parquet",
    )
    ds = ingest(load_raw(load_schema(toml)), SPLIT)  # huge uint64 ids are kept as strings
    assert str(2**64 - 1) in ds.user_ids.tolist()
    pq.write_table(
        pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": big}),
        tmp_path / "interactions.parquet",
    )
    with pytest.raises(DataError, match=r"row 2, column 'timestamp': .*beyond int64"):
        ingest(load_raw(load_schema(toml)), SPLIT)
    users = pq.read_table(tmp_path / "users.parquet")
    gender = pa.array([1.0, 1e300, math.inf, 2.0, 1.0])  # float categories, not integral ints
    pq.write_table(users.set_column(1, "gender", gender), tmp_path / "users.parquet")
    pq.write_table(
        pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [1, 2]}),
        tmp_path / "interactions.parquet",
    )
    ingest(load_raw(load_schema(toml)), SPLIT)  # no OverflowError / ArrowInvalid


def test_feature_encoder_huge_integer_category_is_a_data_error(tmp_path: Path) -> None:
    ds = ingest(load_raw(load_schema(write_tiny(tmp_path))), SPLIT)
    enc = FeatureEncoder.from_dataset(ds)
    assert enc.batch([{"gender": 10**400}]).univalent["gender"].tolist() == [0]  # OOV
    with pytest.raises(DataError, match=r"record 0, field 'gender': integer with too many"):
        enc.batch([{"gender": 10**5000}])


def test_cli_prepare_with_inf_exits_2_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's reproduction: ``inf`` in a continuous users.csv column."""
    import sys

    from ralm.cli import main

    toml = write_tiny(tmp_path / "src", users=_users_with_age("inf"))
    out = tmp_path / "enc"
    monkeypatch.setattr(sys, "argv", ["ralm", "data", "prepare", str(toml), "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "users.csv, row 3 (line 4), column 'age': 'inf' is not a finite number" in err
    assert not out.exists()
