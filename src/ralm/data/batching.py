"""Vectorised construction of user-feature batches from the encoded arrays.

A :class:`UserBatch` is what the user tower (stage 1) consumes. It is built from
array slices only (no per-row Python objects): multivalent fields are CSR arrays,
and a batch of them is gathered with one ``np.repeat``/``cumsum`` pass into the
``(values, offsets)`` form that :class:`torch.nn.EmbeddingBag` takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ralm.common.keys import contains
from ralm.data.encoded import EncodedDataset

log = logging.getLogger(__name__)


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


def exclude_derived(
    values: np.ndarray,
    lengths: np.ndarray,
    counts: np.ndarray,
    item_offsets: np.ndarray,
    item_values: np.ndarray,
    targets: np.ndarray,
    width: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop from each row the attribute codes whose only source is that row's target item.

    Args:
        values: int64 (nnz,) gathered codes of an item-attribute field (rows concatenated).
        lengths: int64 (B,) row lengths.
        counts: int64 (nnz,) parallel to ``values``: distinct history items carrying the code.
        item_offsets, item_values: the field's item -> codes CSR.
        targets: int64 (B,) target item index per row (-1 = exclude nothing).
        width: the field's vocabulary size (raised to the largest code + 1 if needed).

    A code with ``count == 1`` that the target carries came from the target alone and is
    removed; codes with ``count > 1`` stay (another history item provides them).
    """
    targets = np.asarray(targets, dtype=np.int64)
    has = targets >= 0
    t_codes, t_len = gather_csr(item_offsets, item_values, np.where(has, targets, 0))
    t_row = np.repeat(np.arange(targets.shape[0]), t_len)
    t_keep = has[t_row]
    width = max(width, int(values.max(initial=0)) + 1, int(t_codes.max(initial=0)) + 1)
    t_key = np.sort(t_row[t_keep] * width + t_codes[t_keep])  # (row, code) of the targets
    row_of = np.repeat(np.arange(lengths.shape[0]), lengths)
    single = np.flatnonzero(np.asarray(counts) == 1)  # only these can be dropped
    if single.size == 0 or t_key.size == 0:
        return values, lengths
    q = row_of[single] * width + values[single]
    drop = single[contains(t_key, q)]  # sorted membership (np.isin hashes: ~10x slower)
    if drop.size == 0:
        return values, lengths
    keep = np.ones(values.shape[0], dtype=bool)
    keep[drop] = False
    new_lengths = np.bincount(row_of[keep], minlength=lengths.shape[0]).astype(np.int64)
    return values[keep], new_lengths


_warned: set[tuple[str, str]] = set()


def _warn_no_exclusion_info(ds: EncodedDataset, name: str) -> None:
    if (ds.name, name) not in _warned:
        _warned.add((ds.name, name))
        log.warning(
            "dataset %r: field %r is derived from clicked items but has no exclusion info "
            "(written by an older `ralm data prepare`); training targets' %s codes stay in "
            "the bag. Re-run `ralm data prepare` to remove this leak.",
            ds.name,
            name,
            name,
        )


def gather_users(
    ds: EncodedDataset,
    users: np.ndarray,
    exclude_items: np.ndarray | None = None,
) -> UserBatch:
    """Build the feature batch of ``users`` (int (B,) user indices).

    Args:
        ds: the encoded dataset.
        users: user indices, one row per example (repeats allowed).
        exclude_items: optional int (B,) item index per row to remove (-1 = none). Used
            for every training example whose target item is a click of that user: the
            item is removed from the item-history field, and from every item-attribute
            field (``derived_from_items``) the codes whose only source in the user's
            history is that item. When the dataset has an item-history field, the
            attribute exclusion applies only to rows whose target is in that history.
    """
    users = np.asarray(users, dtype=np.int64)
    uni = {
        name: torch.from_numpy(np.asarray(codes[users], dtype=np.int64))
        for name, codes in ds.univalent.items()
    }
    hist = ds.history_field
    targets = None if exclude_items is None else np.asarray(exclude_items, np.int64)
    derived_targets = targets
    infos = {f.name: f for f in ds.fields}
    gathered: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if targets is not None and hist is not None and ds.derived:
        # attribute codes are only the target's when the target is in the TRAIN history
        h_off, h_vals = ds.multivalent[hist]
        hv, hl = gathered[hist] = gather_csr(h_off, h_vals, users)
        h_row = np.repeat(np.arange(users.shape[0]), hl)
        hit = h_row[hv == targets[h_row] + 1]
        in_hist = np.bincount(hit, minlength=users.shape[0]) > 0
        derived_targets = np.where(in_hist, targets, -1)
    multi: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (offsets, vals) in ds.multivalent.items():
        v, lengths = gathered[name] if name in gathered else gather_csr(offsets, vals, users)
        if targets is not None and name == hist:
            v, lengths = exclude_targets(v, lengths, targets + 1)
        elif derived_targets is not None and name in ds.derived:
            d = ds.derived[name]
            counts, _ = gather_csr(offsets, d.counts, users)
            width = infos[name].vocab_size if name in infos else 0
            v, lengths = exclude_derived(
                v, lengths, counts, d.item_offsets, d.item_values, derived_targets, width
            )
        elif targets is not None and name in infos and infos[name].derived_from_items:
            _warn_no_exclusion_info(ds, name)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        multi[name] = (torch.from_numpy(v), torch.from_numpy(np.asarray(off, dtype=np.int64)))
    cont = torch.from_numpy(np.ascontiguousarray(ds.continuous[users], dtype=np.float32))
    return UserBatch(univalent=uni, multivalent=multi, continuous=cont)
