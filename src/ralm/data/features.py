"""Vectorised building blocks of encoding: id maps, vocabularies, codes and CSR bags.

Conventions (see :mod:`ralm.data.encoded`): categorical code 0 is OOV/missing and a
vocabulary array ``vocab`` gives the raw value of code ``c`` as ``vocab[c - 1]``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def sorted_unique_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Distinct non-null strings, in natural order (numerically when all are integers)."""
    uniq = pc.unique(values)
    uniq = pc.drop_null(uniq)
    if isinstance(uniq, pa.ChunkedArray):
        uniq = uniq.combine_chunks()
    if len(uniq) == 0:
        return uniq
    numeric = pc.match_substring_regex(uniq, r"^\d{1,18}$")
    if pc.all(numeric).as_py():  # by value, then "01" before "1"
        keys = pa.table({"n": uniq.cast(pa.int64()), "s": uniq})
        order = pc.sort_indices(keys, sort_keys=[("n", "ascending"), ("s", "ascending")])
        return uniq.take(order)
    return uniq.take(pc.sort_indices(uniq))


def unique_int(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (sort + mask; faster than ``np.unique`` here)."""
    s = np.sort(np.asarray(x, dtype=np.int64))
    if s.size == 0:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def map_ids(parts: list[pa.Array]) -> tuple[pa.Array, list[np.ndarray]]:
    """Distinct ids over ``parts`` (natural order, as strings) and each part's int64 codes.

    All-integer parts take a numpy fast path (sort + searchsorted, no strings per row).
    """
    if all(pa.types.is_integer(p.type) for p in parts):
        nums = [p.to_numpy(zero_copy_only=False).astype(np.int64) for p in parts]
        uniq, inverse = unique_inverse_int(np.concatenate(nums))
        bounds = np.cumsum([0, *(x.size for x in nums)])
        codes = [inverse[a:b] for a, b in itertools.pairwise(bounds)]
        return pa.array(uniq.astype(str)), codes
    strs = [p if pa.types.is_string(p.type) else p.cast(pa.string()) for p in parts]
    ids = sorted_unique_ids(pa.chunked_array(strs, pa.string()))
    return ids, [index_of(x, ids) for x in strs]


def unique_inverse_int(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)`` for int64, fast for ids.

    Dense ids (range <= 4 x size) use a lookup table (O(n)); others one argsort.
    """
    x = np.asarray(x, dtype=np.int64)
    if x.size == 0:
        return x, x.copy()
    lo, hi = int(x.min()), int(x.max())
    if hi - lo <= 4 * x.size:
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[x - lo] = True
        uniq = np.flatnonzero(present) + lo
        lut = np.cumsum(present) - 1  # (range,) code of each present id
        return uniq.astype(np.int64), lut[x - lo].astype(np.int64)
    order = np.argsort(x, kind="stable")
    s = x[order]
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    inverse = np.empty(x.size, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return s[new], inverse


def build_vocab(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Vocabulary of a categorical field: distinct non-empty strings, sorted."""
    v = pc.drop_null(values)
    v = pc.filter(v, pc.not_equal(v, ""))
    return sorted_unique_ids(v)


def encode(values: pa.Array | pa.ChunkedArray, vocab: pa.Array) -> np.ndarray:
    """Codes of ``values`` against ``vocab``: position + 1, and 0 for unknown/missing."""
    idx = pc.index_in(values, value_set=vocab)
    return pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def index_of(values: pa.Array | pa.ChunkedArray, ids: pa.Array) -> np.ndarray:
    """0-based position of each value in ``ids`` (-1 when absent), int64 (n,)."""
    idx = pc.index_in(values, value_set=ids)
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def csr_from_pairs(
    rows: np.ndarray, values: np.ndarray, n_rows: int, unique: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(offsets (n_rows+1,), values (nnz,))`` from (row, value) pairs.

    Pairs keep their given order inside a row (stable sort by row). With ``unique``,
    repeated (row, value) pairs are kept once and values are sorted inside each row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if unique and rows.size:
        width = int(values.max()) + 1
        key = unique_int(rows * width + values)  # sorted by (row, value)
        rows, values = key // width, key % width
    else:
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], values[order]
    counts = np.bincount(rows, minlength=n_rows)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, values


def csr_distinct_counts(
    rows: np.ndarray, values: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, value) pairs as CSR, with how often each pair occurs.

    Returns ``(offsets (n_rows+1,), values (nnz,), counts (nnz,))`` int64; offsets and
    values equal ``csr_from_pairs(rows, values, n_rows, unique=True)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    width = int(values.max()) + 1 if values.size else 1
    s = np.sort(rows * width + values)
    first = np.empty(s.size, dtype=bool)
    if s.size:
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    key = s[starts]
    counts = np.diff(np.append(starts, s.size)).astype(np.int64)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // width, minlength=n_rows), out=offsets[1:])
    return offsets, key % width, counts


def item_codes_csr(
    item: np.ndarray, codes: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Item -> distinct non-OOV codes CSR (``codes == 0`` dropped), values sorted per item."""
    item = np.asarray(item, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    known = codes > 0
    offsets, values, _ = csr_distinct_counts(item[known], codes[known], n_items)
    return offsets, values


def list_elements(lists: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Flatten a list array: (parent row int64 (nnz,), values) without null/empty values."""
    parents = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
    flat = pc.list_flatten(lists)
    keep = pc.fill_null(pc.not_equal(flat, ""), False)
    keep_np = keep.to_numpy(zero_copy_only=False)
    return parents[keep_np], pc.filter(flat, keep)


def minmax_scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip((x - lo) / (hi - lo), 0, 1)`` as float64, without overflow for any finite input.

    Halving first keeps ``x - lo`` and ``hi - lo`` finite even for values near the float64
    limits (``1e308 - -1e308`` would overflow to inf and give NaN); ``hi == lo`` maps to 0.
    """
    span = hi / 2 - lo / 2
    scale = span if span > 0 else 0.5
    with np.errstate(over="ignore"):  # a tiny span can overflow to +-inf: clipped to 0 / 1
        return np.clip((np.asarray(x, np.float64) / 2 - lo / 2) / scale, 0.0, 1.0)


def minmax_normalise(
    x: np.ndarray, stat_rows: np.ndarray
) -> tuple[np.ndarray, float | None, float | None]:
    """Min-max normalise ``x`` (float64, NaN = missing) with stats over ``stat_rows``.

    Returns ``(normalised float32 in [0, 1], min, max)``. Missing values map to the
    minimum, i.e. 0. If the stat rows have no value, all rows are used; if there is
    no value at all, min = max = None and the column is all zeros.

    Raises:
        ValueError: ``x`` holds +-inf (ingestion rejects non-finite values before this;
            the stored range is always finite).
    """
    if np.isinf(x).any():
        raise ValueError("minmax_normalise: x holds non-finite values")
    ref = x[stat_rows]
    ref = ref[~np.isnan(ref)]
    if ref.size == 0:
        ref = x[~np.isnan(x)]
    if ref.size == 0:
        return np.zeros(x.shape[0], dtype=np.float32), None, None
    lo, hi = float(ref.min()), float(ref.max())
    out = minmax_scale(np.nan_to_num(x, nan=lo), lo, hi)
    return out.astype(np.float32), lo, hi
