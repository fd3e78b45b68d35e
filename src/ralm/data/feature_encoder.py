"""Raw feature values of NEW users -> a :class:`UserBatch` (the path the service uses).

A record maps field names to raw values, as stored in the vocabularies of the encoded
dataset: a scalar for a univalent field, a list for a multivalent one (raw item ids for the
item-history field), a number for a continuous one. Unknown values encode as 0 (OOV),
missing fields as OOV / empty bag / 0; unknown field names and wrong types raise
:class:`~ralm.errors.DataError` naming the record and the field.

Example::

    enc = FeatureEncoder.from_dataset(ds)
    batch = enc.batch([{"gender": "F", "age": "25-34", "history": ["50", "181"]}])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ralm.data.batching import UserBatch
from ralm.data.encoded import EncodedDataset, FieldInfo
from ralm.data.features import minmax_scale
from ralm.data.transforms import apply_ops, apply_ops_one
from ralm.errors import DataError


def _as_token(value: Any, where: str) -> str | None:
    """A categorical raw value as the string the vocabulary holds (None = missing)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral, float)):
        raise DataError(f"{where}: expected a string or integer, got {type(value).__name__}")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not value.is_integer():  # also inf: the string "inf", an unknown value (OOV)
            return str(value)
        value = int(value)
    try:
        return str(value).strip() or None
    except ValueError as e:  # an integer beyond Python's str() digit limit
        raise DataError(f"{where}: integer with too many digits") from e


def apply_transforms(token: str | None, ops: Sequence[Mapping[str, Any]]) -> str | None:
    """Replay a reader's raw-value transforms on one categorical value.

    The ops and their engine are :mod:`ralm.data.transforms` (the same code the readers
    ran at ingestion); :meth:`FeatureEncoder.batch` applies them to a whole column at once.
    """
    return apply_ops_one(token, ops)


class FeatureEncoder:
    """Encode raw user features with the vocabularies and statistics of a dataset.

    Args:
        fields: the dataset's field infos, in model order.
        vocabs: field name -> raw values (code = position + 1).
        item_ids: raw item ids (the item-history field's vocabulary).
        transforms: field -> raw-value transforms (see :func:`apply_transforms`).
    """

    def __init__(
        self,
        fields: Sequence[FieldInfo],
        vocabs: Mapping[str, np.ndarray],
        item_ids: np.ndarray,
        transforms: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.fields = list(fields)
        self.transforms = {k: list(v) for k, v in (transforms or {}).items()}
        self._by_name = {f.name: f for f in self.fields}
        self._vocab: dict[str, pa.Array] = {}
        self._code: dict[str, dict[str, int]] = {}  # raw value -> code (hash lookup per call)
        for f in self.fields:
            if f.kind == "continuous":
                continue
            raw = item_ids if f.item_history else vocabs.get(f.name)
            if raw is None:
                raise DataError(f"field {f.name!r}: the dataset has no vocabulary for it")
            values = np.asarray(raw).astype(str).tolist()
            self._vocab[f.name] = pa.array(values, pa.string())
            self._code[f.name] = {v: c for c, v in enumerate(values, start=1)}

    @classmethod
    def from_dataset(cls, ds: EncodedDataset) -> FeatureEncoder:
        """Vocabularies and min/max statistics taken from an encoded dataset."""
        return cls(ds.fields, ds.vocabs, ds.item_ids, ds.extra.get("transforms"))

    def _check(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise DataError(f"record {r}: expected a mapping of field -> value")
            unknown = sorted(set(rec) - set(self._by_name))
            if unknown:
                raise DataError(
                    f"record {r}: unknown field(s) {unknown}; known: {sorted(self._by_name)}"
                )

    def _tokens(self, records: Sequence[Mapping[str, Any]], f: FieldInfo) -> list[list[str]]:
        out: list[list[str]] = []
        for r, rec in enumerate(records):
            v = rec.get(f.name)
            where = f"record {r}, field {f.name!r}"
            if v is None:
                out.append([])
            elif isinstance(v, (list, tuple, np.ndarray)):
                toks = (_as_token(x, where) for x in v)
                out.append([t for t in toks if t is not None])
            else:
                raise DataError(f"{where}: multivalent field needs a list, got {v!r}")
        return out

    def _number(self, rec: Mapping[str, Any], f: FieldInfo, r: int) -> float:
        v = rec.get(f.name)
        if v is None:
            return 0.0
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise DataError(f"record {r}, field {f.name!r}: expected a number, got {v!r}")
        try:
            x = float(v)
        except OverflowError:  # e.g. a 400-digit integer
            x = math.inf
        if not math.isfinite(x):
            raise DataError(f"record {r}, field {f.name!r}: {v!r} is not a finite number")
        if f.min is None or f.max is None:
            return 0.0
        return float(minmax_scale(np.array([x]), f.min, f.max)[0])

    def _encode(self, name: str, values: pa.Array) -> np.ndarray:
        """Codes of raw values (0 = unknown / missing), int64 like :func:`features.encode`."""
        code = self._code[name]
        return np.fromiter(
            (code.get(v, 0) for v in values.to_pylist()), dtype=np.int64, count=len(values)
        )

    def _ops(self, name: str, values: pa.Array) -> pa.Array:
        ops = self.transforms.get(name)
        return apply_ops(values, ops) if ops else values

    def batch(self, records: Sequence[Mapping[str, Any]]) -> UserBatch:
        """Encode ``records`` (one per user) into a :class:`UserBatch`.

        Raises:
            DataError: unknown field name or a value of the wrong type.
        """
        self._check(records)
        n = len(records)
        uni: dict[str, torch.Tensor] = {}
        multi: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        cont_cols: list[list[float]] = []
        for f in self.fields:
            if f.kind == "univalent":
                toks = [
                    _as_token(rec.get(f.name), f"record {r}, field {f.name!r}")
                    for r, rec in enumerate(records)
                ]
                raw = self._ops(f.name, pa.array(toks, pa.string()))
                codes = self._encode(f.name, raw)
                uni[f.name] = torch.from_numpy(codes)  # (B,)
            elif f.kind == "multivalent":
                bags = self._tokens(records, f)
                lengths = np.array([len(b) for b in bags], dtype=np.int64)
                flat = self._ops(f.name, pa.array([t for b in bags for t in b], pa.string()))
                values = self._encode(f.name, flat)  # (nnz,)
                offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else lengths
                multi[f.name] = (
                    torch.from_numpy(values),
                    torch.from_numpy(offsets.astype(np.int64)),
                )
            else:
                cont_cols.append([self._number(rec, f, r) for r, rec in enumerate(records)])
        cont = np.asarray(cont_cols, dtype=np.float32).T.reshape(n, len(cont_cols))  # (B, n_cont)
        return UserBatch(univalent=uni, multivalent=multi, continuous=torch.from_numpy(cont))

    def decode_user(self, ds: EncodedDataset, user: int) -> dict[str, Any]:
        """Raw feature record of a stored user (inverse of :meth:`batch`, OOV dropped).

        Continuous values are returned de-normalised (``min + x * (max - min)``).
        """
        rec: dict[str, Any] = {}
        ci = 0
        for f in self.fields:
            vocab = self._vocab.get(f.name)
            if f.kind == "univalent":
                code = int(ds.univalent[f.name][user])
                rec[f.name] = None if code == 0 or vocab is None else vocab[code - 1].as_py()
            elif f.kind == "multivalent":
                off, val = ds.multivalent[f.name]
                codes = np.asarray(val[off[user] : off[user + 1]])
                rec[f.name] = [vocab[int(c) - 1].as_py() for c in codes if c > 0] if vocab else []
            else:
                x = float(ds.continuous[user, ci])
                ci += 1
                lo, hi = f.min, f.max
                rec[f.name] = None if lo is None or hi is None else lo + x * (hi - lo)
        return rec
