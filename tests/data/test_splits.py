"""Split guarantees: no held-out click in TRAIN, cold items fully held out, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ralm.data.encoded import Split
from ralm.data.splits import SplitConfig, SplitMethod, assign_splits, rank_within_groups


def _events(seed: int = 0, n_users: int = 60, n_items: int = 40, n: int = 2000):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n)
    item = (rng.zipf(1.5, n) - 1) % n_items
    ts = np.sort(rng.integers(0, 1000, n))  # many ties on purpose
    label = (rng.random(n) < 0.9).astype(np.int8)
    return user, item, ts, label, n_items


def _split(cfg: SplitConfig, seed: int = 0, given: np.ndarray | None = None):
    user, item, ts, label, n_items = _events(seed)
    split, extra = assign_splits(user, item, ts, label, n_items, cfg, given)
    return user, item, ts, label, split, extra


def test_rank_within_groups_matches_python() -> None:
    g = np.array([2, 0, 2, 1, 0, 2])
    assert rank_within_groups(g).tolist() == [0, 0, 1, 0, 1, 2]
    key = np.array([0.9, 0.5, 0.1, 0.3, 0.2, 0.5])
    assert rank_within_groups(g, key).tolist() == [2, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("method", ["per_user", "random_per_user"])
def test_per_user_counts_and_train_kept(method: SplitMethod) -> None:
    cfg = SplitConfig(method=method, valid_frac=0.2, test_frac=0.1, cold_item_frac=0.0)
    user, _, ts, _, split, _ = _split(cfg)
    for u in np.unique(user):
        s = split[user == u]
        n = s.size
        n_test = min(int(np.floor(n * 0.1 + 0.5)), n - 1)
        n_valid = min(int(np.floor(n * 0.2 + 0.5)), n - 1 - n_test)
        assert (s == Split.TEST).sum() == n_test
        assert (s == Split.VALID).sum() == n_valid
        assert (s == Split.TRAIN).sum() >= 1
        if method == "per_user":  # chronological: TRAIN, then VALID, then TEST
            assert np.all(np.diff(s) >= 0)
            assert ts[user == u][s == Split.TRAIN].max() <= ts[user == u][s != Split.TRAIN].min()


def test_random_per_user_is_not_chronological() -> None:
    cfg = SplitConfig(method="random_per_user", cold_item_frac=0.0)
    user, _, _, _, split, _ = _split(cfg)
    broken = [np.any(np.diff(split[user == u]) < 0) for u in np.unique(user)]
    assert sum(broken) > 10


def test_global_time_cut() -> None:
    cfg = SplitConfig(method="global_time", valid_frac=0.1, test_frac=0.2, cold_item_frac=0.0)
    _, _, ts, _, split, extra = _split(cfg)
    assert ts[split == Split.TRAIN].max() < extra["valid_from_ts"]
    assert ts[split == Split.VALID].max() < extra["test_from_ts"] == ts[split == Split.TEST].min()
    assert abs((split == Split.TEST).mean() - 0.2) < 0.02  # ties may move a few rows later


def test_given_split_uses_the_test_file() -> None:
    given = np.zeros(2000, dtype=bool)
    given[::7] = True
    cfg = SplitConfig(method="given", valid_frac=0.1, cold_item_frac=0.0)
    *_, split, _ = _split(cfg, given=given)
    assert np.all(split[given] == Split.TEST)
    assert np.all(split[~given] != Split.TEST)
    assert (split == Split.VALID).sum() > 0
    with pytest.raises(ValueError, match="given"):
        _split(cfg)


@pytest.mark.parametrize("method", ["per_user", "global_time", "random_per_user"])
def test_cold_items_are_held_out_entirely(method: SplitMethod) -> None:
    cfg = SplitConfig(method=method, cold_item_frac=0.3, cold_min_clicks=5, seed=3)
    _, item, _, label, split, extra = _split(cfg)
    cold_mask = np.isin(split, [Split.COLD_SEED, Split.COLD_TEST])
    cold = np.unique(item[cold_mask])
    clicks = np.bincount(item[label > 0], minlength=40)
    eligible = np.flatnonzero(clicks >= 5)
    assert cold.size == extra["n_cold_items"] == int(np.floor(eligible.size * 0.3 + 0.5)) > 0
    assert np.all(np.isin(cold, eligible))
    assert not np.isin(cold, item[~cold_mask]).any()  # never in TRAIN/VALID/TEST
    for j in cold:  # earliest half of each cold item's rows are seeds
        s = split[item == j]
        assert (s == Split.COLD_SEED).sum() == max(int(np.floor(s.size * 0.5 + 0.5)), 1)
        assert np.all(np.diff(s) >= 0)  # seeds (3) strictly before cold-test rows (4)


def test_same_seed_same_split_other_seed_other_cold_items() -> None:
    cfg = SplitConfig(method="random_per_user", cold_item_frac=0.3, cold_min_clicks=5, seed=7)
    a = _split(cfg)[4]
    b = _split(cfg)[4]
    c = _split(cfg.model_copy(update={"seed": 8}))[4]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_params_are_recorded() -> None:
    cfg = SplitConfig(method="per_user", seed=5)
    *_, extra = _split(cfg)
    assert extra["method"] == "per_user" and extra["seed"] == 5
    assert sum(extra["counts"].values()) == 2000


def test_config_rejects_bad_fractions() -> None:
    with pytest.raises(ValidationError):
        SplitConfig(valid_frac=0.6, test_frac=0.5)
    with pytest.raises(ValidationError):
        SplitConfig(method="by_magic")  # type: ignore[arg-type]
