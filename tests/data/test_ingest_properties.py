"""Property tests on ingestion (issue 12): random malformed rows give a clear one-line
:class:`~ralm.errors.RalmError` naming file, row/line and column, and nothing is stored.

Each case corrupts one random row of the tiny generic dataset (``generic_fixture``) and runs
``prepare`` with an output folder: the folder must not be created and no temporary may be
left next to it. A last property writes random *valid* extreme numbers and checks that the
stored ranges and features are finite. Bounded: a few dozen examples per property.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from generic_fixture import INTERACTIONS_CSV, USERS_CSV, write_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralm.data.prepare import prepare
from ralm.data.splits import SplitConfig
from ralm.errors import RalmError

SETTINGS = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SPLIT = SplitConfig(method="global_time", valid_frac=0.0, test_frac=0.2, cold_item_frac=0.0)
USER_ROWS = USERS_CSV.strip().splitlines()  # header + 5 rows
INTER_ROWS = INTERACTIONS_CSV.strip().splitlines()  # header + 13 rows
SAFE = "abcdefxyzINFNAinfna0123456789.eE+-$%#/:;!? "  # no comma, quote or newline


def _finite_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


not_a_finite_number = st.one_of(
    st.text(SAFE, min_size=1, max_size=12).filter(
        lambda s: s.strip() != "" and not _finite_number(s.strip())
    ),
    st.sampled_from(["inf", "-inf", "Infinity", "nan", "NaN", "1e400", "-1e999"]),
    st.integers(309, 500).map(lambda n: "9" * n),  # beyond float64
)
not_a_timestamp = st.one_of(
    st.text("abcxyzTZ!?#/ ", min_size=1, max_size=10).filter(lambda s: s.strip() != ""),
    st.sampled_from(["inf", "nan", "1e400", "-1e19", "1.5e3x"]),
    st.integers(20, 400).map(lambda n: "9" * n),  # beyond int64 seconds
)
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80"]


def _run(files: dict[str, bytes], check: Callable[[str], None]) -> None:
    """Write the tiny dataset with ``files`` replaced, prepare it, check the error."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        toml = write_tiny(root / "src")
        for name, data in files.items():
            (root / "src" / name).write_bytes(data)
        out = root / "out" / "ds"
        try:
            prepare(str(toml), out, SPLIT)
        except RalmError as e:
            msg = str(e)
            assert "\n" not in msg, msg  # one line
            check(msg)
        else:
            raise AssertionError("malformed input was accepted")
        assert not out.exists() and not (root / "out").exists()  # nothing stored
        assert sorted(p.name for p in root.iterdir()) == ["src"]


def _replace_cell(rows: list[str], row: int, col: int, value: str) -> bytes:
    cells = rows[row + 1].split(",")
    cells[col] = value
    new = [*rows[: row + 1], ",".join(cells), *rows[row + 2 :]]
    return ("\n".join(new) + "\n").encode()


def _at(file: str, row: int, column: str) -> str:
    return rf"{file}, row {row + 1} \(line {row + 2}\), column '{column}'"


@SETTINGS
@given(row=st.integers(0, len(USER_ROWS) - 2), value=not_a_finite_number)
def test_bad_continuous_value(row: int, value: str) -> None:
    def check(msg: str) -> None:
        assert re.search(_at("users.csv", row, "age"), msg), msg
        assert re.search(r"not a number|not a finite number|overflows", msg), msg

    _run({"users.csv": _replace_cell(USER_ROWS, row, 3, value)}, check)


@SETTINGS
@given(row=st.integers(0, len(INTER_ROWS) - 2), value=not_a_timestamp)
def test_bad_timestamp(row: int, value: str) -> None:
    def check(msg: str) -> None:
        assert re.search(_at("interactions.csv", row, "timestamp") + ": .*not a timestamp", msg)

    _run({"interactions.csv": _replace_cell(INTER_ROWS, row, 2, value)}, check)


@SETTINGS
@given(row=st.integers(0, len(INTER_ROWS) - 2), value=not_a_finite_number)
def test_bad_label(row: int, value: str) -> None:
    def check(msg: str) -> None:
        assert re.search(_at("interactions.csv", row, "label"), msg), msg

    _run({"interactions.csv": _replace_cell(INTER_ROWS, row, 3, value)}, check)


@SETTINGS
@given(
    row=st.integers(0, len(INTER_ROWS) - 2),
    col=st.sampled_from([0, 1]),
    value=st.sampled_from(["", " ", "   "]),
)
def test_empty_id(row: int, col: int, value: str) -> None:
    name = ["user_id", "item_id"][col]

    def check(msg: str) -> None:
        assert re.search(_at("interactions.csv", row, name) + ": (missing value|empty id)", msg)

    _run({"interactions.csv": _replace_cell(INTER_ROWS, row, col, value)}, check)


@SETTINGS
@given(
    row=st.integers(0, len(INTER_ROWS) - 1),
    cells=st.lists(st.text("abc123", min_size=1, max_size=4), min_size=1, max_size=8).filter(
        lambda c: len(c) != 4
    ),
)
def test_wrong_column_count(row: int, cells: list[str]) -> None:
    rows = [*INTER_ROWS[: row + 1], ",".join(cells), *INTER_ROWS[row + 1 :]]

    def check(msg: str) -> None:
        pattern = rf"interactions.csv, line {row + 2}: expected 4 columns, got {len(cells)}"
        assert re.search(pattern, msg), msg

    _run({"interactions.csv": ("\n".join(rows) + "\n").encode()}, check)


@SETTINGS
@given(
    which=st.sampled_from(["interactions.csv", "users.csv"]),
    row=st.integers(0, 4),
    bad=st.sampled_from(BAD_UTF8),
    at=st.integers(0, 2),
)
def test_bad_utf8(which: str, row: int, bad: bytes, at: int) -> None:
    rows = (INTER_ROWS if which == "interactions.csv" else USER_ROWS)[:]
    data = [r.encode() for r in rows]
    line = data[row + 1]
    data[row + 1] = line[:at] + bad + line[at:]

    def check(msg: str) -> None:
        assert re.search(rf"{which}, line {row + 2}: not valid UTF-8", msg), msg

    _run({which: b"\n".join(data) + b"\n"}, check)


@SETTINGS
@given(dup=st.sampled_from(["user_id", "gender", "tags", "age"]), pos=st.integers(0, 4))
def test_duplicated_header(dup: str, pos: int) -> None:
    header = USER_ROWS[0].split(",")
    header.insert(pos, dup)
    rows = [",".join(header)] + [r + ",x" for r in USER_ROWS[1:]]

    def check(msg: str) -> None:
        assert re.search(rf"users.csv: duplicate CSV column\(s\) \['{dup}'\]", msg), msg

    _run({"users.csv": ("\n".join(rows) + "\n").encode()}, check)


@SETTINGS
@given(pair=st.lists(st.integers(0, len(USER_ROWS) - 2), min_size=2, max_size=2, unique=True))
def test_duplicated_user_id(pair: list[int]) -> None:
    src, dst = sorted(pair)
    uid = USER_ROWS[src + 1].split(",")[0]

    def check(msg: str) -> None:
        assert re.search(_at("users.csv", dst, "user_id") + f": duplicate id '{uid}'", msg), msg

    _run({"users.csv": _replace_cell(USER_ROWS, dst, 0, uid)}, check)


extreme = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0]
)


@SETTINGS
@given(ages=st.lists(extreme | st.none(), min_size=5, max_size=5))
def test_valid_extreme_numbers_give_finite_ranges_and_features(ages: list[float | None]) -> None:
    rows = [USER_ROWS[0]]
    for r, a in zip(USER_ROWS[1:], ages, strict=True):
        cells = r.split(",")
        cells[3] = "" if a is None else repr(a)
        rows.append(",".join(cells))
    with tempfile.TemporaryDirectory() as tmp:
        toml = write_tiny(Path(tmp), users="\n".join(rows) + "\n")
        ds = prepare(str(toml), None, SPLIT)
    age = next(f for f in ds.fields if f.name == "age")
    assert all(v is None or math.isfinite(v) for v in (age.min, age.max))
    assert np.isfinite(ds.continuous).all()
    assert ds.continuous.min() >= 0.0 and ds.continuous.max() <= 1.0


@SETTINGS
@given(
    column=st.sampled_from(["age", "timestamp", "label"]),
    row=st.integers(0, 4),
    bad=st.sampled_from([math.inf, -math.inf, math.nan]),
)
def test_parquet_non_finite_floats(column: str, row: int, bad: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        toml = write_tiny(root / "src", "parquet")
        name = "users" if column == "age" else "interactions"
        table = pq.read_table(root / "src" / f"{name}.parquet")
        values = [float(v) if v is not None else None for v in table[column].to_pylist()]
        values[row] = bad
        i = table.column_names.index(column)
        pq.write_table(
            table.set_column(i, column, pa.array(values)), root / "src" / f"{name}.parquet"
        )
        out = root / "out"
        try:
            prepare(str(toml), out, SPLIT)
        except RalmError as e:
            assert "\n" not in str(e)
            assert re.search(rf"{name}.parquet, row {row + 1}, column '{column}'", str(e)), str(e)
        else:
            raise AssertionError("a non-finite float was accepted")
        assert not out.exists()
