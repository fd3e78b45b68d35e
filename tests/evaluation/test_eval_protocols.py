"""Protocols: what is tested, what may be seen. The evaluation never trains on or takes seeds
from a test click."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Interactions, Split
from ralm.errors import DataError
from ralm.evaluation.baselines import Popularity, Recommender
from ralm.evaluation.baselines.base import item_seed_csr
from ralm.evaluation.baselines.ease import EASE
from ralm.evaluation.baselines.lr import LogisticRegression, LRConfig
from ralm.evaluation.baselines.neighbours import ItemKNN, UserKNN
from ralm.evaluation.baselines.yahoo import YahooLookalike
from ralm.evaluation.evaluator import evaluate, rank_top_k
from ralm.evaluation.protocols import build_task, training_view


def _clicks(ds: EncodedDataset, *splits: Split) -> set[tuple[int, int]]:
    it = ds.interactions
    m = it.mask(*splits) & (it.label > 0)
    return set(zip(it.user[m].tolist(), it.item[m].tolist(), strict=True))


def test_warm_task_contents(toy):
    task = build_task(toy, "warm", n_neg=5, seed=0)
    train = _clicks(toy, Split.TRAIN)
    test = _clicks(toy, Split.TEST)
    train_items = {i for _, i in train}
    assert set(task.candidates.tolist()) == train_items
    for r, u in enumerate(task.users.tolist()):
        truth = set(task.truth[r].tolist())
        assert truth and all((u, i) in test for i in truth)
        excl = task.exclude_items[task.exclude_offsets[r] : task.exclude_offsets[r + 1]]
        assert set(excl.tolist()) == {i for uu, i in train if uu == u}
    # AUC pairs: positives are test clicks, negatives never clicked by the user in any split
    every = _clicks(toy, *Split)
    pairs = zip(
        task.pair_users.tolist(), task.pair_items.tolist(), task.pair_labels.tolist(), strict=True
    )
    for u, i, y in pairs:
        assert ((u, i) in test) if y else ((u, i) not in every)
    assert (task.pair_labels == 0).sum() == 5 * (task.pair_labels == 1).sum()


def test_cold_task_contents(toy):
    task = build_task(toy, "cold", seed=0)
    cold = set(toy.extra["toy"]["cold"])
    assert set(task.candidates.tolist()) <= cold
    assert task.seed_splits == (Split.TRAIN, Split.COLD_SEED)
    cold_test = _clicks(toy, Split.COLD_TEST)
    for r, u in enumerate(task.users.tolist()):
        assert all((u, i) in cold_test for i in task.truth[r].tolist())
    assert not (_clicks(toy, Split.TRAIN, Split.VALID, Split.TEST) & {(0, i) for i in cold})


def test_training_view_drops_every_test_row(toy):
    view = training_view(toy)
    assert not view.interactions.mask(Split.TEST, Split.COLD_TEST).any()
    kept = len(view.interactions) + int(toy.interactions.mask(Split.TEST, Split.COLD_TEST).sum())
    assert kept == len(toy.interactions)
    offsets, users = item_seed_csr(view, (Split.TRAIN, Split.COLD_SEED))
    seeds = {
        (int(u), int(i)) for i in range(view.n_items) for u in users[offsets[i] : offsets[i + 1]]
    }
    assert not seeds & _clicks(toy, Split.TEST, Split.COLD_TEST)


def _perturb_test_rows(ds: EncodedDataset, seed: int = 1) -> EncodedDataset:
    """The same dataset with every TEST / COLD_TEST click moved to another random item."""
    it = ds.interactions
    rng = np.random.default_rng(seed)
    item = np.array(it.item)
    held = it.mask(Split.TEST, Split.COLD_TEST)
    item[held] = rng.integers(0, ds.n_items, int(held.sum()))
    inter = Interactions(it.user, item, it.ts, it.label, it.split)
    return dataclasses.replace(ds, interactions=inter)


@pytest.mark.parametrize(
    "make",
    [
        Popularity,
        lambda: LogisticRegression(LRConfig(epochs=1)),
        YahooLookalike,
        ItemKNN,
        UserKNN,
        EASE,
    ],
    ids=["popularity", "lr", "yahoo", "item_knn", "user_knn", "ease"],
)
def test_models_never_see_test_clicks(toy, make):
    """Scores depend only on the training view: changing every test click changes nothing."""
    users, items = np.arange(40), np.arange(toy.n_items)
    out = []
    for ds in (toy, _perturb_test_rows(toy)):
        model: Recommender = make()
        model.fit(training_view(ds), seed=0)
        for splits in ((Split.TRAIN,), (Split.TRAIN, Split.COLD_SEED)):
            model.set_seed_splits(splits)
            out.append(model.score_users(users, items))
    for a, b in zip(out[:2], out[2:], strict=True):
        np.testing.assert_allclose(a, b)


class _Spy(Recommender):
    """Records what the evaluator lets it see; scores by a fixed preference (item index)."""

    name = "spy"

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        self._ds = ds
        self.seen_splits = set(np.unique(ds.interactions.split).tolist())
        self.seed_history: list[tuple[Split, ...]] = []

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        self.seed_history.append(tuple(splits))

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.broadcast_to(-np.asarray(items, float), (len(users), len(items))).copy()


def test_evaluator_seeds_and_exclusions(toy):
    spy = _Spy()
    spy.fit(training_view(toy))
    assert int(Split.TEST) not in spy.seen_splits and int(Split.COLD_TEST) not in spy.seen_splits
    warm, cold = build_task(toy, "warm"), build_task(toy, "cold")
    evaluate(spy, warm, ks=(1, 5))
    evaluate(spy, cold, ks=(1, 5))
    assert spy.seed_history == [(Split.TRAIN,), (Split.TRAIN, Split.COLD_SEED)]
    top = rank_top_k(spy, warm, 10)
    for r in range(warm.users.size):
        excl = set(
            warm.exclude_items[warm.exclude_offsets[r] : warm.exclude_offsets[r + 1]].tolist()
        )
        row = [i for i in top[r].tolist() if i >= 0]
        assert not excl & set(row)  # the user's own TRAIN clicks are never recommended
        allowed = sorted(set(warm.candidates.tolist()) - excl)
        assert row == allowed[:10]  # the spy prefers small item indices


def test_constant_scores_rank_randomly_but_reproducibly(toy):
    pop = Popularity()
    pop.fit(training_view(toy))
    pop._counts[:] = 1.0  # every item tied
    task = build_task(toy, "warm")
    a, b, c = (rank_top_k(pop, task, 5, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_empty_protocol_is_a_clear_error(toy):
    it = toy.interactions
    split = np.where(it.mask(Split.COLD_SEED, Split.COLD_TEST), int(Split.TRAIN), it.split)
    no_cold = dataclasses.replace(
        toy, interactions=Interactions(it.user, it.item, it.ts, it.label, split.astype(np.int8))
    )
    with pytest.raises(DataError, match="cold"):
        build_task(no_cold, "cold")


def test_mixed_task_ranks_cold_items_among_warm_ones(toy):
    task = build_task(toy, "mixed", seed=0)
    cold = set(toy.extra["toy"]["cold"])
    warm_items = {i for _, i in _clicks(toy, Split.TRAIN)}
    seeded_cold = {i for _, i in _clicks(toy, Split.COLD_SEED)}
    assert set(task.candidates.tolist()) == warm_items | seeded_cold
    assert task.seed_splits == (Split.TRAIN, Split.COLD_SEED)
    assert task.focus_items is not None
    assert set(np.flatnonzero(task.focus_items).tolist()) == seeded_cold <= cold
    cold_test = _clicks(toy, Split.COLD_TEST)
    known = _clicks(toy, Split.TRAIN, Split.COLD_SEED)
    for r, u in enumerate(task.users.tolist()):
        assert all((u, i) in cold_test for i in task.truth[r].tolist())
        excl = task.exclude_items[task.exclude_offsets[r] : task.exclude_offsets[r + 1]]
        assert set(excl.tolist()) == {i for uu, i in known if uu == u}


def test_mixed_warm_task_tests_warm_clicks_against_the_mixed_candidates(toy):
    mixed = build_task(toy, "mixed", seed=0)
    task = build_task(toy, "mixed_warm", seed=0)
    assert task.candidates.tolist() == mixed.candidates.tolist()
    assert task.seed_splits == mixed.seed_splits == (Split.TRAIN, Split.COLD_SEED)
    assert task.focus_items is not None
    assert task.focus_items.tolist() == mixed.focus_items.tolist()
    test = _clicks(toy, Split.TEST)
    known = _clicks(toy, Split.TRAIN, Split.COLD_SEED)
    cold = set(toy.extra["toy"]["cold"])
    for r, u in enumerate(task.users.tolist()):
        assert all((u, i) in test and i not in cold for i in task.truth[r].tolist())
        excl = task.exclude_items[task.exclude_offsets[r] : task.exclude_offsets[r + 1]]
        assert set(excl.tolist()) == {i for uu, i in known if uu == u}
    assert sum(t.size for t in task.truth) > 0


def test_full_task_ranks_every_item_minus_every_known_click(toy):
    task = build_task(toy, "full", seed=0)
    assert task.candidates.tolist() == list(range(toy.n_items))
    assert task.extra_ks == (20, 50) and task.seed_splits == (Split.TRAIN,)
    known = _clicks(toy, Split.TRAIN, Split.VALID)
    test = _clicks(toy, Split.TEST)
    assert any(uu == u for u in task.users.tolist() for uu, _ in _clicks(toy, Split.VALID))
    for r, u in enumerate(task.users.tolist()):
        excl = task.exclude_items[task.exclude_offsets[r] : task.exclude_offsets[r + 1]]
        assert set(excl.tolist()) == {i for uu, i in known if uu == u}
        assert all((u, i) in test and (u, i) not in known for i in task.truth[r].tolist())
    res = evaluate(Popularity_fitted(toy), task, ks=(10,))
    assert {"recall@20", "ndcg@20", "recall@50", "ndcg@50", "recall@10"} <= set(res)


def Popularity_fitted(ds: EncodedDataset) -> Popularity:
    pop = Popularity()
    pop.fit(training_view(ds))
    return pop


def test_copy_task_contents(toy):
    task = build_task(toy, "copy", seed=3)
    assert task.copy_items is not None and task.copy_seeds is not None
    assert task.copy_users is not None
    pop = toy.item_popularity((Split.TRAIN,))
    order = np.lexsort((np.arange(toy.n_items), -pop))
    assert task.copy_items.tolist() == order[:5].tolist()  # toy: every top item has testers
    train, test = _clicks(toy, Split.TRAIN), _clicks(toy, Split.TEST)
    for j, seeds, users in zip(task.copy_items, task.copy_seeds, task.copy_users, strict=True):
        assert seeds.size == min(40, pop[j]) and len(set(seeds.tolist())) == seeds.size
        assert all((int(u), int(j)) in train for u in seeds)
        assert set(users.tolist()) == {u for u, i in test if i == j} - {
            u for u, i in train if i == j
        }
    again = build_task(toy, "copy", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(task.copy_seeds, again.copy_seeds, strict=True))


def test_copy_test_ranks_against_a_loop(toy):
    """Ranks of the original and of the copy, recomputed by hand for item-kNN."""
    from ralm.evaluation.evaluator import copy_test

    model = ItemKNN()
    model.fit(training_view(toy))
    task = build_task(toy, "copy", seed=0)
    res = evaluate(model, task)
    train = _clicks(toy, Split.TRAIN)
    cand = task.candidates.tolist()
    med_o, med_c = [], []
    for j, seeds, users in zip(task.copy_items, task.copy_seeds, task.copy_users, strict=True):
        ro, rc = [], []
        for u in users.tolist():
            s = model.score_users(np.array([u]), task.candidates)[0]
            others = [s[c] for c, i in enumerate(cand) if (u, i) not in train and i != j]
            orig = s[cand.index(int(j))]
            copy = model.score_seeded_items(np.array([u]), [seeds])[0, 0]
            ro.append(1 + sum(x > orig for x in others) + sum(x == orig for x in others) / 2)
            pool = [*others, orig]
            rc.append(1 + sum(x > copy for x in pool) + sum(x == copy for x in pool) / 2)
        med_o.append(np.median(ro))
        med_c.append(np.median(rc))
    assert res["orig_rank"] == pytest.approx(np.median(med_o))
    assert res["copy_rank"] == pytest.approx(np.median(med_c))
    assert res["copy_vs_orig"] == pytest.approx(np.median(med_c) / np.median(med_o))
    nohook = copy_test(_Spy_fitted(toy), task)
    assert "copy_rank" not in nohook and "orig_rank" in nohook


def _Spy_fitted(ds: EncodedDataset) -> Recommender:
    spy = _Spy()
    spy.fit(training_view(ds))
    return spy


class _NaNModel(Recommender):
    """Scores = -item index, but NaN for odd items (items a model cannot score)."""

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        self._ds = ds

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        s = -np.asarray(items, dtype=np.float64)
        s[np.asarray(items) % 2 == 1] = np.nan
        return np.broadcast_to(s, (len(users), len(items))).copy()


def test_unscorable_items_rank_last_but_are_ranked(toy):
    model = _NaNModel()
    model.fit(training_view(toy))
    task = build_task(toy, "full")
    top = rank_top_k(model, task, toy.n_items)
    for r in range(3):
        row = [i for i in top[r].tolist() if i >= 0]
        n_excl = task.exclude_offsets[r + 1] - task.exclude_offsets[r]
        assert len(row) == toy.n_items - n_excl  # every non-excluded item is ranked
        evens = [i for i in row if i % 2 == 0]
        assert row[: len(evens)] == sorted(evens)  # scorable items first, in score order
