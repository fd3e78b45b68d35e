"""Readers of public dataset formats, mapping onto the generic schema (:class:`RawData`).

- RecBole atomic files (``<name>.inter``, ``.user``, ``.item``; tab-separated, header
  ``name:type`` with types ``token``, ``token_seq``, ``float``, ``float_seq``). Generic
  mapping: user ``token`` -> univalent, ``token_seq`` -> multivalent, ``float`` ->
  continuous; the item-ID history is derived. RecBole benchmark splits
  (``<name>.train.inter`` / ``.valid.inter`` / ``.test.inter``) are read for ``given``.
- GroupLens ML-100K (``u.data``, ``u.user``, ``u.item``) and ML-1M (``ratings.dat``,
  ``users.dat``, ``movies.dat``), mapped with :mod:`ralm.data.movielens`.
- The RecBole copy of ML-100K (``ml-100k.inter`` etc., what ``ralm data fetch`` obtains),
  also mapped with :mod:`ralm.data.movielens`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralm.data.ingest import RawData
from ralm.data.movielens import ML100K_GENRES, movielens_raw
from ralm.data.schema import schema_from_dict
from ralm.data.tables import TableSource, read_delimited
from ralm.errors import DataError

log = logging.getLogger(__name__)

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_ROLES = {"interactions": "inter", "users": "user", "items": "item"}  # role -> suffix


def with_file_order_time(tables: list[pa.Table | None]) -> list[pa.Table | None]:
    """Add a ``timestamp`` column = running row number over the tables, in file order.

    The RecBole rule for data without time: rows keep their file order (train file first,
    then test, then valid); a dataset read this way sets ``RawData.time_from_order``.
    """
    out: list[pa.Table | None] = []
    start = 0
    for t in tables:
        if t is None:
            out.append(None)
            continue
        if "timestamp" in t.column_names:
            t = t.drop_columns(["timestamp"])
        out.append(t.append_column("timestamp", pa.array(np.arange(start, start + len(t)))))
        start += len(t)
    return out


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    return path


def read_recbole_atomic(path: str | Path) -> tuple[pa.Table, dict[str, str]]:
    """Read one RecBole atomic file. Returns (string table, column name -> RecBole type)."""
    p = _need(Path(path))
    with p.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    names, types = [], {}
    for i, h in enumerate(header):
        name, _, typ = h.partition(":")
        if typ not in RECBOLE_TYPES:
            raise DataError(
                f"{p}, line 1, column {i + 1}: header {h!r} must be name:type with type in "
                f"{list(RECBOLE_TYPES)}"
            )
        names.append(name)
        types[name] = typ
    table = read_delimited(p, "\t", names, skip_header=True, quoting=False)
    if table.num_rows == 0:
        raise DataError(f"{p}: file is empty (no data rows)")
    return table, types


def _find_atomic(folder: Path, suffix: str) -> Path | None:
    exact = folder / f"{folder.name}.{suffix}"
    if exact.is_file():
        return exact
    found = sorted(p for p in folder.glob(f"*.{suffix}") if p.name.count(".") == 1)
    return found[0] if found else None


def read_recbole(folder: str | Path) -> RawData:
    """Generic mapping of a RecBole atomic dataset folder onto :class:`RawData`."""
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f"{d}: not a folder of RecBole atomic files")
    inter_p = _find_atomic(d, "inter")
    test_p = next(iter(sorted(d.glob("*.test.inter"))), None)
    train_p = next(iter(sorted(d.glob("*.train.inter"))), None)
    valid_p = next(iter(sorted(d.glob("*.valid.inter"))), None)
    sources: dict[str, TableSource] = {}
    test = valid = None
    if inter_p is not None:
        inter, itypes = read_recbole_atomic(inter_p)
        sources["interactions"] = TableSource(str(inter_p))
    elif test_p is not None and train_p is not None:
        inter, itypes = read_recbole_atomic(train_p)
        test = read_recbole_atomic(test_p)[0]
        sources["interactions"] = TableSource(str(train_p))
        sources["test_interactions"] = TableSource(str(test_p))
        if valid_p is not None:  # the benchmark's own VALID (valid_from auto / given-file)
            valid = read_recbole_atomic(valid_p)[0]
            sources["valid_interactions"] = TableSource(str(valid_p))
    else:
        raise DataError(f"{d}: no <name>.inter file (nor .train.inter/.test.inter) found")
    for col in ("user_id", "item_id"):
        if col not in itypes:
            raise DataError(f"{sources['interactions'].path}: no {col!r} column in the header")
    no_time = "timestamp" not in itypes
    if no_time:
        log.warning("%s has no timestamp column: file order is used as time", d)
        timed = with_file_order_time([inter, test, valid])
        inter, test, valid = timed[0] or inter, timed[1], timed[2]
    fields, derived = [], [{"name": "history", "source": "item_id"}]
    users = items = None
    user_p, item_p = _find_atomic(d, "user"), _find_atomic(d, "item")
    if user_p is not None:
        users, utypes = read_recbole_atomic(user_p)
        sources["users"] = TableSource(str(user_p))
        kinds = {"token": "univalent", "token_seq": "multivalent", "float": "continuous"}
        for name, typ in utypes.items():
            if name != "user_id" and typ in kinds:
                sep = " " if typ == "token_seq" else "|"
                fields.append({"name": name, "kind": kinds[typ], "separator": sep})
    if item_p is not None:
        items = read_recbole_atomic(item_p)[0]
        sources["items"] = TableSource(str(item_p))
    schema = schema_from_dict(
        {
            "dataset": {"name": d.name},
            "files": {
                "interactions": str(inter_p or train_p),
                "users": str(user_p) if user_p else None,
                "items": str(item_p) if item_p else None,
            },
            "fields": fields,
            "derived": derived,
        },
        origin=str(d),
    )
    return RawData(
        schema,
        inter,
        users,
        items,
        test,
        valid,
        sources,
        time_from_order=no_time,
    )


def read_ml100k_recbole(folder: str | Path) -> RawData:
    """The RecBole copy of ML-100K (``ml-100k.inter/.user/.item``) with the MovieLens mapping."""
    d = Path(folder)
    inter, _ = read_recbole_atomic(d / "ml-100k.inter")
    users, _ = read_recbole_atomic(d / "ml-100k.user")
    items, _ = read_recbole_atomic(d / "ml-100k.item")
    genres = pc.split_pattern(pc.fill_null(items["class"], ""), " ")
    return movielens_raw(
        "ml-100k",
        inter,
        users.rename_columns(["zip" if c == "zip_code" else c for c in users.column_names]),
        pa.table({"item_id": items["item_id"], "genres": genres}),
        {r: TableSource(str(d / f"ml-100k.{s}")) for r, s in _ROLES.items()},
    )


def read_ml100k(folder: str | Path) -> RawData:
    """GroupLens ML-100K: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1)."""
    d = Path(folder)
    files = {"interactions": "u.data", "users": "u.user", "items": "u.item"}
    paths = {role: _need(d / name) for role, name in files.items()}
    ratings = read_delimited(paths["interactions"], "\t", ["user_id", "item_id", "r", "timestamp"])
    users = read_delimited(
        paths["users"], "|", ["user_id", "age", "gender", "occupation", "zip"], encoding="latin-1"
    )
    item_cols = ["item_id", "title", "release", "video_release", "url", *ML100K_GENRES]
    items = read_delimited(paths["items"], "|", item_cols, encoding="latin-1", quoting=False)
    flags = np.stack(
        [pc.fill_null(items[g], "0").to_numpy(zero_copy_only=False) == "1" for g in ML100K_GENRES],
        axis=1,
    )  # (n_items, 19) bool
    rows, cols = np.nonzero(flags)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(items)))])
    genres = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(np.array(ML100K_GENRES)[cols])
    )
    srcs = {r: TableSource(str(p)) for r, p in paths.items()}
    return movielens_raw(
        "ml-100k", ratings, users, pa.table({"item_id": items["item_id"], "genres": genres}), srcs
    )


def _read_dat(path: Path, names: list[str]) -> pa.Table:
    """ML-1M ``::``-separated latin-1 file, via a one-character separator in memory."""
    text = _need(path).read_bytes().decode("latin-1")
    if "\x1f" in text:
        raise DataError(f"{path}: unexpected control character \\x1f")
    data = text.replace("::", "\x1f").encode("utf-8")
    return read_delimited(data, "\x1f", names, quoting=False, name=str(path))


def _read_ml1m_ratings(path: Path) -> tuple[pa.Table, bool]:
    """``ratings.dat`` with or without its timestamp column. Returns (table, time_from_order).

    Some public copies drop the timestamps (``user::movie::rating``): then, as RecBole does,
    file order is the time (with a warning). A file mixing both row forms is refused
    (naming the first line of the other form).
    """
    with _need(path).open("rb") as fh:
        first = fh.readline().decode("latin-1").rstrip("\r\n")
    if first.count("::") == 2:
        log.warning("%s has no timestamps (user::movie::rating): file order is used as time", path)
        table = _read_dat(path, ["user_id", "item_id", "r"])
        (table,) = with_file_order_time([table])
        assert table is not None
        return table, True
    table = _read_dat(path, ["user_id", "item_id", "r", "timestamp"])
    if table["timestamp"].null_count == len(table):  # user::movie::rating:: (empty field)
        log.warning("%s has empty timestamps: file order is used as time", path)
        (table,) = with_file_order_time([table])
        assert table is not None
        return table, True
    return table, False


def read_ml1m(folder: str | Path) -> RawData:
    """GroupLens ML-1M: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1).

    ``ratings.dat`` without timestamps is accepted (file order is the time, with a warning;
    see :func:`_read_ml1m_ratings`).
    """
    d = Path(folder)
    ratings, time_from_order = _read_ml1m_ratings(d / "ratings.dat")
    users = _read_dat(d / "users.dat", ["user_id", "gender", "age", "occupation", "zip"])
    movies = _read_dat(d / "movies.dat", ["item_id", "title", "genres"])
    genres = pc.split_pattern(pc.fill_null(movies["genres"], ""), "|")
    srcs = {
        r: TableSource(str(d / f))
        for r, f in (
            ("interactions", "ratings.dat"),
            ("users", "users.dat"),
            ("items", "movies.dat"),
        )
    }
    raw = movielens_raw(
        "ml-1m",
        ratings,
        users,
        pa.table({"item_id": movies["item_id"], "genres": genres}),
        srcs,
        age_is_bucket=True,
    )
    raw.time_from_order = time_from_order
    return raw
