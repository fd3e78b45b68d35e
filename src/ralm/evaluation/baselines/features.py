"""Sparse user-feature vectors shared by the LR and Yahoo baselines.

Every categorical value of every field gets one column (code 0 = OOV keeps its own
column); multivalent fields are averaged (each value weighs 1/len, as the user tower's mean
pooling); continuous fields are one column each (``mode="linear"``) or, for token-based
models, one-hot over equal-width buckets (``mode="tokens"``). Built from the encoded arrays
with :func:`ralm.data.batching.gather_csr`, vectorised, no per-row Python loop.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from ralm.data.batching import exclude_targets, gather_csr
from ralm.data.encoded import EncodedDataset


class FeatureSpace:
    """Column layout of the sparse user-feature matrix of a dataset.

    Args:
        ds: the encoded dataset.
        mode: ``"linear"`` (multivalent averaged, continuous raw) or ``"tokens"``
            (binary columns, continuous bucketed).
        n_buckets: buckets per continuous field in ``"tokens"`` mode.
    """

    def __init__(
        self, ds: EncodedDataset, mode: Literal["linear", "tokens"] = "linear", n_buckets: int = 5
    ) -> None:
        self.ds = ds
        self.mode = mode
        self.n_buckets = n_buckets
        self.offsets: dict[str, int] = {}
        self.field_of_column: list[int] = []  # field position of each column
        col = 0
        for pos, f in enumerate(ds.fields):
            if f.kind == "continuous":
                continue
            self.offsets[f.name] = col
            col += f.vocab_size
            self.field_of_column += [pos] * f.vocab_size
        self.cont_offset = col
        n_cont = ds.continuous.shape[1]
        width = 1 if mode == "linear" else n_buckets
        for f in ds.continuous_fields:
            self.field_of_column += [ds.fields.index(f)] * width
        self.n_columns = col + n_cont * width

    def matrix(self, users: np.ndarray, exclude_items: np.ndarray | None = None) -> sp.csr_matrix:
        """Feature rows of ``users`` (B,), float32 CSR (B, n_columns).

        ``exclude_items[r]`` (item index, -1 = none) is removed from row r's item-history
        field: the no-target-in-history guarantee for training examples.
        """
        rows, cols, vals = self.coo(users, exclude_items)
        m = sp.csr_matrix(
            (vals, (rows, cols)), shape=(len(users), self.n_columns), dtype=np.float32
        )
        m.sum_duplicates()
        if self.mode == "tokens":
            m.data[:] = 1.0  # a value listed twice is still one token
        return m

    def coo(
        self, users: np.ndarray, exclude_items: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unsorted (rows, cols, values) triplets of :meth:`matrix` (duplicates not summed)."""
        ds = self.ds
        users = np.asarray(users, dtype=np.int64)
        b = users.shape[0]
        rows, cols, vals = [], [], []
        for name, codes in ds.univalent.items():
            rows.append(np.arange(b))
            cols.append(self.offsets[name] + np.asarray(codes[users], dtype=np.int64))
            vals.append(np.ones(b, dtype=np.float32))
        for name, (offsets, values) in ds.multivalent.items():
            v, lengths = gather_csr(offsets, values, users)
            if exclude_items is not None and name == ds.history_field:
                v, lengths = exclude_targets(v, lengths, np.asarray(exclude_items) + 1)
            r = np.repeat(np.arange(b), lengths)
            w = 1.0 if self.mode == "tokens" else 1.0 / np.maximum(lengths, 1)[r]
            rows.append(r)
            cols.append(self.offsets[name] + v)
            vals.append(np.broadcast_to(np.asarray(w, dtype=np.float32), r.shape))
        cont = np.asarray(ds.continuous[users], dtype=np.float32)  # (B, n_cont)
        for j in range(cont.shape[1]):
            rows.append(np.arange(b))
            if self.mode == "linear":
                cols.append(np.full(b, self.cont_offset + j))
                vals.append(cont[:, j])
            else:
                bucket = np.minimum(
                    (cont[:, j] * self.n_buckets).astype(np.int64), self.n_buckets - 1
                )
                cols.append(self.cont_offset + j * self.n_buckets + bucket)
                vals.append(np.ones(b, dtype=np.float32))
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
