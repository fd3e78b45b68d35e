"""Evaluation protocols: which clicks are tested, which may be seeds, what is ranked.

- ``warm``: test on the TEST split; seeds = TRAIN clicks; candidates = every item with a
  TRAIN click (i.e. with seeds) minus the user's own TRAIN clicks.
- ``valid``: like ``warm`` but tested on the VALID split, for choosing hyper-parameters
  without looking at TEST.
- ``cold``: items whose clicks were all held out of training. Seeds = TRAIN + COLD_SEED
  (the cold items' seeding window); candidates = the cold items (those with COLD_SEED
  clicks) minus the user's own COLD_SEED clicks; tested on COLD_TEST.
- ``mixed``: the cold items compete with every warm item, as in the service. Seeds = TRAIN
  + COLD_SEED; candidates = every item with seeds (warm and cold) minus the user's TRAIN and
  COLD_SEED clicks; tested on COLD_TEST; the evaluator also reports ``cold_share@K``, the
  share of top-K slots given to cold items.
- ``mixed_warm``: the other side of ``mixed``: the same seeds and candidates (warm and cold
  items compete), tested on the warm items' TEST clicks; what the cold items' share of the
  top-K costs the warm ones (with ``cold_share@K``).
- ``full``: the standard full-ranking protocol of GNN / two-tower papers. Seeds = TRAIN;
  candidates = every item of the catalogue minus every known click of the user (TRAIN and
  VALID); tested on TEST; recall@K / NDCG@K also at K = 20 and 50.
- ``copy``: a diagnostic, not a ranking protocol (:func:`build_copy_task`): for the most
  popular items, a brand-new "copy" seeded by 40 random TRAIN clickers is ranked, beside
  the original, for the item's TEST clickers among every warm candidate.

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

Protocol = Literal["warm", "cold", "valid", "mixed", "mixed_warm", "full", "copy"]
HELD_OUT = (Split.TEST, Split.COLD_TEST)
FULL_RANKING_KS = (20, 50)  # the cut-offs GNN / two-tower papers report
COPY_ITEMS = 5  # the copy test's most popular items
COPY_SEEDS = 40  # random TRAIN clickers seeding each copy


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
        focus_items: bool (n_items,) items whose share of the top-K is reported as
            ``cold_share@K`` (the cold items of the ``mixed`` protocol), or None.
        extra_ks: cut-offs the protocol adds to the experiment's (``full``: 20, 50).
        copy_items: the copy test's original items (``copy`` protocol only).
        copy_seeds: per copy item, the seed users of its copy.
        copy_users: per copy item, the users it is ranked for (its TEST clickers).
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
    focus_items: np.ndarray | None = None
    extra_ks: tuple[int, ...] = ()
    copy_items: np.ndarray | None = None
    copy_seeds: list[np.ndarray] | None = None
    copy_users: list[np.ndarray] | None = None


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


def _protocol_spec(
    ds: EncodedDataset, protocol: str
) -> tuple[tuple[Split, ...], Split, tuple[Split, ...], np.ndarray]:
    """(seed splits, tested split, the user's own splits, candidates) of a protocol."""
    warm_seeds: tuple[Split, ...] = (Split.TRAIN,)
    cold_seeds: tuple[Split, ...] = (Split.TRAIN, Split.COLD_SEED)
    if protocol in ("warm", "valid"):
        test = Split.TEST if protocol == "warm" else Split.VALID
        return warm_seeds, test, warm_seeds, np.flatnonzero(ds.item_popularity(warm_seeds) > 0)
    if protocol == "cold":
        cold = np.flatnonzero(ds.item_popularity((Split.COLD_SEED,)) > 0)
        return cold_seeds, Split.COLD_TEST, cold_seeds, cold
    if protocol in ("mixed", "mixed_warm"):
        every = np.flatnonzero(ds.item_popularity(cold_seeds) > 0)
        test = Split.COLD_TEST if protocol == "mixed" else Split.TEST
        return cold_seeds, test, cold_seeds, every
    if protocol == "full":
        return warm_seeds, Split.TEST, (Split.TRAIN, Split.VALID), np.arange(ds.n_items)
    raise ValueError(
        f"unknown protocol {protocol!r} (expected 'warm', 'cold', 'valid', 'mixed', "
        "'mixed_warm', 'full' or 'copy')"
    )


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
        protocol: ``"warm"``, ``"cold"``, ``"valid"``, ``"mixed"``, ``"mixed_warm"``,
            ``"full"`` or ``"copy"``.
        n_neg: sampled non-clicked candidates per test click for AUC / GAUC.
        seed: seeds the negative sampling (and the user subsample).
        max_users: evaluate a seeded random subset of at most this many test users.
    """
    if protocol == "copy":
        return build_copy_task(ds, seed=seed)
    it = ds.interactions
    pos = np.asarray(it.label) > 0
    user, item, split = np.asarray(it.user), np.asarray(it.item), np.asarray(it.split)
    seed_splits, test_split, own_splits, candidates = _protocol_spec(ds, protocol)
    seed_pop = ds.item_popularity(seed_splits)
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
    focus = None
    if protocol in ("mixed", "mixed_warm"):
        focus = ds.item_popularity((Split.TRAIN,)) == 0  # cold items: no TRAIN click
        focus &= is_cand
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
        focus_items=focus,
        extra_ks=FULL_RANKING_KS if protocol == "full" else (),
    )


def build_copy_task(
    ds: EncodedDataset, n_items: int = COPY_ITEMS, n_seeds: int = COPY_SEEDS, seed: int = 0
) -> EvalTask:
    """The copy test: can a brand-new item with a mature item's audience rank like it?

    For each of the ``n_items`` items with the most TRAIN clicks (ties: lower index), the
    copy's seeds are ``n_seeds`` random TRAIN clickers of the item (drawn with ``seed``); the
    users are the item's TEST clickers who did not click it in TRAIN. Candidates are every
    item with TRAIN clicks (the warm catalogue), minus each user's TRAIN clicks. The
    evaluator ranks the original among them, and the copy (scored with
    :meth:`Recommender.score_seeded_items`) among them too.

    Args:
        ds: the full encoded dataset.
        n_items: how many of the most popular items are copied.
        n_seeds: seeds per copy (fewer when the item has fewer TRAIN clickers).
        seed: seeds the choice of the copies' seeds.
    """
    it = ds.interactions
    pos = np.asarray(it.label) > 0
    user, item, split = np.asarray(it.user), np.asarray(it.item), np.asarray(it.split)
    pop = ds.item_popularity((Split.TRAIN,))
    candidates = np.flatnonzero(pop > 0)
    own_m = pos & (split == int(Split.TRAIN))
    own_keys = pair_keys(user[own_m], item[own_m], ds.n_items)
    test_m = pos & (split == int(Split.TEST))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    seeds: list[np.ndarray] = []
    users_of: list[np.ndarray] = []
    for j in np.lexsort((np.arange(ds.n_items), -pop)):
        if len(chosen) == n_items or pop[j] == 0:
            break
        tu = np.unique(user[test_m & (item == j)])
        tu = tu[~contains(own_keys, tu * ds.n_items + j)]
        if tu.size == 0:
            continue
        clickers = np.unique(user[own_m & (item == j)])
        seeds.append(np.sort(rng.choice(clickers, min(n_seeds, clickers.size), replace=False)))
        chosen.append(int(j))
        users_of.append(tu)
    if not chosen:
        raise DataError(f"dataset {ds.name}: no popular item has TEST clickers; no copy test")
    users = np.unique(np.concatenate(users_of))
    tu = np.concatenate(users_of)
    ti = np.repeat(np.asarray(chosen, dtype=np.int64), [u.size for u in users_of])
    t_off, t_items = _group(tu, ti, users, ds.n_users, ds.n_items)
    e_off, e_items = _group(user[own_m], item[own_m], users, ds.n_users, ds.n_items)
    empty = np.zeros(0, dtype=np.int64)
    return EvalTask(
        protocol="copy",
        seed_splits=(Split.TRAIN,),
        users=users,
        truth=[t_items[t_off[r] : t_off[r + 1]] for r in range(users.size)],
        candidates=candidates,
        exclude_offsets=e_off,
        exclude_items=e_items,
        pair_users=empty,
        pair_items=empty,
        pair_labels=np.zeros(0, dtype=np.int8),
        seed_popularity=pop,
        copy_items=np.asarray(chosen, dtype=np.int64),
        copy_seeds=seeds,
        copy_users=users_of,
    )
