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
    # the young-item rule off: a copy is then its item exactly (the rule is tested below)
    m = RalmRecommender(
        LookalikeConfig(h=16, k=4, variant="average", young_boost=1.0),
        LookalikeTrainConfig(epochs=1, patience=0),
        UserModelConfig(dim=16, mlp_hidden=[32]),
        user_train=UserTrainConfig(epochs=2, patience=0),
    )
    m.fit(training_view(toy), seed=0)
    m.set_seed_splits((Split.TRAIN,))
    return m


def test_a_brand_new_copy_is_counted_by_its_rate(
    fitted: RalmRecommender, toy: EncodedDataset
) -> None:
    """With the young-item rule on, a seeded copy is brand new (age 0): its audience prior
    counts its seeds ``young_boost`` times, the original's counts them by its TRAIN age."""
    import torch

    from ralm.lookalike.item_age import item_ages

    young = fitted.variant("young", young_age=3 * 86400.0, young_boost=10.0)
    young.set_seed_splits((Split.TRAIN,))
    assert young.model is not None
    offsets, users = item_seed_csr(toy, (Split.TRAIN,))
    items = np.flatnonzero(np.diff(offsets) > 0)[:6]
    sets = [users[offsets[j] : offsets[j + 1]] for j in items]
    who = np.arange(toy.n_users)
    n = np.diff(offsets)[items].astype(np.float64)
    f = young.model.young_factor(torch.from_numpy(item_ages(toy, (Split.TRAIN,))[items]))
    assert f is not None
    gamma = float(young.model.gamma.detach())
    lift = gamma * (np.log1p(10.0 * n) - np.log1p(f.double().numpy() * n))  # copy - original
    got = young.score_seeded_items(who, sets) - young.score_users(who, items)
    np.testing.assert_allclose(got, np.broadcast_to(lift, got.shape), rtol=1e-4, atol=1e-5)
    assert (lift > 0).all()  # these toy items are older than 3 days at the TRAIN clock
    # the rule off again: the copy is the item
    plain = fitted.score_seeded_items(who, sets) - fitted.score_users(who, items)
    np.testing.assert_allclose(plain, 0.0, atol=1e-5)


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


def test_finetuned_ralm_indexes_with_the_tuned_tower(toy: EncodedDataset) -> None:
    """``finetune_user``: the recommender's embeddings are the tuned tower's, the shared
    stage-1 model is left as it was, and a seeded copy still scores like its item."""
    import torch

    from ralm.user.embed import embed_users
    from ralm.user.train import train_user_model

    view = training_view(toy)
    um = train_user_model(
        view,
        UserModelConfig(dim=16, mlp_hidden=[32]),
        train_cfg=UserTrainConfig(epochs=1, patience=0),
    )
    before = {k: v.clone() for k, v in um.tower.state_dict().items()}
    m = RalmRecommender(
        LookalikeConfig(h=16, k=4, variant="average", young_boost=1.0),
        LookalikeTrainConfig(epochs=1, patience=0, finetune_user=True, finetune_lr_mult=1.0),
        user_model=um,
    )
    m.fit(view, seed=0)
    for k, v in um.tower.state_dict().items():
        torch.testing.assert_close(v, before[k])
    frozen = embed_users(um, view)
    assert m.universal.shape == frozen.shape and np.abs(m.universal - frozen).max() > 1e-4
    m.set_seed_splits((Split.TRAIN,))
    offsets, users = item_seed_csr(toy, (Split.TRAIN,))
    items = np.flatnonzero(np.diff(offsets) > 0)[:3]
    sets = [users[offsets[j] : offsets[j + 1]] for j in items]
    who = np.arange(toy.n_users)
    np.testing.assert_allclose(
        m.score_seeded_items(who, sets), m.score_users(who, items), rtol=1e-5, atol=1e-5
    )
