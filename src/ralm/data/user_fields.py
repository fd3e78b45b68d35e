"""Encoding of user fields: users-table fields and fields derived from TRAIN clicks.

Used by :func:`ralm.data.ingest.ingest`; everything is vectorised over the table rows.
Vocabularies and continuous statistics come from TRAIN users only (see ``docs/DATA.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralm.data.batching import gather_csr
from ralm.data.encoded import DerivedInfo, FieldInfo
from ralm.data.features import (
    build_vocab,
    csr_distinct_counts,
    csr_from_pairs,
    encode,
    index_of,
    item_codes_csr,
    list_elements,
    minmax_normalise,
    unique_int,
)
from ralm.data.schema import DerivedSpec, FieldSpec
from ralm.data.tables import (
    TableSource,
    require_columns,
    to_float,
    to_ids,
    to_string,
    to_string_lists,
)
from ralm.errors import DataError

CSR = tuple[np.ndarray, np.ndarray]  # (offsets (n+1,), values (nnz,))


def check_unique_ids(ids: pa.Array, src: TableSource, column: str) -> None:
    """Raise :class:`DataError` naming the rows of the first duplicated id."""
    counts = pc.value_counts(ids)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        value = dup[0]["values"].as_py()
        rows = np.flatnonzero(pc.equal(ids, value).to_numpy(zero_copy_only=False))[:2]
        raise DataError(
            f"{src.at(int(rows[1]), column)}: duplicate id {value!r} "
            f"(first seen at row {int(rows[0]) + 1}); ids must be unique"
        )


def _vocab_array(vocab: pa.Array) -> np.ndarray:
    return np.asarray(vocab.to_pylist(), dtype=str)


def encode_user_fields(
    specs: Sequence[FieldSpec],
    table: pa.Table,
    src: TableSource,
    row_user: np.ndarray,
    train_users: np.ndarray,
    n_users: int,
) -> tuple[
    list[FieldInfo], dict[str, np.ndarray], dict[str, CSR], dict[str, np.ndarray], np.ndarray
]:
    """Encode the users-table fields.

    Args:
        specs: the schema's ``[[fields]]``.
        table: the users table.
        src: its source (error messages).
        row_user: int64 (n_rows,) user index of each table row.
        train_users: bool (n_users,) users with a TRAIN row (vocab / statistics).
        n_users: number of users; users without a table row get OOV / 0.

    Returns:
        ``(fields, univalent, multivalent, vocabs, continuous (n_users, n_cont) float32)``.
    """
    fields: list[FieldInfo] = []
    univalent: dict[str, np.ndarray] = {}
    multivalent: dict[str, CSR] = {}
    vocabs: dict[str, np.ndarray] = {}
    cont_cols: list[np.ndarray] = []
    train_rows = np.flatnonzero(train_users[row_user])
    for f in specs:
        col = table[f.source_column]
        if f.kind == "univalent":
            values = to_string(col, src, f.source_column)
            vocab = build_vocab(values.take(pa.array(train_rows)))
            codes = np.zeros(n_users, dtype=np.int64)
            codes[row_user] = encode(values, vocab)  # (n_rows,) -> user order
            univalent[f.name] = codes
            vocabs[f.name] = _vocab_array(vocab)
            fields.append(FieldInfo(f.name, "univalent", vocab_size=len(vocab) + 1))
        elif f.kind == "multivalent":
            lists = to_string_lists(col, src, f.source_column, f.separator)
            parent, flat = list_elements(lists)  # (nnz,) table row of each value
            vocab = build_vocab(flat.filter(pa.array(train_users[row_user[parent]])))
            multivalent[f.name] = csr_from_pairs(row_user[parent], encode(flat, vocab), n_users)
            vocabs[f.name] = _vocab_array(vocab)
            fields.append(FieldInfo(f.name, "multivalent", vocab_size=len(vocab) + 1))
        else:
            x = np.full(n_users, np.nan)  # users without a row: missing -> 0
            vals = to_float(col, src, f.source_column, f.non_finite)
            x[row_user] = pc.fill_null(vals, np.nan).to_numpy(zero_copy_only=False)
            norm, lo, hi = minmax_normalise(x, row_user[train_rows])
            cont_cols.append(norm)
            fields.append(FieldInfo(f.name, "continuous", min=lo, max=hi))
    continuous = (
        np.stack(cont_cols, axis=1) if cont_cols else np.zeros((n_users, 0), dtype=np.float32)
    )
    return fields, univalent, multivalent, vocabs, continuous.astype(np.float32)


def derived_field(
    d: DerivedSpec,
    items: pa.Table | None,
    src: TableSource,
    id_col: str,
    cu: np.ndarray,
    ci: np.ndarray,
    item_ids: pa.Array,
    n_users: int,
) -> tuple[FieldInfo, CSR, np.ndarray, DerivedInfo | None]:
    """A multivalent field from the TRAIN clicks ``(cu, ci)`` (user and item indices).

    The item-ID history holds item index + 1 of each distinct clicked item; an items-table
    field holds the distinct attribute codes over the user's clicked items (vocabulary:
    the attribute values of items with a TRAIN click), flagged ``derived_from_items``.

    Returns:
        ``(info, (offsets, values), vocab, derived)``; ``derived`` (``None`` for the
        item-ID history) holds the number of distinct clicked items behind each code and
        the item -> codes CSR, which target exclusion needs.
    """
    n_items = len(item_ids)
    if d.is_history:
        csr = csr_from_pairs(cu, ci + 1, n_users, unique=True)
        info = FieldInfo(d.name, "multivalent", n_items + 1, item_history=True)
        return info, csr, _vocab_array(item_ids), None
    col = d.item_column
    if items is None:
        raise DataError(f"derived field {d.name!r} needs an items table (column {col!r})")
    require_columns(items, [id_col, col], src, "items")
    ids = to_ids(items[id_col], src, id_col).cast(pa.string())
    check_unique_ids(ids, src, id_col)
    row_item = index_of(ids, item_ids)  # (n_rows,) item index, -1 = never interacted
    parent, flat = list_elements(to_string_lists(items[col], src, col, d.separator))
    elem_item = row_item[parent]
    known = elem_item >= 0
    elem_item, flat = elem_item[known], flat.filter(pa.array(known))
    trained = np.bincount(ci, minlength=n_items) > 0
    vocab = build_vocab(flat.filter(pa.array(trained[elem_item])))
    item_off, item_val = item_codes_csr(elem_item, encode(flat, vocab), n_items)
    pair = unique_int(cu * n_items + ci)  # distinct (user, item) clicks
    pu, pi = pair // n_items, pair % n_items
    values, lengths = gather_csr(item_off, item_val, pi)  # clicked items have no OOV code
    offsets, values, counts = csr_distinct_counts(np.repeat(pu, lengths), values, n_users)
    info = FieldInfo(d.name, "multivalent", vocab_size=len(vocab) + 1, derived_from_items=True)
    derived = DerivedInfo(counts=counts, item_offsets=item_off, item_values=item_val)
    return info, (offsets, values), _vocab_array(vocab), derived
