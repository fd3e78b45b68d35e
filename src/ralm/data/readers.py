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
from ralm.data.movielens import ML1M_OCCUPATIONS, ML100K_GENRES, movielens_raw
from ralm.data.schema import schema_from_dict
from ralm.data.tables import TableSource, read_delimited
from ralm.errors import DataError

log = logging.getLogger(__name__)

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_ROLES = {"interactions": "inter", "users": "user", "items": "item"}  # role -> suffix


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
    train_ps = sorted(d.glob("*.train.inter")) + sorted(d.glob("*.valid.inter"))
    sources: dict[str, TableSource] = {}
    test = None
    if inter_p is not None:
        inter, itypes = read_recbole_atomic(inter_p)
        sources["interactions"] = TableSource(str(inter_p))
    elif test_p is not None and train_ps:
        parts = [read_recbole_atomic(p) for p in train_ps]
        inter, itypes = pa.concat_tables([t for t, _ in parts]), parts[0][1]
        test = read_recbole_atomic(test_p)[0]
        sources["interactions"] = TableSource(str(train_ps[0]))
        sources["test_interactions"] = TableSource(str(test_p))
    else:
        raise DataError(f"{d}: no <name>.inter file (nor .train.inter/.test.inter) found")
    for col in ("user_id", "item_id"):
        if col not in itypes:
            raise DataError(f"{sources['interactions'].path}: no {col!r} column in the header")
    if "timestamp" not in itypes:
        log.warning("%s has no timestamp column: row order is used as time", d)
        order = pa.array(np.arange(inter.num_rows).astype(str))
        inter = inter.append_column("timestamp", order)
        if test is not None:
            test = test.append_column(
                "timestamp", pa.array(np.arange(inter.num_rows, inter.num_rows + len(test)))
            )
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
                "interactions": str(inter_p or train_ps[0]),
                "users": str(user_p) if user_p else None,
                "items": str(item_p) if item_p else None,
            },
            "fields": fields,
            "derived": derived,
        },
        origin=str(d),
    )
    return RawData(schema, inter, users, items, test, sources)


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


def read_ml1m(folder: str | Path) -> RawData:
    """GroupLens ML-1M: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1)."""
    d = Path(folder)
    ratings = _read_dat(d / "ratings.dat", ["user_id", "item_id", "r", "timestamp"])
    users = _read_dat(d / "users.dat", ["user_id", "gender", "age", "occupation", "zip"])
    movies = _read_dat(d / "movies.dat", ["item_id", "title", "genres"])
    occ = pc.index_in(
        pc.utf8_trim_whitespace(users["occupation"]),
        value_set=pa.array([str(i) for i in range(len(ML1M_OCCUPATIONS))]),
    )
    users = users.set_column(3, "occupation", pc.take(pa.array(ML1M_OCCUPATIONS), occ))
    genres = pc.split_pattern(pc.fill_null(movies["genres"], ""), "|")
    srcs = {
        r: TableSource(str(d / f))
        for r, f in (
            ("interactions", "ratings.dat"),
            ("users", "users.dat"),
            ("items", "movies.dat"),
        )
    }
    return movielens_raw(
        "ml-1m",
        ratings,
        users,
        pa.table({"item_id": movies["item_id"], "genres": genres}),
        srcs,
        age_is_bucket=True,
    )
