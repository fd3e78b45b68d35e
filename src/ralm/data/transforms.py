"""The one raw-feature transform engine: readers and the FeatureEncoder both run it.

A reader that changes raw values before encoding (MovieLens: gender upper-cased, exact
age -> bucket, zip -> prefix, ML-1M occupation code -> name) describes the change as a
list of ops per field, applies it with :func:`apply_ops` to the users table and records the
ops in ``extra["transforms"]``; :class:`~ralm.data.feature_encoder.FeatureEncoder` replays
the same ops on the raw values of new users with the same function, so ingestion and
serving cannot drift apart.

Ops (each idempotent, so already-transformed values pass unchanged):

- ``{"op": "upper"}``: upper-case.
- ``{"op": "prefix", "n": N}``: first ``N`` characters.
- ``{"op": "bucket", "edges": [...], "labels": [...]}``: a numeric value ``x`` becomes
  ``labels[searchsorted(edges, x, side="right")]`` (``len(labels) == len(edges) + 1``);
  values that are not finite numbers (e.g. an existing label) pass unchanged.
- ``{"op": "map", "values": {raw: new}}``: lookup; other values pass unchanged.

Every op is vectorised over a ``pyarrow`` string array; nulls stay null. Surrounding
whitespace is trimmed first (as ingestion does for every categorical value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralm.errors import ConfigError

Ops = Sequence[Mapping[str, Any]]
OP_NAMES = ("upper", "prefix", "bucket", "map")
# a plain decimal number (what a bucket op accepts); "inf", "nan", "1e5x" are not numbers
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _as_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    return pc.utf8_trim_whitespace(arr.cast(pa.string()))


def _bucket(arr: pa.Array, edges: Sequence[float], labels: Sequence[str]) -> pa.Array:
    if len(labels) != len(edges) + 1:
        raise ConfigError(f"bucket op: {len(labels)} labels for {len(edges)} edges")
    try:  # fast path: every value is a number (nulls -> NaN)
        x = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # some labels or text: parse only the plain decimals
        is_num = pc.fill_null(pc.match_substring_regex(arr, _NUMBER_RE), False)
        mask = is_num.to_numpy(zero_copy_only=False)  # (n,) bool
        if not mask.any():
            return arr
        x = np.full(len(arr), np.nan)
        x[mask] = arr.filter(is_num).cast(pa.float64()).to_numpy(zero_copy_only=False)
    finite = np.isfinite(x)  # "1e999" parses to inf: not bucketed
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.nan_to_num(x), side="right")
    bucketed = pc.take(pa.array([str(v) for v in labels], pa.string()), pa.array(idx, mask=~finite))
    return pc.if_else(pa.array(finite), bucketed, arr)


def _map(arr: pa.Array, values: Mapping[str, Any]) -> pa.Array:
    keys = pa.array([str(k) for k in values], pa.string())
    new = pa.array([str(v) for v in values.values()], pa.string())
    idx = pc.index_in(arr, value_set=keys)
    return pc.if_else(pc.is_null(idx), arr, pc.take(new, pc.fill_null(idx, 0)))


def apply_ops(values: pa.Array | pa.ChunkedArray, ops: Ops) -> pa.Array:
    """Apply ``ops`` (see module docstring) to raw values; returns a string array.

    Args:
        values: raw categorical values (strings or numbers; nulls stay null).
        ops: the field's transforms, in order.

    Raises:
        ConfigError: an unknown op or a malformed op description.
    """
    arr = _as_strings(values)
    for op in ops:
        kind = op.get("op")
        try:
            if kind == "upper":
                arr = pc.utf8_upper(arr)
            elif kind == "prefix":
                arr = pc.utf8_slice_codeunits(arr, 0, int(op["n"]))
            elif kind == "bucket":
                arr = _bucket(arr, op["edges"], [str(x) for x in op["labels"]])
            elif kind == "map":
                arr = _map(arr, op["values"])
            else:
                raise ConfigError(f"unknown transform op {kind!r}; expected one of {OP_NAMES}")
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"malformed transform op {dict(op)!r}: {e}") from e
    return arr


def apply_ops_one(token: str | None, ops: Ops) -> str | None:
    """:func:`apply_ops` on one value (None = missing)."""
    if token is None:
        return None
    out = apply_ops(pa.array([token], pa.string()), ops)[0].as_py()
    return None if out is None else str(out)
