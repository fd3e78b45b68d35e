"""Clicks of a set of splits, and the item -> seed users CSR: written once, used everywhere.

A *click* is an interaction row with ``label > 0`` (rows with label 0 are explicit
non-clicks). Stage 1 trains on the clicks of TRAIN, stage 2 takes an item's *seeds* (its
distinct clickers) from TRAIN (warm) or TRAIN + COLD_SEED (cold items), the evaluation
excludes and ranks by the same rule. Every caller goes through these functions.

``fit_splits(ds)`` says which splits the final fit and the seeds may use: ``(TRAIN,)``, or
``(TRAIN, VALID)`` when the dataset was prepared with ``SplitConfig.fold_valid`` (VALID
drawn for early stopping, then folded back so the given train stays whole).
"""

from __future__ import annotations

import numpy as np

from ralm.common.keys import pair_keys
from ralm.data.encoded import EncodedDataset, Interactions, Split
from ralm.data.features import csr_from_pairs


def click_rows(inter: Interactions, splits: tuple[Split, ...]) -> np.ndarray:
    """Bool (n,) mask of the click rows (``label > 0``) of ``splits``."""
    return inter.mask(*splits) & (np.asarray(inter.label) > 0)


def split_clicks(
    ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)
) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` int64 (n,) of the click rows of ``splits`` (repeats kept, time order)."""
    it = ds.interactions
    m = click_rows(it, splits)
    return np.asarray(it.user[m], dtype=np.int64), np.asarray(it.item[m], dtype=np.int64)


def click_keys(ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` keys of the clicks of ``splits``.

    Membership of (user, item) pairs: ``ralm.common.keys.contains(keys, u * n_items + i)``.
    """
    u, i = split_clicks(ds, splits)
    return pair_keys(u, i, ds.n_items)


def seed_csr(
    ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)
) -> tuple[np.ndarray, np.ndarray]:
    """Seed users of every item (its distinct clickers in ``splits``) as CSR.

    Returns:
        ``(offsets int64 (n_items + 1,), users int64 (nnz,))``, sorted by (item, user);
        a (user, item) pair the log repeats counts once.
    """
    u, i = split_clicks(ds, splits)
    return csr_from_pairs(i, u, ds.n_items, unique=True)  # sorted by item, then user


def fit_splits(ds: EncodedDataset) -> tuple[Split, ...]:
    """Splits the final fit and the seeds use: ``(TRAIN, VALID)`` if VALID is folded back."""
    folded = bool((ds.extra.get("split") or {}).get("fold_valid", False))
    return (Split.TRAIN, Split.VALID) if folded else (Split.TRAIN,)
