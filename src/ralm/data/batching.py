"""Vectorised construction of user-feature batches from the encoded arrays.

A :class:`UserBatch` is what the user tower (stage 1) consumes. It is built from
array slices only (no per-row Python objects): multivalent fields are CSR arrays,
and a batch of them is gathered with one ``np.repeat``/``cumsum`` pass into the
``(values, offsets)`` form that :class:`torch.nn.EmbeddingBag` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ralm.data.encoded import EncodedDataset


@dataclass
class UserBatch:
    """Features of B users, ready for the user tower.

    Attributes:
        univalent: field -> int64 (B,) codes (0 = OOV).
        multivalent: field -> (values int64 (nnz,), offsets int64 (B,)) EmbeddingBag input.
        continuous: float32 (B, n_continuous) in [0, 1].
    """

    univalent: dict[str, torch.Tensor]
    multivalent: dict[str, tuple[torch.Tensor, torch.Tensor]]
    continuous: torch.Tensor

    def __len__(self) -> int:
        return int(self.continuous.shape[0])

    def to(self, device: torch.device | str) -> UserBatch:
        return UserBatch(
            univalent={k: v.to(device) for k, v in self.univalent.items()},
            multivalent={k: (v.to(device), o.to(device)) for k, (v, o) in self.multivalent.items()},
            continuous=self.continuous.to(device),
        )


def gather_csr(
    offsets: np.ndarray, values: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gather CSR rows. Returns (values (nnz,), lengths (B,)) for ``rows`` in order."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(offsets[rows], dtype=np.int64)
    lengths = np.asarray(offsets[rows + 1], dtype=np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), lengths
    # position of each output element inside its row, then shift by the row start
    row_first = np.cumsum(lengths) - lengths  # (B,) output offset of each row
    within = np.arange(total, dtype=np.int64) - np.repeat(row_first, lengths)
    src = np.repeat(starts, lengths) + within
    return np.asarray(values[src], dtype=np.int64), lengths


def exclude_targets(
    values: np.ndarray, lengths: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop from each row every value equal to that row's target code.

    ``targets`` holds one code per row (item index + 1 for an item-history field;
    -1 or 0 means "exclude nothing"). This is the leakage guard: a training example's
    target item never appears in its own history input.
    """
    row_of = np.repeat(np.arange(lengths.shape[0]), lengths)
    keep = values != np.asarray(targets, dtype=np.int64)[row_of]
    new_lengths = np.bincount(row_of[keep], minlength=lengths.shape[0]).astype(np.int64)
    return values[keep], new_lengths


def gather_users(
    ds: EncodedDataset,
    users: np.ndarray,
    exclude_items: np.ndarray | None = None,
) -> UserBatch:
    """Build the feature batch of ``users`` (int (B,) user indices).

    Args:
        ds: the encoded dataset.
        users: user indices, one row per example (repeats allowed).
        exclude_items: optional int (B,) item index per row to remove from the
            item-history field (-1 = none). Used for every training example whose
            target item is a click of that user.
    """
    users = np.asarray(users, dtype=np.int64)
    uni = {
        name: torch.from_numpy(np.asarray(codes[users], dtype=np.int64))
        for name, codes in ds.univalent.items()
    }
    hist = ds.history_field
    multi: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (offsets, vals) in ds.multivalent.items():
        v, lengths = gather_csr(offsets, vals, users)
        if exclude_items is not None and name == hist:
            v, lengths = exclude_targets(v, lengths, np.asarray(exclude_items, np.int64) + 1)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        multi[name] = (torch.from_numpy(v), torch.from_numpy(np.asarray(off, dtype=np.int64)))
    cont = torch.from_numpy(np.ascontiguousarray(ds.continuous[users], dtype=np.float32))
    return UserBatch(univalent=uni, multivalent=multi, continuous=cont)
