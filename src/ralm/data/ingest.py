"""Generic ingestion: CSV/Parquet tables + a :class:`DatasetSchema` -> :class:`EncodedDataset`.

Policy (documented in ``docs/DATA.md``):

- users = every user id of the interactions and of the users table; items = every item
  id of the interactions. Both are numbered in natural order of their raw ids.
- users absent from the users table get all-OOV features (code 0, continuous 0, empty
  bags); the count is logged and stored in ``extra["users_without_features"]``.
- vocabularies and continuous min/max come from TRAIN users (users with a TRAIN row);
  values seen only outside TRAIN encode as OOV.
- derived fields use each user's TRAIN-split clicks (label > 0) only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralm.data.batching import gather_csr
from ralm.data.encoded import EncodedDataset, FieldInfo, Interactions, Split
from ralm.data.features import (
    build_vocab,
    csr_from_pairs,
    encode,
    index_of,
    list_elements,
    map_ids,
    minmax_normalise,
    unique_int,
)
from ralm.data.schema import DatasetSchema, DerivedSpec
from ralm.data.splits import SplitConfig, assign_splits
from ralm.data.tables import (
    TableSource,
    check_not_null,
    read_table,
    require_columns,
    to_float,
    to_ids,
    to_string,
    to_string_lists,
    to_timestamp,
)
from ralm.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RawData:
    """Raw tables of one dataset, before encoding.

    Args:
        schema: the dataset description (column names, fields, derived fields).
        interactions: the event table with the schema's column names.
        users: optional users table.
        items: optional items table.
        test_interactions: optional separate test events (``given`` split).
        sources: table role -> :class:`TableSource`, for error messages.
    """

    schema: DatasetSchema
    interactions: pa.Table
    users: pa.Table | None = None
    items: pa.Table | None = None
    test_interactions: pa.Table | None = None
    sources: dict[str, TableSource] = field(default_factory=dict)

    def source(self, role: str) -> TableSource:
        return self.sources.get(role, TableSource(f"<{role} table>"))


def load_raw(schema: DatasetSchema) -> RawData:
    """Read the tables a schema names (paths relative to its TOML file)."""
    tables: dict[str, pa.Table] = {}
    sources: dict[str, TableSource] = {}
    for role in ("interactions", "users", "items", "test_interactions"):
        path = schema.path(role)
        if path is not None:
            tables[role], sources[role] = read_table(path, role)
    return RawData(schema=schema, sources=sources, **tables)  # type: ignore[arg-type]


@dataclass
class _Events:
    user: pa.Array  # string user ids
    item: pa.Array  # string item ids
    ts: np.ndarray  # int64
    label: np.ndarray  # int8


def _events(table: pa.Table, schema: DatasetSchema, src: TableSource, role: str) -> _Events:
    c = schema.columns
    require_columns(table, [c.user_id, c.item_id, c.timestamp], src, role)
    user = to_ids(table[c.user_id], src, c.user_id)
    item = to_ids(table[c.item_id], src, c.item_id)
    ts = to_timestamp(table[c.timestamp], src, c.timestamp).to_numpy()
    if c.label in table.column_names:
        lab = to_float(table[c.label], src, c.label)
        check_not_null(lab, src, c.label)
        label = (lab.to_numpy(zero_copy_only=False) > 0).astype(np.int8)
    else:
        label = np.ones(table.num_rows, dtype=np.int8)
    return _Events(user, item, ts.astype(np.int64), label)


def _concat_ids(a: pa.Array, b: pa.Array) -> pa.Array:
    if a.type != b.type:  # e.g. int ids in one file, strings in the other
        a, b = a.cast(pa.string()), b.cast(pa.string())
    return pa.concat_arrays([a, b])


def _check_unique(ids: pa.Array, src: TableSource, column: str) -> None:
    counts = pc.value_counts(ids)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        value = dup[0]["values"].as_py()
        rows = np.flatnonzero(pc.equal(ids, value).to_numpy(zero_copy_only=False))[:2]
        raise DataError(
            f"{src.at(int(rows[1]), column)}: duplicate id {value!r} "
            f"(first seen at row {int(rows[0]) + 1}); ids must be unique"
        )


def ingest(raw: RawData, split: SplitConfig | None = None) -> EncodedDataset:
    """Encode raw tables into an :class:`EncodedDataset` (vectorised; no per-row loops).

    Args:
        raw: the raw tables and their schema.
        split: how to split the interactions (default :class:`SplitConfig`).

    Raises:
        DataError: missing columns, wrong types, nulls in required columns, duplicate ids.
    """
    split = split or SplitConfig()
    schema = raw.schema
    ev = _events(raw.interactions, schema, raw.source("interactions"), "interactions")
    given: np.ndarray | None = None
    if raw.test_interactions is not None:
        te = _events(raw.test_interactions, schema, raw.source("test_interactions"), "test")
        given = np.r_[np.zeros(ev.ts.size, bool), np.ones(te.ts.size, bool)]
        ev = _Events(
            _concat_ids(ev.user, te.user),
            _concat_ids(ev.item, te.item),
            np.r_[ev.ts, te.ts],
            np.r_[ev.label, te.label],
        )
    elif split.method == "given":
        raise DataError("split 'given' needs a test interactions file ([files] test_interactions)")

    users_tab, users_src, users_uid = None, raw.source("users"), None
    if raw.users is not None:
        users_tab = raw.users
        require_columns(users_tab, [schema.columns.user_id], users_src, "users")
        users_uid = to_ids(users_tab[schema.columns.user_id], users_src, schema.columns.user_id)
        _check_unique(users_uid, users_src, schema.columns.user_id)
        require_columns(users_tab, [f.source_column for f in schema.fields], users_src, "users")

    user_ids, user_parts = map_ids([ev.user] if users_uid is None else [ev.user, users_uid])
    item_ids, (item,) = map_ids([ev.item])
    n_users, n_items = len(user_ids), len(item_ids)
    user = user_parts[0]

    order = np.argsort(ev.ts, kind="stable")
    user, item, ts, label = user[order], item[order], ev.ts[order], ev.label[order]
    given = None if given is None else given[order]
    split_codes, split_extra = assign_splits(user, item, ts, label, n_items, split, given)
    train = split_codes == int(Split.TRAIN)
    train_users = np.zeros(n_users, dtype=bool)
    train_users[user[train]] = True
    log.info("%d users (%d with TRAIN rows), %d items", n_users, train_users.sum(), n_items)

    fields: list[FieldInfo] = []
    univalent: dict[str, np.ndarray] = {}
    multivalent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    vocabs: dict[str, np.ndarray] = {}
    cont_cols: list[np.ndarray] = []
    extra: dict[str, Any] = {"split": split_extra, "schema": schema.model_dump(mode="json")}

    if users_tab is not None and users_uid is not None:
        row_user = user_parts[1]  # (n_rows,) user index of each table row
        train_rows = np.flatnonzero(train_users[row_user])
        has_row = np.zeros(n_users, dtype=bool)
        has_row[row_user] = True
        extra["users_without_features"] = int(n_users - has_row.sum())
        if extra["users_without_features"]:
            log.warning(
                "%d users are not in the users table; their features are all OOV",
                extra["users_without_features"],
            )
        for f in schema.fields:
            col = users_tab[f.source_column]
            if f.kind == "univalent":
                values = to_string(col, users_src, f.source_column)
                vocab = build_vocab(values.take(pa.array(train_rows)))
                codes = np.zeros(n_users, dtype=np.int64)
                codes[row_user] = encode(values, vocab)
                univalent[f.name] = codes
                vocabs[f.name] = np.asarray(vocab.to_pylist(), dtype=str)
                fields.append(FieldInfo(f.name, "univalent", vocab_size=len(vocab) + 1))
            elif f.kind == "multivalent":
                lists = to_string_lists(col, users_src, f.source_column, f.separator)
                parent, flat = list_elements(lists)
                in_train = train_users[row_user[parent]]
                vocab = build_vocab(flat.filter(pa.array(in_train)))
                multivalent[f.name] = csr_from_pairs(row_user[parent], encode(flat, vocab), n_users)
                vocabs[f.name] = np.asarray(vocab.to_pylist(), dtype=str)
                fields.append(FieldInfo(f.name, "multivalent", vocab_size=len(vocab) + 1))
            else:
                x = np.full(n_users, np.nan)
                vals = to_float(col, users_src, f.source_column)
                x[row_user] = pc.fill_null(vals, np.nan).to_numpy(zero_copy_only=False)
                norm, lo, hi = minmax_normalise(x, np.flatnonzero(train_users & has_row))
                cont_cols.append(norm)
                fields.append(FieldInfo(f.name, "continuous", min=lo, max=hi))
    else:
        extra["users_without_features"] = n_users

    clicks = train & (label > 0)
    for d in schema.derived:
        info, offsets_values, vocab_arr = _derived(
            d, raw, user[clicks], item[clicks], item_ids, n_users
        )
        fields.append(info)
        multivalent[d.name] = offsets_values
        vocabs[d.name] = vocab_arr
        log.info("derived field %s: %d values", d.name, offsets_values[1].size)

    continuous = (
        np.stack(cont_cols, axis=1) if cont_cols else np.zeros((n_users, 0), dtype=np.float32)
    )
    return EncodedDataset(
        name=schema.dataset.name,
        user_ids=np.asarray(user_ids.to_pylist(), dtype=str),
        item_ids=np.asarray(item_ids.to_pylist(), dtype=str),
        fields=fields,
        univalent=univalent,
        multivalent=multivalent,
        continuous=continuous.astype(np.float32),
        interactions=Interactions(user, item, ts, label, split_codes),
        vocabs=vocabs,
        extra=extra,
    )


def _derived(
    d: DerivedSpec,
    raw: RawData,
    cu: np.ndarray,
    ci: np.ndarray,
    item_ids: pa.Array,
    n_users: int,
) -> tuple[FieldInfo, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """A multivalent field from the TRAIN clicks ``(cu, ci)`` (user and item indices).

    The item-ID history holds item index + 1 of each distinct clicked item; an items-table
    field holds the distinct attribute codes over the user's clicked items.
    """
    n_items = len(item_ids)
    if d.is_history:
        csr = csr_from_pairs(cu, ci + 1, n_users, unique=True)
        vocab = np.asarray(item_ids.to_pylist(), dtype=str)
        return FieldInfo(d.name, "multivalent", n_items + 1, item_history=True), csr, vocab
    src, col = raw.source("items"), d.item_column
    if raw.items is None:
        raise DataError(f"derived field {d.name!r} needs an items table (column {col!r})")
    id_col = raw.schema.columns.item_id
    require_columns(raw.items, [id_col, col], src, "items")
    ids = to_ids(raw.items[id_col], src, id_col).cast(pa.string())
    _check_unique(ids, src, id_col)
    row_item = index_of(ids, item_ids)  # (n_rows,) item index, -1 = never interacted
    parent, flat = list_elements(to_string_lists(raw.items[col], src, col, d.separator))
    elem_item = row_item[parent]
    known = elem_item >= 0
    elem_item, flat = elem_item[known], flat.filter(pa.array(known))
    trained = np.bincount(ci, minlength=n_items) > 0
    vocab = build_vocab(flat.filter(pa.array(trained[elem_item])))
    item_off, item_val = csr_from_pairs(elem_item, encode(flat, vocab), n_items, unique=True)
    pair = unique_int(cu * n_items + ci)  # distinct (user, item) clicks
    pu, pi = pair // n_items, pair % n_items
    values, lengths = gather_csr(item_off, item_val, pi)
    csr = csr_from_pairs(np.repeat(pu, lengths), values, n_users, unique=True)
    info = FieldInfo(d.name, "multivalent", vocab_size=len(vocab) + 1)
    return info, csr, np.asarray(vocab.to_pylist(), dtype=str)
