"""Generic CSV/Parquet ingestion: codes, statistics, derived fields and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from generic_fixture import INTERACTIONS_CSV, USERS_CSV, write_tiny

from ralm.data.encoded import EncodedDataset, Split
from ralm.data.ingest import ingest, load_raw
from ralm.data.schema import load_schema
from ralm.data.splits import SplitConfig
from ralm.errors import DataError

# global cut: the two rows at ts >= 140 (u6/i3, u5/i4) are TEST, the rest TRAIN
CUT = SplitConfig(method="global_time", valid_frac=0.0, test_frac=0.1, cold_item_frac=0.0)


def _ingest(toml: Path, split: SplitConfig = CUT) -> EncodedDataset:
    return ingest(load_raw(load_schema(toml)), split)


def _bag(ds: EncodedDataset, field: str, user: str) -> list[str]:
    u = int(np.flatnonzero(ds.user_ids == user)[0])
    off, val = ds.multivalent[field]
    vocab = ds.vocabs[field]
    return sorted("<OOV>" if c == 0 else str(vocab[c - 1]) for c in val[off[u] : off[u + 1]])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tiny_dataset_is_encoded_as_derived_by_hand(tmp_path: Path, fmt: str) -> None:
    ds = _ingest(write_tiny(tmp_path, fmt))
    assert ds.user_ids.tolist() == ["u1", "u2", "u3", "u4", "u5", "u6"]
    assert ds.item_ids.tolist() == ["i1", "i2", "i3", "i4"]
    assert [(f.name, f.kind) for f in ds.fields] == [
        ("gender", "univalent"),
        ("tags", "multivalent"),
        ("age", "continuous"),
        ("genres", "multivalent"),
        ("history", "multivalent"),
    ]
    # u5 has no TRAIN row: its values (X, d, age 100) are not in vocabularies / statistics
    assert ds.vocabs["gender"].tolist() == ["F", "M"]
    assert ds.univalent["gender"].tolist() == [1, 2, 1, 2, 0, 0]  # u6: not in users table
    assert ds.vocabs["tags"].tolist() == ["a", "b", "c"]
    assert _bag(ds, "tags", "u4") == ["a", "c"]
    assert _bag(ds, "tags", "u5") == ["<OOV>"]
    assert _bag(ds, "tags", "u3") == []
    age = ds.fields[2]
    assert (age.min, age.max) == (20.0, 40.0)
    np.testing.assert_allclose(ds.continuous[:, 0], [0.0, 0.5, 1.0, 0.0, 1.0, 0.0])
    # derived from TRAIN clicks only: label-0 row (u2, i3) and TEST rows are absent
    assert _bag(ds, "history", "u1") == ["i1", "i2", "i3"]
    assert _bag(ds, "history", "u2") == ["i1", "i2"]
    assert _bag(ds, "history", "u5") == []
    assert _bag(ds, "history", "u6") == ["i2"]
    assert ds.fields[4].item_history and ds.fields[4].vocab_size == 5
    assert _bag(ds, "genres", "u1") == ["x", "y", "z"]
    assert _bag(ds, "genres", "u3") == ["y", "z"]
    assert _bag(ds, "genres", "u6") == ["y"]
    assert ds.extra["users_without_features"] == 1
    it = ds.interactions
    assert np.all(np.diff(it.ts) >= 0)
    assert it.label.tolist().count(0) == 1
    assert sorted(it.ts[it.split == Split.TEST].tolist()) == [140, 150]


def test_history_values_are_item_index_plus_one(tmp_path: Path) -> None:
    ds = _ingest(write_tiny(tmp_path))
    it = ds.interactions
    off, val = ds.multivalent["history"]
    for u in range(ds.n_users):
        m = (it.user == u) & (it.split == Split.TRAIN) & (it.label > 0)
        assert val[off[u] : off[u + 1]].tolist() == sorted(set((it.item[m] + 1).tolist()))


def test_roundtrip_through_disk(tmp_path: Path) -> None:
    ds = _ingest(write_tiny(tmp_path / "src"))
    back = EncodedDataset.load(ds.save(tmp_path / "enc"))
    assert back.vocabs["tags"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(back.multivalent["genres"][1], ds.multivalent["genres"][1])
    assert back.extra["split"]["method"] == "global_time"


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    toml = write_tiny(tmp_path)
    path = tmp_path / "interactions.csv"
    path.write_text("\ufeff" + path.read_text(), encoding="utf-8")
    assert len(_ingest(toml).interactions) == 13


def test_iso_timestamps_and_missing_label(tmp_path: Path) -> None:
    inter = "user_id,item_id,timestamp\nu1,i1,2020-01-01T00:00:10Z\nu2,i2,2020-01-01 00:00:05\n"
    ds = _ingest(write_tiny(tmp_path, interactions=inter), SplitConfig(cold_item_frac=0))
    assert ds.interactions.ts.tolist() == [1577836805, 1577836810]
    assert ds.interactions.label.tolist() == [1, 1]


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"interactions": INTERACTIONS_CSV + "u1,i2\n"}, r"interactions.csv, line 15: expected 4"),
        ({"interactions": "user_id,item_id,timestamp\n"}, r"interactions.*empty"),
        ({"interactions": ""}, r"interactions.csv.*empty"),
        (
            {"interactions": "user_id,item_id,timestamp\nu1,i1,5\nu2,i1,yesterday\n"},
            r"interactions.csv, row 2 \(line 3\), column 'timestamp': 'yesterday'",
        ),
        (
            {"interactions": "user_id,item_id,timestamp\nu1,i1,5\n,i1,6\n"},
            r"row 2 \(line 3\), column 'user_id': missing value",
        ),
        (
            {"interactions": 'user_id,item_id,timestamp\nu1,i1,5\nu2," ",6\n'},
            r"row 2 \(line 3\), column 'item_id': empty id",
        ),
        ({"interactions": "user,item_id,timestamp\nu1,i1,5\n"}, r"no column\(s\) \['user_id'\]"),
        (
            {"users": USERS_CSV.replace("u3,F,,40", "u3,F,,forty")},
            r"users.csv, row 3 \(line 4\), column 'age': 'forty' is not a number",
        ),
        (
            {"users": USERS_CSV.replace("u3,F", "u1,F")},
            r"users.csv, row 3 \(line 4\), column 'user_id': duplicate id 'u1'",
        ),
        ({"users": "user_id,gender,tags\nu1,F,a\n"}, r"users table has no column\(s\) \['age'\]"),
        ({"items": "item_id,genre\ni1,x\ni1,y\n"}, r"items.csv, row 2.*duplicate id 'i1'"),
        ({"users": 'user_id,gender,tags,age\nu1,"F,1\n'}, r"users.csv"),
        (
            {"interactions": "user_id,item_id,timestamp,label\nu1,i1,5,1\nu1,i2,6,yes\n"},
            r"row 2 \(line 3\), column 'label': 'yes' is not a number",
        ),
        (
            {"interactions": "user_id,item_id,timestamp\nu1,i1,5\nu1,i2,\n"},
            r"row 2 \(line 3\), column 'timestamp': missing value",
        ),
    ],
)
def test_bad_input_names_file_row_and_column(
    tmp_path: Path, override: dict[str, str], pattern: str
) -> None:
    with pytest.raises(DataError, match=pattern):
        _ingest(write_tiny(tmp_path, **override))


def test_parquet_wrong_type_is_reported(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    toml = write_tiny(tmp_path, "parquet")
    pq.write_table(
        pa.table({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [[1, 2]]}),
        tmp_path / "interactions.parquet",
    )
    with pytest.raises(DataError, match=r"interactions.parquet, column 'timestamp': expected"):
        _ingest(toml)


def test_parquet_list_in_a_univalent_column_is_reported(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    toml = write_tiny(tmp_path, "parquet")
    users = pq.read_table(tmp_path / "users.parquet")
    users = users.set_column(1, "gender", pa.array([["F"]] * users.num_rows))
    pq.write_table(users, tmp_path / "users.parquet")
    with pytest.raises(DataError, match=r"users.parquet, column 'gender': expected categorical"):
        _ingest(toml)


def test_numeric_ids_sort_naturally_and_match_across_tables(tmp_path: Path) -> None:
    inter = "user_id,item_id,timestamp\n10,7,1\n2,7,2\n10,30,3\n"
    users = "user_id,gender,tags,age\n2,F,a,1\n10,M,b,2\n"
    items = "item_id,genre\n7,x\n30,y\n"
    toml = write_tiny(tmp_path, interactions=inter, users=users, items=items)
    ds = _ingest(toml, SplitConfig(test_frac=0, valid_frac=0, cold_item_frac=0))
    assert ds.user_ids.tolist() == ["2", "10"]
    assert ds.item_ids.tolist() == ["7", "30"]
    assert ds.univalent["gender"].tolist() == [1, 2]
    assert _bag(ds, "genres", "10") == ["x", "y"]


def test_given_split_reads_the_test_file(tmp_path: Path) -> None:
    toml = write_tiny(tmp_path)
    (tmp_path / "test.csv").write_text("user_id,item_id,timestamp\nu1,i4,90\nu7,i2,200\n")
    toml.write_text(toml.read_text().replace("[files]", '[files]\ntest_interactions = "test.csv"'))
    ds = _ingest(toml, SplitConfig(method="given", valid_frac=0.0, cold_item_frac=0.0))
    it = ds.interactions
    test_rows = it.split == Split.TEST
    pairs = zip(ds.user_ids[it.user[test_rows]], ds.item_ids[it.item[test_rows]], strict=True)
    assert sorted(pairs) == [("u1", "i4"), ("u7", "i2")]
    assert "i4" not in _bag(ds, "history", "u1")  # an earlier TEST click is not history
    with pytest.raises(DataError, match="test_interactions"):
        _ingest(write_tiny(tmp_path / "other"), SplitConfig(method="given"))
