"""Every compared model beats random ranking on the planted toy set (warm and cold)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines import ItemFallback, Popularity, RandomRecommender, Recommender
from ralm.evaluation.baselines.lr import LogisticRegression, LRConfig
from ralm.evaluation.baselines.ralm import RalmRecommender
from ralm.evaluation.baselines.yahoo import YahooLookalike
from ralm.evaluation.baselines.youtube_dnn import TowerDotProduct
from ralm.evaluation.evaluator import evaluate
from ralm.evaluation.protocols import build_task, training_view
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.user.config import UserModelConfig, UserTrainConfig

SMALL_USER = {"dim": 16, "mlp_hidden": [32]}
SMALL_USER_TRAIN = {"epochs": 8, "lr": 0.01, "patience": 0}


def _tower(merge: str) -> Recommender:
    return TowerDotProduct(
        UserModelConfig(merge=merge, **SMALL_USER),
        name=f"tower {merge}",
        train=UserTrainConfig(**SMALL_USER_TRAIN),
    )


def _ralm(variant: str) -> Recommender:
    return RalmRecommender(
        LookalikeConfig(h=16, k=4, variant=variant),
        LookalikeTrainConfig(epochs=3),
        UserModelConfig(**SMALL_USER),
        name=variant,
        user_train=UserTrainConfig(**SMALL_USER_TRAIN),
    )


MODELS: dict[str, Callable[[], Recommender]] = {
    "popularity": Popularity,
    "lr": lambda: LogisticRegression(LRConfig(epochs=10)),
    "yahoo": YahooLookalike,
    "youtube_dnn": lambda: _tower("concat"),
    "ralm_average": lambda: _ralm("average"),
    "ralm": lambda: _ralm("ralm"),
}


@pytest.fixture(scope="module")
def random_scores(toy: EncodedDataset) -> dict[str, dict[str, float]]:
    out = {}
    for proto in ("warm", "cold"):
        runs = []
        for seed in range(3):
            m = RandomRecommender()
            m.fit(training_view(toy), seed)
            runs.append(evaluate(m, build_task(toy, proto, seed=seed), ks=(5,), seed=seed))
        out[proto] = {k: float(np.mean([r[k] for r in runs])) for k in ("prec@5", "auc")}
    return out


SLOW = {"ralm_average", "ralm"}  # stage 1 + stage 2 training: a few seconds each


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]
)
def test_beats_random_warm(toy, random_scores, name):
    model = MODELS[name]()
    model.fit(training_view(toy), seed=0)
    res = evaluate(model, build_task(toy, "warm", seed=0), ks=(5,))
    rnd = random_scores["warm"]
    assert res["auc"] > rnd["auc"] + 0.05, (name, res["auc"], rnd["auc"])
    assert res["prec@5"] > rnd["prec@5"] * 1.5, (name, res["prec@5"], rnd["prec@5"])


@pytest.mark.parametrize(
    "name", ["popularity", "yahoo", pytest.param("ralm", marks=pytest.mark.slow)]
)
def test_seed_based_models_beat_random_on_cold_items(toy, random_scores, name):
    model = MODELS[name]()
    model.fit(training_view(toy), seed=0)
    res = evaluate(model, build_task(toy, "cold", seed=0), ks=(5,))
    assert res["auc"] > random_scores["cold"]["auc"] + 0.05, (name, res["auc"])


def test_fallback_is_labelled_and_below_known_items(toy):
    view = training_view(toy)
    fb = ItemFallback(view, "popularity")
    cold = np.asarray(toy.extra["toy"]["cold"])
    assert not fb.known[cold].any()
    items = np.arange(toy.n_items)
    scores = fb.apply(np.random.default_rng(0).random((3, items.size)), items)
    assert scores[:, cold].max() < scores[:, fb.known].min()
    fb.set_seed_splits((Split.TRAIN, Split.COLD_SEED))
    cold_pop = view.item_popularity((Split.COLD_SEED,))[cold]
    s = fb.apply(np.zeros((1, cold.size)), cold)[0]
    assert np.array_equal(np.argsort(-s, kind="stable"), np.argsort(-cold_pop, kind="stable"))
    assert "fallback" in (fb.note("LR", True) or "")
