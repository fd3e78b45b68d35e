"""The audience prior's young-item rule: a young item is counted by its click rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset, Interactions, Split
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.item_age import (
    first_click_times,
    item_ages,
    time_usable,
    typical_item_age,
    with_young_age,
)
from ralm.lookalike.model import LookalikeModel

DAY = 86400.0


def _model(**update: object) -> LookalikeModel:
    torch.manual_seed(0)
    cfg = LookalikeConfig(m=6, h=4, k=3).model_copy(update=update)
    return LookalikeModel(cfg)


def test_young_factor_is_the_rate_extrapolation_clamped_to_1_and_the_boost() -> None:
    model = _model(young_age=10 * DAY, young_boost=4.0)
    age = torch.tensor([0.0, 1 * DAY, 2.5 * DAY, 5 * DAY, 10 * DAY, 300 * DAY, -3.0])
    f = model.young_factor(age)
    assert f is not None
    # young_age / age, at most 4 (age <= 2.5 days), at least 1 (age >= 10 days);
    # a negative age (a clock behind the first click) counts as brand new
    want = torch.tensor([4.0, 4.0, 4.0, 2.0, 1.0, 1.0, 4.0])
    torch.testing.assert_close(f, want)


@pytest.mark.parametrize("update", [{"young_age": 0.0}, {"young_age": DAY, "young_boost": 1.0}])
def test_no_young_rule_without_an_age_or_a_boost(update: dict[str, float]) -> None:
    model = _model(**update)
    assert model.young_factor(torch.tensor([0.0, 5.0])) is None
    assert _model(young_age=DAY).young_factor(None) is None


def test_prior_counts_a_young_item_by_its_rate_and_leaves_mature_items_alone() -> None:
    model = _model(young_age=8 * DAY, young_boost=10.0)
    with torch.no_grad():
        model.prior_weight.fill_(0.3)
    sizes = torch.tensor([[10, 20, 10], [5, 3, 0], [2, 2, 0], [1, 0, 0]])  # n = 40, 8, 4, 1
    age = torch.tensor([100 * DAY, 0.0, 2 * DAY, 0.5 * DAY])
    n = sizes.sum(1).double()
    factor = torch.tensor([1.0, 10.0, 4.0, 10.0], dtype=torch.float64)
    want = model.gamma.double() * torch.log1p(n * factor)
    got = model.seed_prior_term(sizes, age)
    assert got is not None
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    plain = model.seed_prior_term(sizes)  # no ages: every item counts as mature
    assert plain is not None
    torch.testing.assert_close(plain.double(), model.gamma.double() * torch.log1p(n))
    assert got[0] == plain[0]  # the mature item's prior is unchanged


def test_every_scoring_path_applies_the_rule_alike() -> None:
    model = _model(young_age=8 * DAY, young_boost=10.0)
    with torch.no_grad():
        model.prior_weight.fill_(0.3)
    torch.manual_seed(1)
    cent = torch.randn(4, 3, 4).abs()
    mask = torch.ones(4, 3, dtype=torch.bool)
    sizes = torch.tensor([[10, 20, 10], [5, 3, 1], [2, 2, 1], [1, 1, 1]])
    age = torch.tensor([100 * DAY, 0.0, 2 * DAY, 0.5 * DAY])
    e_u = model.transform(torch.randn(2, 6))
    with torch.no_grad():
        gv = model.item_global(cent, mask, sizes)
        old = model.score(e_u, cent, mask, gv, sizes=sizes)
        new = model.score(e_u, cent, mask, gv, sizes=sizes, age=age)
        pairs = model.score_pairs(e_u[:1].expand(4, -1), cent, mask, gv, sizes=sizes, age=age)
    n = sizes.sum(1).float()
    f = torch.tensor([1.0, 10.0, 4.0, 10.0])
    lift = model.gamma * (torch.log1p(n * f) - torch.log1p(n))
    torch.testing.assert_close(new, old + lift.detach()[None, :], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairs, new[0], atol=1e-5, rtol=1e-5)


def _dataset(ts: list[float], items: list[int], splits: list[int]) -> EncodedDataset:
    n = len(ts)
    inter = Interactions(
        user=np.arange(n, dtype=np.int64) % 3,
        item=np.asarray(items, dtype=np.int64),
        ts=np.asarray(ts, dtype=np.int64),
        label=np.ones(n, dtype=np.int8),
        split=np.asarray(splits, dtype=np.int8),
    )
    return EncodedDataset(
        name="ages",
        user_ids=np.array(["u0", "u1", "u2"]),
        item_ids=np.array(["a", "b", "c", "d"]),
        fields=[],
        univalent={},
        multivalent={},
        continuous=np.zeros((3, 0), dtype=np.float32),
        interactions=inter,
    )


T, V = int(Split.TRAIN), int(Split.VALID)


def test_item_ages_from_first_clicks_and_the_median_clicked_age() -> None:
    # item 0 first clicked at day 0, item 1 at day 4, item 2 only in VALID, item 3 never
    ds = _dataset(
        ts=[0, 2 * DAY, 4 * DAY, 6 * DAY, 10 * DAY, 12 * DAY],
        items=[0, 0, 1, 1, 0, 2],
        splits=[T, T, T, T, T, V],
    )
    first, clock = first_click_times(ds)
    np.testing.assert_array_equal(first, [0.0, 4 * DAY, 0.0, 0.0])  # 0 = never clicked
    assert clock == 10 * DAY
    np.testing.assert_array_equal(item_ages(ds), [10 * DAY, 6 * DAY, 10 * DAY, 10 * DAY])
    # clicked ages over TRAIN: 0, 2, 0, 2, 10 days -> median 2 days
    assert typical_item_age(ds) == 2 * DAY
    cfg = with_young_age(LookalikeConfig(), ds)
    assert cfg.young_age == 2 * DAY
    assert with_young_age(LookalikeConfig(young_age=5.0), ds).young_age == 5.0  # kept
    assert with_young_age(LookalikeConfig(young_boost=1.0), ds).young_age == 0.0  # rule off


def test_no_young_age_when_the_timestamps_are_made_up() -> None:
    ds = _dataset(ts=[0, 1, 2, 3], items=[0, 0, 1, 1], splits=[T, T, T, T])
    assert time_usable(ds) and typical_item_age(ds) > 0
    ds.extra = {"split": {"time_usable": False}}  # file order, not time
    assert not time_usable(ds)
    assert typical_item_age(ds) == 0.0
    assert with_young_age(LookalikeConfig(), ds).young_age == 0.0
