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
from ralm.evaluation.baselines.lr import LogisticRegression, LRConfig
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
    [Popularity, lambda: LogisticRegression(LRConfig(epochs=1)), YahooLookalike],
    ids=["popularity", "lr", "yahoo"],
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
