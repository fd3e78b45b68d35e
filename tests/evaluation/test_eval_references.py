"""The classic references (item-kNN, user-kNN look-alike, EASE) against naive references."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Split
from ralm.data.toy import make_toy_dataset
from ralm.errors import ConfigError
from ralm.evaluation.baselines import Popularity, RandomRecommender
from ralm.evaluation.baselines.base import click_matrix
from ralm.evaluation.baselines.ease import EASE, EASEConfig, ease_weights
from ralm.evaluation.baselines.neighbours import ItemKNN, KNNConfig, UserKNN
from ralm.evaluation.baselines.yahoo import YahooLookalike
from ralm.evaluation.evaluator import evaluate
from ralm.evaluation.protocols import build_task, training_view

SEEDS = {"warm": (Split.TRAIN,), "cold": (Split.TRAIN, Split.COLD_SEED)}


@pytest.fixture(scope="module")
def tiny() -> EncodedDataset:
    """A tiny planted set: 40 users x 14 items, so the loops below stay instant."""
    return make_toy_dataset(n_users=40, n_items=14, clicks_per_user=5, n_cold_items=3, seed=2)


def _dense(ds: EncodedDataset, splits: tuple[Split, ...]) -> np.ndarray:
    """Binary user x item clicks by a loop over the rows (independent of click_matrix)."""
    x = np.zeros((ds.n_users, ds.n_items))
    it = ds.interactions
    for u, i, y, s in zip(it.user, it.item, it.label, it.split, strict=True):
        if y > 0 and int(s) in [int(v) for v in splits]:
            x[u, i] = 1.0
    return x


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.sqrt(a.sum()), np.sqrt(b.sum())
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _top(sims: dict[int, float], k: int | None) -> dict[int, float]:
    """The k largest positive entries, ties towards the lower index."""
    pos = sorted(((-v, i) for i, v in sims.items() if v > 0))
    return {i: -v for v, i in (pos if k is None else pos[:k])}


def test_click_matrix_is_the_binary_matrix(tiny):
    for splits in SEEDS.values():
        np.testing.assert_array_equal(click_matrix(tiny, splits).toarray(), _dense(tiny, splits))


@pytest.mark.parametrize("protocol", ["warm", "cold"])
@pytest.mark.parametrize("k", [3, None])
def test_item_knn_against_a_loop(tiny, protocol, k):
    model = ItemKNN(KNNConfig(neighbours=k))
    model.fit(training_view(tiny))
    model.set_seed_splits(SEEDS[protocol])
    x = _dense(tiny, SEEDS[protocol])
    users, items = np.arange(tiny.n_users), np.arange(tiny.n_items)
    ref = np.zeros((users.size, items.size))
    for j in items:
        neigh = _top({i: _cos(x[:, i], x[:, j]) for i in items if i != j}, k)
        for u in users:
            ref[u, j] = sum(s for i, s in neigh.items() if x[u, i] > 0)
    np.testing.assert_allclose(model.score_users(users, items), ref, atol=1e-12)
    assert (model.note() is not None) == (protocol == "cold")  # "item-kNN with seeds"
    # a hypothetical new item: the same loop with its seed column
    seeds = np.array([0, 3, 5, 8, 13])
    col = np.zeros(tiny.n_users)
    col[seeds] = 1.0
    neigh = _top({i: _cos(x[:, i], col) for i in items}, k)
    new = [sum(s for i, s in neigh.items() if x[u, i] > 0) for u in users]
    np.testing.assert_allclose(model.score_seeded_items(users, [seeds])[:, 0], new, atol=1e-12)


@pytest.mark.parametrize("protocol", ["warm", "cold"])
@pytest.mark.parametrize("k", [4, None])
def test_user_knn_against_a_loop(tiny, protocol, k):
    model = UserKNN(KNNConfig(neighbours=k))
    model.fit(training_view(tiny))
    model.set_seed_splits(SEEDS[protocol])
    x = _dense(tiny, SEEDS[protocol])
    users, items = np.arange(tiny.n_users), np.arange(tiny.n_items)
    ref = np.zeros((users.size, items.size))
    new = np.zeros(users.size)
    seeds = np.array([1, 2, 9, 30])
    for u in users:
        neigh = _top({v: _cos(x[u], x[v]) for v in users if v != u}, k)
        for j in items:
            ref[u, j] = sum(s for v, s in neigh.items() if x[v, j] > 0)
        new[u] = sum(s for v, s in neigh.items() if v in seeds)
    np.testing.assert_allclose(model.score_users(users, items), ref, atol=1e-12)
    np.testing.assert_allclose(model.score_seeded_items(users, [seeds])[:, 0], new, atol=1e-12)


def test_ease_weights_solve_the_constrained_ridge():
    """Closed form vs one ridge regression per column without the item itself."""
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.3).astype(float)
    lam = 2.5
    b, _ = ease_weights(x.T @ x, lam)
    for j in range(8):
        others = [i for i in range(8) if i != j]
        xo = x[:, others]
        ref = np.linalg.solve(xo.T @ xo + lam * np.eye(7), xo.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], ref, atol=1e-10)
        assert b[j, j] == 0.0


@pytest.mark.parametrize("protocol", ["warm", "cold"])
def test_ease_scores_and_default_lambda(tiny, protocol):
    model = EASE()
    model.fit(training_view(tiny))
    model.set_seed_splits(SEEDS[protocol])
    x = _dense(tiny, SEEDS[protocol])
    lam = x.sum() / tiny.n_items  # l2_per_click = 1: lambda = mean clicks per item
    assert model.lam == pytest.approx(lam)
    b, _ = ease_weights(x.T @ x, lam)
    users, items = np.arange(tiny.n_users), np.arange(tiny.n_items)
    np.testing.assert_allclose(model.score_users(users, items), x @ b, atol=1e-10)
    assert (model.note() is not None) == (protocol == "cold")
    # a new item's column is the one it gets in the model re-solved with it
    seeds = np.array([0, 4, 7, 11, 20])
    col = np.zeros((tiny.n_users, 1))
    col[seeds] = 1.0
    xa = np.hstack([x, col])
    ba, _ = ease_weights(xa.T @ xa, lam)
    want = x @ ba[: tiny.n_items, -1]  # the scored users have not clicked the new item
    np.testing.assert_allclose(model.score_seeded_items(users, [seeds])[:, 0], want, atol=1e-10)


def test_ease_refuses_catalogues_too_large_for_a_dense_solve(tiny):
    with pytest.raises(ConfigError, match=r"EASE: 14 items > ease.max_items = 10"):
        EASE(EASEConfig(max_items=10)).fit(training_view(tiny))
    m = EASE(EASEConfig(l2=7.0))
    m.fit(training_view(tiny))
    assert m.lam == 7.0


@pytest.mark.parametrize("make", [Popularity, UserKNN, YahooLookalike], ids=str)
def test_seeded_item_scores_like_an_item_with_the_same_seeds(tiny, make):
    """An existing item re-created from its own seeds gets that item's scores."""
    model = make()
    model.fit(training_view(tiny))
    offsets_users = [np.flatnonzero(_dense(tiny, (Split.TRAIN,))[:, j]) for j in range(3)]
    users = np.arange(tiny.n_users)
    got = model.score_seeded_items(users, offsets_users)  # (U, 3)
    np.testing.assert_allclose(got, model.score_users(users, np.arange(3)), atol=1e-9)
    assert model.supports_seeded_items
    assert not RandomRecommender().supports_seeded_items


@pytest.mark.parametrize("make", [ItemKNN, UserKNN, EASE], ids=str)
@pytest.mark.parametrize("protocol", ["warm", "cold", "mixed"])
def test_references_beat_random(toy, make, protocol):
    """On the planted toy data every reference ranks above random (far above, warm and cold;
    in the mixed protocol six young cold items compete with 54 warm ones)."""
    model = make()
    model.fit(training_view(toy), 0)
    rnd = RandomRecommender()
    rnd.fit(training_view(toy), 0)
    task = build_task(toy, protocol, seed=0)
    key = "recall@10" if protocol == "mixed" else "prec@5"
    got, base = (evaluate(m, task, ks=(5, 10))[key] for m in (model, rnd))
    assert got > base + (0.0 if protocol == "mixed" else 0.05), (got, base)
    assert evaluate(model, task, ks=(5, 10))["auc"] > 0.6
