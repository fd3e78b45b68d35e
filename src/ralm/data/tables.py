"""Reading CSV/Parquet tables and converting columns, with errors that name file/row/column.

Every conversion is vectorised (pyarrow compute). When a conversion fails, the offending
row is located by bisection (O(n) work in total), so error messages can name it without a
per-row Python loop. Rows are numbered from 1 over the data rows; for CSV files the line
number (header = line 1) is given too.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ralm.errors import DataError

log = logging.getLogger(__name__)

_INT64_LIMIT = 2.0**63  # float timestamps must be below this in magnitude


@dataclass(frozen=True)
class TableSource:
    """Where a table came from, for error messages.

    Args:
        path: file name shown to the user.
        is_csv: CSV files also get a line number (header = line 1).
    """

    path: str
    is_csv: bool = False

    def at(self, row: int | None = None, column: str | None = None) -> str:
        """``file, row R (line L), column 'c'`` for a 0-based data row index."""
        parts = [self.path]
        if row is not None:
            parts.append(f"row {row + 1}" + (f" (line {row + 2})" if self.is_csv else ""))
        if column is not None:
            parts.append(f"column {column!r}")
        return ", ".join(parts)


def read_table(path: str | Path, role: str = "table") -> tuple[pa.Table, TableSource]:
    """Read a .csv or .parquet file. CSV cells are read as strings (converted later).

    Raises:
        DataError: unreadable file, malformed CSV row (naming its line), or no data rows.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        table, src = _read_csv(p), TableSource(str(p), is_csv=True)
    elif suffix in (".parquet", ".pq"):
        try:
            table = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{p}: cannot read {role} parquet file: {e}") from e
        src = TableSource(str(p))
    else:
        raise DataError(f"{p}: {role} file must be .csv or .parquet")
    if table.num_rows == 0:
        raise DataError(f"{p}: {role} file is empty (no data rows)")
    log.debug("read %s: %d rows, columns %s", p, table.num_rows, table.column_names)
    return table, src


def _read_csv(p: Path) -> pa.Table:
    try:
        with p.open("rb") as fh:
            first = fh.readline()
    except OSError as e:
        raise DataError(f"{p}: cannot read CSV file: {e}") from e
    try:
        header_line = first.decode("utf-8-sig")  # tolerate a UTF-8 BOM
    except UnicodeDecodeError as e:
        raise DataError(f"{p}, line 1: not valid UTF-8 ({e.reason})") from e
    header = next(csv.reader([header_line]), None)
    if not header:
        raise DataError(f"{p}: CSV file is empty (no header line)")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{p}: duplicate CSV column(s) {dupes} in the header")
    return read_delimited(p, ",", header, skip_header=True)


def read_delimited(
    source: str | Path | bytes,
    delimiter: str,
    column_names: list[str],
    *,
    skip_header: bool = False,
    encoding: str = "utf-8",
    quoting: bool = True,
    name: str | None = None,
) -> pa.Table:
    """Read delimited text into string columns ``column_names``.

    Args:
        source: a file, or the raw bytes of one (``name`` is then used in messages).
        delimiter: one character.
        column_names: names of the columns, in file order.
        skip_header: the first line is a header (and is skipped).
        encoding: text encoding of the file (e.g. ``latin-1`` for GroupLens files).
        quoting: honour double quotes (off for formats that never quote).

    Raises:
        DataError: a row with the wrong number of cells (naming its line), or unreadable.
    """
    label = name or str(source)
    bad: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        if not bad:
            where = f"line {row.number}" if row.number is not None else "a row"
            bad.append(
                f"{label}, {where}: expected {row.expected_columns} columns, "
                f"got {row.actual_columns}: {row.text[:80]!r}"
            )
        return "skip"

    data = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        table = pacsv.read_csv(
            data,
            read_options=pacsv.ReadOptions(
                use_threads=False,
                column_names=column_names,
                skip_rows=1 if skip_header else 0,
                encoding=encoding,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoting else False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in column_names},
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    except (pa.ArrowException, OSError) as e:
        line = _first_bad_utf8_line(source) if encoding == "utf-8" else None
        if line is not None:
            raise DataError(f"{label}, line {line}: not valid UTF-8") from e
        raise DataError(f"{label}: malformed file: {e}") from e
    if bad:
        raise DataError(f"malformed row: {bad[0]}")
    return table


def _first_bad_utf8_line(source: str | Path | bytes) -> int | None:
    """1-based line of the first invalid UTF-8 byte (error path only: reads the file)."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data.count(b"\n", 0, e.start) + 1
    except OSError:
        return None
    return None


def require_columns(table: pa.Table, columns: list[str], src: TableSource, role: str) -> None:
    """Raise :class:`DataError` if any of ``columns`` is missing."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"{src.path}: {role} table has no column(s) {missing}; "
            f"columns present: {table.column_names}"
        )


def first_failing_row(arr: pa.Array, fn: Callable[[pa.Array], object]) -> int | None:
    """Index of the first element for which ``fn`` raises, by bisection; None if none."""
    try:
        fn(arr)
        return None
    except (pa.ArrowException, ValueError):
        pass
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            fn(arr.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowException, ValueError):
            hi = mid
    return lo


def _fits_int64(arr: pa.Array) -> bool:
    """An integer array casts to int64 without overflow (only uint64 can fail)."""
    if arr.type != pa.uint64() or len(arr) == arr.null_count:
        return True
    return int(pc.max(arr).as_py()) <= 2**63 - 1


def _combine(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def check_not_null(col: pa.Array, src: TableSource, column: str) -> None:
    """Raise :class:`DataError` naming the first null/empty cell of a required column."""
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        raise DataError(f"{src.at(row, column)}: missing value in a required column")


def to_string(col: pa.ChunkedArray | pa.Array, src: TableSource, column: str) -> pa.Array:
    """Categorical values as strings (ints as ``str(int)``, integral floats as ints)."""
    arr = _combine(col)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.utf8_trim_whitespace(arr.cast(pa.string()))
    if pa.types.is_dictionary(t):
        return to_string(arr.cast(t.value_type), src, column)
    if pa.types.is_floating(t):
        valid = pc.drop_null(arr)
        integral = pc.and_(pc.equal(pc.floor(valid), valid), pc.less(pc.abs(valid), 2.0**63))
        if len(valid) and pc.all(integral).as_py():
            return arr.cast(pa.int64()).cast(pa.string())
        return arr.cast(pa.string())
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return arr.cast(pa.string())
    raise DataError(f"{src.at(None, column)}: expected categorical values, got type {t}")


def to_ids(col: pa.ChunkedArray | pa.Array, src: TableSource, column: str) -> pa.Array:
    """Id column: int64 when integer typed (fast path), else strings; no nulls allowed."""
    arr = _combine(col)
    t = arr.type
    if pa.types.is_integer(t) and _fits_int64(arr):
        out = arr.cast(pa.int64())
    else:  # strings (uint64 ids beyond int64 become their decimal strings)
        out = to_string(arr, src, column)
        if pa.types.is_floating(t) and pa.types.is_string(out.type):
            raise DataError(f"{src.at(None, column)}: ids must be integers or strings, not floats")
    check_not_null(out, src, column)
    if pa.types.is_string(out.type):
        empty = pc.equal(out, "")
        if pc.any(empty).as_py():
            row = int(pc.index(empty, True).as_py())
            raise DataError(f"{src.at(row, column)}: empty id")
    return out


NonFinite = Literal["error", "missing"]


def _non_finite(
    arr: pa.Array, raw: pa.Array, src: TableSource, column: str, rule: NonFinite
) -> pa.Array:
    """Apply the non-finite rule to a float64 column converted from ``raw``."""
    x = arr.to_numpy(zero_copy_only=False)  # nulls -> NaN here, told apart below
    bad = ~np.isfinite(x) & ~pc.is_null(arr).to_numpy(zero_copy_only=False)
    if not bad.any():
        return arr
    if rule == "missing":
        return pc.if_else(pa.array(bad), pa.scalar(None, pa.float64()), arr)
    row = int(np.flatnonzero(bad)[0])
    shown = _shown(raw[row].as_py())
    spelled_inf = any(w in shown.lower() for w in ("inf", "nan"))
    why = "is not a finite number" if spelled_inf or np.isnan(x[row]) else "overflows float64"
    raise DataError(f"{src.at(row, column)}: {shown!r} {why} (non-finite values are rejected)")


def _shown(value: object) -> str:
    """A cell value for an error message, shortened when long."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def to_float(
    col: pa.ChunkedArray | pa.Array, src: TableSource, column: str, non_finite: NonFinite = "error"
) -> pa.Array:
    """Numeric column as float64 (nulls kept).

    Args:
        col: the column (numbers, booleans or numeric strings).
        src: its source (error messages).
        column: its name (error messages).
        non_finite: ``"error"``: NaN, +-inf and numbers beyond float64 (``1e400``) raise
            a :class:`DataError` naming the row; ``"missing"``: they become nulls.
    """
    arr = _combine(col)
    t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        return _non_finite(arr.cast(pa.float64()), arr, src, column, non_finite)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = pc.utf8_trim_whitespace(arr.cast(pa.string()))

        def cast(a: pa.Array) -> pa.Array:
            return a.cast(pa.float64())

        row = first_failing_row(arr, cast)
        if row is not None:
            raise DataError(f"{src.at(row, column)}: {_shown(arr[row].as_py())!r} is not a number")
        return _non_finite(cast(arr), arr, src, column, non_finite)
    raise DataError(f"{src.at(None, column)}: expected numbers, got type {t}")


def _parse_time(a: pa.Array) -> pa.Array:
    """Strings -> int64 unix seconds: integers, or ISO-8601 (with or without offset)."""
    if pc.all(pc.match_substring_regex(a, r"^-?\d+$")).as_py() is not False:
        return a.cast(pa.int64())
    if pc.all(pc.match_substring_regex(a, r"^-?\d+(\.\d*)?([eE][+-]?\d+)?$")).as_py():
        x = a.cast(pa.float64())
        if not pc.all(pc.less(pc.abs(x), _INT64_LIMIT)).as_py():
            raise ValueError("timestamp beyond int64")
        return pc.floor(x).cast(pa.int64())
    has_tz = pc.match_substring_regex(a, r"(Z|[+-]\d\d:?\d\d)$").to_numpy(zero_copy_only=False)
    out = np.empty(len(a), dtype=np.int64)
    if has_tz.any():
        aware = a.filter(pa.array(has_tz)).cast(pa.timestamp("s", tz="UTC"))
        out[has_tz] = aware.cast(pa.int64()).to_numpy()
    if not has_tz.all():  # naive times are taken as UTC
        naive = a.filter(pa.array(~has_tz)).cast(pa.timestamp("s"))
        out[~has_tz] = naive.cast(pa.int64()).to_numpy()
    return pa.array(out)


def to_timestamp(col: pa.ChunkedArray | pa.Array, src: TableSource, column: str) -> pa.Array:
    """Event time as int64 unix seconds (ints, floats, ISO-8601 strings, timestamps)."""
    arr = _combine(col)
    check_not_null(arr, src, column)
    t = arr.type
    if pa.types.is_integer(t):
        if not _fits_int64(arr):
            big = int(pc.index(pc.greater(arr, pa.scalar(2**63 - 1, t)), True).as_py())
            raise DataError(f"{src.at(big, column)}: {arr[big].as_py()} is beyond int64 seconds")
        return arr.cast(pa.int64())
    if pa.types.is_floating(t):
        x = arr.to_numpy(zero_copy_only=False)
        bad = ~(np.abs(x) < _INT64_LIMIT)  # NaN, +-inf and beyond int64 seconds
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{src.at(at, column)}: {x[at]!r} is not a timestamp (not a finite number "
                "of seconds within int64)"
            )
        return pc.floor(arr).cast(pa.int64())
    if pa.types.is_timestamp(t):
        return arr.cast(pa.timestamp("s", tz=t.tz), safe=False).cast(pa.int64())
    if pa.types.is_date(t):
        return arr.cast(pa.timestamp("s")).cast(pa.int64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = pc.utf8_trim_whitespace(arr.cast(pa.string()))
        row = first_failing_row(arr, _parse_time)
        if row is not None:
            shown = _shown(arr[row].as_py())
            raise DataError(
                f"{src.at(row, column)}: {shown!r} is not a timestamp "
                "(expected unix seconds within int64 or ISO-8601)"
            )
        return _parse_time(arr)
    raise DataError(f"{src.at(None, column)}: expected timestamps, got type {t}")


def to_string_lists(
    col: pa.ChunkedArray | pa.Array, src: TableSource, column: str, separator: str = "|"
) -> pa.Array:
    """Multivalent values as ``list<string>``: list columns, or ``a|b|c`` strings.

    Nulls become empty lists. Null or empty values inside a list are kept here and dropped
    when the field is encoded.
    """
    arr = _combine(col)
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = to_string(pc.list_flatten(arr), src, column)
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        lists = pa.LargeListArray.from_arrays(pa.array(offsets), flat)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
        s = pc.fill_null(to_string(arr, src, column), "")
        lists = pc.split_pattern(s, separator)
    else:
        raise DataError(f"{src.at(None, column)}: expected lists or '{separator}'-joined strings")
    return lists
