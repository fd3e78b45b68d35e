"""Generic ingestion: CSV/Parquet tables + a :class:`DatasetSchema` -> :class:`EncodedDataset`.

Policy (documented in ``docs/DATA.md``):

- users = every user id of the interactions and of the users table; items = every item
  id of the interactions. Both are numbered in natural order of their raw ids.
- users absent from the users table get all-OOV features (code 0, continuous 0, empty
  bags); the count is logged and stored in ``extra["users_without_features"]``.
- vocabularies and continuous min/max come from TRAIN users (users with a TRAIN row);
  values seen only outside TRAIN encode as OOV.
- derived fields use each user's TRAIN-split clicks (label > 0) only.
- with ``SplitConfig.fold_valid``, "TRAIN" above means TRAIN + VALID (VALID only picks the
  early-stopping epoch; the given train stays whole for features, fit and seeds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ralm.data.encoded import DerivedInfo, EncodedDataset, FieldInfo, Interactions, Split
from ralm.data.features import map_ids
from ralm.data.schema import TABLE_ROLES, DatasetSchema
from ralm.data.splits import SplitConfig, assign_splits
from ralm.data.tables import (
    TableSource,
    check_not_null,
    read_table,
    require_columns,
    to_float,
    to_ids,
    to_timestamp,
)
from ralm.data.user_fields import check_unique_ids, derived_field, encode_user_fields
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
        valid_interactions: optional separate validation events (``given-file`` VALID).
        sources: table role -> :class:`TableSource`, for error messages.
        transforms: field -> raw-value transforms the reader applied (e.g. age -> bucket),
            stored in ``extra["transforms"]`` so that
            :class:`~ralm.data.feature_encoder.FeatureEncoder` applies them to new users.
        time_from_order: the reader made the timestamps up from file order (the data had
            none), so they are no usable time: VALID is then drawn at random (``auto``).
    """

    schema: DatasetSchema
    interactions: pa.Table
    users: pa.Table | None = None
    items: pa.Table | None = None
    test_interactions: pa.Table | None = None
    valid_interactions: pa.Table | None = None
    sources: dict[str, TableSource] = field(default_factory=dict)
    transforms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    time_from_order: bool = False

    def source(self, role: str) -> TableSource:
        return self.sources.get(role, TableSource(f"<{role} table>"))


def load_raw(schema: DatasetSchema) -> RawData:
    """Read the tables a schema names (paths relative to its TOML file)."""
    tables: dict[str, pa.Table] = {}
    sources: dict[str, TableSource] = {}
    for role in TABLE_ROLES:
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
    origin = np.zeros(ev.ts.size, np.int8)  # 0 = interactions, 1 = test file, 2 = valid file
    for code, role, table in (
        (1, "test_interactions", raw.test_interactions),
        (2, "valid_interactions", raw.valid_interactions),
    ):
        if table is None:
            continue
        more = _events(table, schema, raw.source(role), role.split("_")[0])
        origin = np.r_[origin, np.full(more.ts.size, code, np.int8)]
        ev = _Events(
            _concat_ids(ev.user, more.user),
            _concat_ids(ev.item, more.item),
            np.r_[ev.ts, more.ts],
            np.r_[ev.label, more.label],
        )
    if split.method == "given" and raw.test_interactions is None:
        raise DataError("split 'given' needs a test interactions file ([files] test_interactions)")
    if split.valid_from == "given-file" and raw.valid_interactions is None:
        raise DataError(
            "valid_from 'given-file' needs a validation file ([files] valid_interactions)"
        )

    users_tab, users_src, users_uid = None, raw.source("users"), None
    if raw.users is not None:
        users_tab = raw.users
        require_columns(users_tab, [schema.columns.user_id], users_src, "users")
        users_uid = to_ids(users_tab[schema.columns.user_id], users_src, schema.columns.user_id)
        check_unique_ids(users_uid, users_src, schema.columns.user_id)
        require_columns(users_tab, [f.source_column for f in schema.fields], users_src, "users")

    user_ids, user_parts = map_ids([ev.user] if users_uid is None else [ev.user, users_uid])
    item_ids, (item,) = map_ids([ev.item])
    n_users, n_items = len(user_ids), len(item_ids)
    user = user_parts[0]

    order = np.argsort(ev.ts, kind="stable")
    user, item, ts, label = user[order], item[order], ev.ts[order], ev.label[order]
    origin = origin[order]
    split_codes, split_extra = assign_splits(
        user,
        item,
        ts,
        label,
        n_items,
        split,
        given_test=origin == 1 if raw.test_interactions is not None else None,
        given_valid=origin == 2 if raw.valid_interactions is not None else None,
        time_usable=False if raw.time_from_order else None,
    )
    # the rows features are built from: TRAIN, or TRAIN + VALID when VALID is folded back
    fit_codes = [int(Split.TRAIN)] + ([int(Split.VALID)] if split.fold_valid else [])
    train = np.isin(split_codes, fit_codes)
    train_users = np.zeros(n_users, dtype=bool)
    train_users[user[train]] = True
    log.info("%d users (%d with TRAIN rows), %d items", n_users, train_users.sum(), n_items)

    fields: list[FieldInfo] = []
    univalent: dict[str, np.ndarray] = {}
    multivalent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    vocabs: dict[str, np.ndarray] = {}
    continuous = np.zeros((n_users, 0), dtype=np.float32)
    extra: dict[str, Any] = {
        "split": split_extra,
        "schema": schema.model_dump(mode="json"),
        "transforms": raw.transforms,
    }

    if users_tab is not None and users_uid is not None:
        row_user = user_parts[1]  # (n_rows,) user index of each table row
        has_row = np.zeros(n_users, dtype=bool)
        has_row[row_user] = True
        extra["users_without_features"] = int(n_users - has_row.sum())
        if extra["users_without_features"]:
            log.warning(
                "%d users are not in the users table; their features are all OOV",
                extra["users_without_features"],
            )
        fields, univalent, multivalent, vocabs, continuous = encode_user_fields(
            schema.fields, users_tab, users_src, row_user, train_users, n_users
        )
    else:
        extra["users_without_features"] = n_users

    clicks = train & (label > 0)
    derived: dict[str, DerivedInfo] = {}
    for d in schema.derived:
        info, offsets_values, vocab_arr, derived_info = derived_field(
            d,
            raw.items,
            raw.source("items"),
            schema.columns.item_id,
            user[clicks],
            item[clicks],
            item_ids,
            n_users,
        )
        fields.append(info)
        multivalent[d.name] = offsets_values
        vocabs[d.name] = vocab_arr
        if derived_info is not None:
            derived[d.name] = derived_info
        log.info("derived field %s: %d values", d.name, offsets_values[1].size)

    return EncodedDataset(
        name=schema.dataset.name,
        user_ids=np.asarray(user_ids.to_pylist(), dtype=str),
        item_ids=np.asarray(item_ids.to_pylist(), dtype=str),
        fields=fields,
        univalent=univalent,
        multivalent=multivalent,
        continuous=continuous,
        interactions=Interactions(user, item, ts, label, split_codes),
        vocabs=vocabs,
        extra=extra,
        derived=derived,
    )
