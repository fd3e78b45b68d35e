"""RALM's copy-test hook: a new item known only by its seeds, indexed like the service does."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import item_seed_csr
from ralm.evaluation.baselines.ralm import RalmRecommender
from ralm.evaluation.protocols import training_view
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.user.config import UserModelConfig, UserTrainConfig


@pytest.fixture(scope="module")
def fitted(toy: EncodedDataset) -> RalmRecommender:
    m = RalmRecommender(
        LookalikeConfig(h=16, k=4, variant="average"),
        LookalikeTrainConfig(epochs=1, patience=0),
        UserModelConfig(dim=16, mlp_hidden=[32]),
        user_train=UserTrainConfig(epochs=2, patience=0),
    )
    m.fit(training_view(toy), seed=0)
    m.set_seed_splits((Split.TRAIN,))
    return m


def test_an_item_recreated_from_its_seeds_scores_like_the_item(
    fitted: RalmRecommender, toy: EncodedDataset
) -> None:
    """Same seeds -> same representation (the average variant is deterministic)."""
    offsets, users = item_seed_csr(toy, (Split.TRAIN,))
    items = np.flatnonzero(np.diff(offsets) > 0)[:5]
    sets = [users[offsets[j] : offsets[j + 1]] for j in items]
    who = np.arange(toy.n_users)
    got = fitted.score_seeded_items(who, sets)  # (U, 5)
    np.testing.assert_allclose(got, fitted.score_users(who, items), rtol=1e-5, atol=1e-5)
    assert fitted.supports_seeded_items


def test_seed_sets_are_independent_and_deduplicated(
    fitted: RalmRecommender, toy: EncodedDataset
) -> None:
    offsets, users = item_seed_csr(toy, (Split.TRAIN,))
    a, b = users[offsets[0] : offsets[1]], users[offsets[1] : offsets[2]]
    who = np.arange(20)
    both = fitted.score_seeded_items(who, [a, b])
    np.testing.assert_allclose(both[:, 1], fitted.score_seeded_items(who, [b])[:, 0], atol=1e-6)
    dup = fitted.score_seeded_items(who, [np.concatenate([a, a])])[:, 0]
    np.testing.assert_allclose(dup, both[:, 0], atol=1e-6)
