"""Evaluation protocols: which clicks are tested, which may be seeds, what is ranked.

- ``warm``: test on the TEST split; seeds = TRAIN clicks; candidates = every item with a
  TRAIN click (i.e. with seeds) minus the user's own TRAIN clicks.
- ``valid``: like ``warm`` but tested on the VALID split, for choosing hyper-parameters
  without looking at TEST.
- ``cold``: items whose clicks were all held out of training. Seeds = TRAIN + COLD_SEED
  (the cold items' seeding window); candidates = the cold items (those with COLD_SEED
  clicks) minus the user's own COLD_SEED clicks; tested on COLD_TEST.

How the split itself was made (chronological, random per user, a user-given train/test
pair) is decided by the data layer when the dataset is prepared; a protocol only reads the
split codes. Models are fitted on :func:`training_view`, a copy of the dataset whose TEST
and COLD_TEST rows are removed, so no model can train on, or take seeds from, a test click.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ralm.data.encoded import EncodedDataset, Interactions, Split
from ralm.errors import DataError
from ralm.evaluation.negatives import contains, pair_keys, sample_negatives

Protocol = Literal["warm", "cold", "valid"]
HELD_OUT = (Split.TEST, Split.COLD_TEST)


def training_view(ds: EncodedDataset) -> EncodedDataset:
    """The dataset without its TEST and COLD_TEST rows (what models may see)."""
    it = ds.interactions
    keep = ~it.mask(*HELD_OUT)
    inter = Interactions(
        user=np.asarray(it.user[keep]),
        item=np.asarray(it.item[keep]),
        ts=np.asarray(it.ts[keep]),
        label=np.asarray(it.label[keep]),
        split=np.asarray(it.split[keep]),
    )
    return dataclasses.replace(ds, interactions=inter)


@dataclass
class EvalTask:
    """Everything needed to evaluate any :class:`Recommender` under one protocol.

    Attributes:
        protocol: ``"warm"`` or ``"cold"``.
        seed_splits: splits that may provide seeds.
        users: int64 (U,) test users (each has >= 1 test click among the candidates).
        truth: per test user, int64 array of clicked test items.
        candidates: int64 (C,) items ranked for every user.
        exclude_offsets / exclude_items: CSR (U+1,) / (nnz,) items removed from each
            user's ranking (their own TRAIN or seeding-window clicks).
        pair_users / pair_items / pair_labels: (n,) AUC pairs: every test click plus
            ``n_neg`` sampled non-clicked candidates per click.
        seed_popularity: int64 (n_items,) clicks in the seed splits (for the long tail).
    """

    protocol: str
    seed_splits: tuple[Split, ...]
    users: np.ndarray
    truth: list[np.ndarray]
    candidates: np.ndarray
    exclude_offsets: np.ndarray
    exclude_items: np.ndarray
    pair_users: np.ndarray
    pair_items: np.ndarray
    pair_labels: np.ndarray
    seed_popularity: np.ndarray


def _group(
    users: np.ndarray, items: np.ndarray, rows: np.ndarray, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Group (user, item) pairs by the users listed in ``rows`` -> CSR (offsets, items).

    Pairs of users not in ``rows`` are dropped; duplicates count once; items sorted.
    """
    row_of = np.full(n_users, -1, dtype=np.int64)
    row_of[rows] = np.arange(rows.size)
    r = row_of[users]
    keep = r >= 0
    keys = np.unique(r[keep] * n_items + items[keep])
    counts = np.bincount(keys // n_items, minlength=rows.size)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, (keys % n_items).astype(np.int64)


def build_task(
    ds: EncodedDataset,
    protocol: Protocol,
    n_neg: int = 10,
    seed: int = 0,
    max_users: int | None = None,
) -> EvalTask:
    """Build the evaluation task of ``protocol`` from the split codes of ``ds``.

    Args:
        ds: the full encoded dataset (test rows included; they are only read here).
        protocol: ``"warm"`` or ``"cold"``.
        n_neg: sampled non-clicked candidates per test click for AUC / GAUC.
        seed: seeds the negative sampling (and the user subsample).
        max_users: evaluate a seeded random subset of at most this many test users.
    """
    it = ds.interactions
    pos = np.asarray(it.label) > 0
    user, item, split = np.asarray(it.user), np.asarray(it.item), np.asarray(it.split)
    if protocol in ("warm", "valid"):
        seed_splits: tuple[Split, ...] = (Split.TRAIN,)
        test_split = Split.TEST if protocol == "warm" else Split.VALID
        own_splits: tuple[Split, ...] = (Split.TRAIN,)
        seed_pop = ds.item_popularity(seed_splits)
        candidates = np.flatnonzero(seed_pop > 0)
    elif protocol == "cold":
        seed_splits = (Split.TRAIN, Split.COLD_SEED)
        test_split, own_splits = Split.COLD_TEST, (Split.TRAIN, Split.COLD_SEED)
        seed_pop = ds.item_popularity(seed_splits)
        candidates = np.flatnonzero(ds.item_popularity((Split.COLD_SEED,)) > 0)
    else:
        raise ValueError(f"unknown protocol {protocol!r} (expected 'warm', 'cold' or 'valid')")
    if candidates.size == 0:
        raise DataError(
            f"dataset {ds.name}: no candidate items for the {protocol} protocol "
            f"(no clicks in {', '.join(s.name for s in seed_splits)} for the ranked items)"
        )
    is_cand = np.zeros(ds.n_items, dtype=bool)
    is_cand[candidates] = True
    own_m = pos & np.isin(split, [int(s) for s in own_splits])
    own_keys = pair_keys(user[own_m], item[own_m], ds.n_items)
    test_m = pos & (split == int(test_split)) & is_cand[item]
    tu, ti = user[test_m], item[test_m]
    keep = ~contains(own_keys, tu * ds.n_items + ti)  # already clicked: not a test target
    tu, ti = tu[keep], ti[keep]
    users = np.unique(tu)
    if users.size == 0:
        raise DataError(
            f"dataset {ds.name}: no {test_split.name} clicks on candidate items; "
            f"the {protocol} protocol has nothing to evaluate"
        )
    rng = np.random.default_rng(seed)
    if max_users is not None and users.size > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
        sel = np.isin(tu, users)
        tu, ti = tu[sel], ti[sel]
    t_off, t_items = _group(tu, ti, users, ds.n_users, ds.n_items)
    truth = [t_items[t_off[r] : t_off[r + 1]] for r in range(users.size)]
    ou, oi = user[own_m], item[own_m]
    own_c = is_cand[oi]
    e_off, e_items = _group(ou[own_c], oi[own_c], users, ds.n_users, ds.n_items)
    # AUC pairs: every test click + n_neg candidates the user never clicked in any split
    any_keys = pair_keys(user[pos], item[pos], ds.n_items)
    pu = np.repeat(users, np.diff(t_off))
    nu, ni = sample_negatives(pu, n_neg, candidates, any_keys, ds.n_items, rng)
    return EvalTask(
        protocol=protocol,
        seed_splits=seed_splits,
        users=users,
        truth=truth,
        candidates=candidates,
        exclude_offsets=e_off,
        exclude_items=e_items,
        pair_users=np.concatenate([pu, nu]),
        pair_items=np.concatenate([t_items, ni]),
        pair_labels=np.concatenate([np.ones(pu.size, np.int8), np.zeros(nu.size, np.int8)]),
        seed_popularity=seed_pop,
    )
