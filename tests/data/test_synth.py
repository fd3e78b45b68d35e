"""The synthetic generator: exact counts, determinism, planted structure, writers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Split
from ralm.data.splits import SplitConfig
from ralm.data.synth import (
    PRESETS,
    SynthConfig,
    SynthData,
    generate,
    preset,
    to_encoded,
    write_encoded,
    write_parquet,
)
from ralm.errors import ConfigError


@pytest.fixture(scope="module")
def tiny() -> SynthData:
    return generate(preset("tiny"))


def _click_matrix(d: SynthData) -> np.ndarray:
    a = np.zeros((d.n_users, d.n_items), dtype=bool)  # (n_users, n_items)
    a[d.click_user, d.click_item] = True
    return a


# ---- sizes and validity ---------------------------------------------------------------
def test_tiny_exact_counts_and_valid_log(tiny: SynthData) -> None:
    cfg = tiny.config
    assert (tiny.n_users, tiny.n_items, tiny.n_clicks) == (2_000, 500, 20_000)
    assert np.bincount(tiny.click_user, minlength=tiny.n_users).min() >= 1
    assert np.bincount(tiny.click_item, minlength=tiny.n_items).min() >= 1
    assert np.bincount(tiny.click_user).max() <= cfg.click_cap
    keys = tiny.click_user * tiny.n_items + tiny.click_item
    assert np.unique(keys).size == keys.size  # (user, item) pairs are distinct
    assert np.all(np.diff(tiny.click_ts) >= 0)  # sorted by time
    assert tiny.click_ts.min() >= cfg.start_ts
    assert tiny.click_ts.max() < cfg.start_ts + cfg.period_s
    off, val = tiny.tags
    assert off.shape == (tiny.n_users + 1,) and off[-1] == val.size
    assert val.min() >= 0 and val.max() < len(tiny.tag_names)


def test_wechat_preset_is_the_paper_scale() -> None:
    cfg = preset("wechat")
    assert (cfg.n_users, cfg.n_items, cfg.n_clicks) == (2_984_724, 43_500, 8_891_670)
    assert set(PRESETS) == {"tiny", "small", "wechat"}
    small = preset("small")
    assert (small.n_users, small.n_items, small.n_clicks) == (50_000, 5_000, 500_000)


def test_exact_counts_under_heavy_tail_and_tight_cap() -> None:
    # cap = 80 // 4 = 20 clicks per user and sigma 2: many users hit the cap, redraws needed
    cfg = SynthConfig(
        n_users=300, n_items=80, n_clicks=4_000, n_topics=4, n_groups=3, clicks_sigma=2.0
    )
    d = generate(cfg)
    counts = np.bincount(d.click_user, minlength=300)
    assert d.n_clicks == 4_000 and counts.max() == 20 and counts.min() >= 1
    assert np.unique(d.click_user * 80 + d.click_item).size == 4_000


@pytest.mark.parametrize(
    "overrides",
    [{"n_clicks": 10}, {"n_clicks": 10**9}, {"n_items": 5, "n_clicks": 3_000}, {"p_noise": 0.9}],
)
def test_impossible_configs_raise_config_error(overrides: dict) -> None:
    with pytest.raises(ConfigError, match="synth"):
        preset("tiny", **overrides)


def test_unknown_preset_and_bad_field() -> None:
    with pytest.raises(ConfigError, match="unknown synth preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="n_users"):
        preset("tiny", n_users=-1)


def test_determinism(tiny: SynthData) -> None:
    again = generate(preset("tiny"))
    for name in ("click_user", "click_item", "click_ts", "user_group", "city", "item_topic"):
        np.testing.assert_array_equal(getattr(again, name), getattr(tiny, name))
    np.testing.assert_array_equal(again.age, tiny.age)  # NaN-aware
    other = generate(preset("tiny", seed=1))
    assert not np.array_equal(other.click_item, tiny.click_item)


# ---- planted structure ----------------------------------------------------------------
def test_same_group_users_share_more_items(tiny: SynthData) -> None:
    a = _click_matrix(tiny)
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, tiny.n_users, (2, 30_000))
    keep = u != v
    u, v = u[keep], v[keep]
    shared = (a[u] & a[v]).sum(axis=1)  # (pairs,) items clicked by both
    same = tiny.user_group[u] == tiny.user_group[v]
    assert shared[same].mean() > 2.0 * shared.mean()  # clear margin over random pairs


def test_features_predict_the_latent_group(tiny: SynthData) -> None:
    from sklearn.linear_model import LogisticRegression

    n = tiny.n_users
    off, val = tiny.tags
    tags = np.zeros((n, len(tiny.tag_names)))
    tags[np.repeat(np.arange(n), np.diff(off)), val] = 1.0
    x = np.hstack(
        [
            np.eye(2)[tiny.gender],
            np.eye(tiny.config.n_cities + 1)[tiny.city + 1],
            np.eye(7)[tiny.age_bucket() + 1],
            tags,
        ]
    )
    y = tiny.user_group
    clf = LogisticRegression(max_iter=300).fit(x[:1400], y[:1400])
    accuracy = clf.score(x[1400:], y[1400:])
    majority = np.bincount(y[1400:]).max() / y[1400:].size
    assert accuracy > 2.0 * majority
    # partly, not fully: features alone must not give the group away
    assert accuracy < 0.99


def test_popularity_is_zipf_like_within_topics(tiny: SynthData) -> None:
    clicks = np.bincount(tiny.click_item, minlength=tiny.n_items)
    slopes = []
    for t in range(tiny.config.n_topics):
        c = np.sort(clicks[tiny.item_topic == t])[::-1][:30]
        slopes.append(np.polyfit(np.log(np.arange(1, c.size + 1)), np.log(c), 1)[0])
    assert -1.3 < np.median(slopes) < -0.5  # zipf_exponent = 1, blurred by the mixture
    top = np.sort(clicks)[::-1]
    assert top[: tiny.n_items // 10].sum() > 0.3 * top.sum()  # 10 % of items, > 30 % of clicks


def test_click_counts_are_heavy_tailed(tiny: SynthData) -> None:
    counts = np.bincount(tiny.click_user)
    assert counts.max() >= 8 * np.median(counts)


def test_cold_items_seeds_look_like_their_later_clickers(tiny: SynthData) -> None:
    """The look-alike premise: a cold item's later clickers resemble its seed users."""
    it = to_encoded(tiny).interactions
    g, n_groups = tiny.user_group, tiny.config.n_groups
    prior = np.bincount(g, minlength=n_groups) / g.size  # (G,) group shares of all users
    match, chance = [], []
    for j in np.flatnonzero(tiny.item_is_new):
        seeds = it.user[(it.item == j) & (it.split == Split.COLD_SEED)]
        later = it.user[(it.item == j) & (it.split == Split.COLD_TEST)]
        if later.size == 0:
            continue
        seed_share = np.bincount(g[seeds], minlength=n_groups) / seeds.size  # (G,)
        match.append(seed_share[g[later]].mean())  # P(seed in the clicker's group)
        chance.append((seed_share * prior).sum())  # the same for a random user
    assert np.mean(match) > 2.0 * np.mean(chance)


def test_new_items_appear_late(tiny: SynthData) -> None:
    cfg = tiny.config
    new = tiny.item_is_new
    assert new.sum() == round(cfg.new_item_frac * tiny.n_items)
    first = np.full(tiny.n_items, np.iinfo(np.int64).max)
    np.minimum.at(first, tiny.click_item, tiny.click_ts)  # (n_items,) first click time
    late = cfg.start_ts + cfg.new_item_start * cfg.period_s
    assert first[new].min() >= late
    assert np.all(first >= tiny.item_birth_ts)
    assert np.median(first[~new]) < cfg.start_ts + 0.2 * cfg.period_s


# ---- writers --------------------------------------------------------------------------
def test_to_encoded_natural_cold_items_and_splits(tiny: SynthData) -> None:
    ds = to_encoded(tiny)
    it = ds.interactions
    cold_rows = it.mask(Split.COLD_SEED, Split.COLD_TEST)
    np.testing.assert_array_equal(cold_rows, tiny.item_is_new[it.item])
    for j in np.flatnonzero(tiny.item_is_new):  # seeds precede the held-out cold clicks
        rows = it.item == j
        seed_ts = it.ts[rows & (it.split == Split.COLD_SEED)]
        test_ts = it.ts[rows & (it.split == Split.COLD_TEST)]
        assert seed_ts.size >= 1
        assert test_ts.size == 0 or seed_ts.max() <= test_ts.min()
    train = it.split == Split.TRAIN
    test = it.split == Split.TEST
    last_train = np.zeros(ds.n_users, np.int64)
    np.maximum.at(last_train, it.user[train], it.ts[train])
    assert np.all(it.ts[test] >= last_train[it.user[test]])  # per-user chronological
    # history = distinct TRAIN items + 1, per user
    off, val = ds.multivalent["history"]
    hist_pairs = np.repeat(np.arange(ds.n_users), np.diff(off)) * ds.n_items + val - 1
    np.testing.assert_array_equal(
        hist_pairs, np.unique(it.user[train] * ds.n_items + it.item[train])
    )
    # categorical codes decode to the generator's raw values
    city = ds.univalent["city"]
    known = city > 0
    np.testing.assert_array_equal(
        ds.vocabs["city"][city[known] - 1], tiny.city_names[tiny.city[known]]
    )
    assert np.all(city[tiny.city == -1] == 0)  # missing -> OOV code 0
    assert ds.continuous.shape == (ds.n_users, 1)
    assert ds.continuous.min() >= 0.0 and ds.continuous.max() <= 1.0


def test_write_encoded_loads_back(tiny: SynthData, tmp_path: Path) -> None:
    root = write_encoded(tiny, tmp_path / "enc")
    ds = EncodedDataset.load(root)
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2_000, 500, 20_000)
    assert ds.history_field == "history"
    np.testing.assert_array_equal(np.load(root / "truth" / "user_group.npy"), tiny.user_group)
    from ralm.data.batching import gather_users

    batch = gather_users(ds, np.arange(8), exclude_items=np.full(8, -1))
    assert len(batch) == 8 and set(batch.multivalent) == {"tags", "history", "categories"}


@pytest.mark.skipif(
    importlib.util.find_spec("ralm.data.prepare") is None,
    reason="ralm.data.prepare (the data layer's ingestion) is not available yet",
)
@pytest.mark.parametrize("cold_item_frac", [0.0, 0.1])
def test_parquet_round_trips_through_ingestion(
    tiny: SynthData, tmp_path: Path, cold_item_frac: float
) -> None:
    from ralm.data.prepare import prepare

    toml = write_parquet(tiny, tmp_path / "pq")
    split = SplitConfig(cold_item_frac=cold_item_frac, seed=3)
    ingested = prepare(str(toml), split=split)
    fast = to_encoded(tiny, split, natural_cold=False)
    np.testing.assert_array_equal(ingested.user_ids, fast.user_ids)
    np.testing.assert_array_equal(ingested.item_ids, fast.item_ids)
    assert [f.to_json() for f in ingested.fields] == [f.to_json() for f in fast.fields]
    for col in ("user", "item", "ts", "label", "split"):
        np.testing.assert_array_equal(
            getattr(ingested.interactions, col), getattr(fast.interactions, col)
        )
    for name in fast.univalent:
        np.testing.assert_array_equal(ingested.univalent[name], fast.univalent[name])
    for name, (off, val) in fast.multivalent.items():
        np.testing.assert_array_equal(ingested.multivalent[name][0], off)
        np.testing.assert_array_equal(ingested.multivalent[name][1], val)
    for name, vocab in fast.vocabs.items():
        np.testing.assert_array_equal(ingested.vocabs[name], vocab)
    assert set(ingested.derived) == set(fast.derived) == {"categories"}
    for name, info in fast.derived.items():
        for part in ("counts", "item_offsets", "item_values"):
            np.testing.assert_array_equal(
                getattr(ingested.derived[name], part), getattr(info, part)
            )
    np.testing.assert_allclose(ingested.continuous, fast.continuous, atol=1e-6)


def test_cli_writes_both_formats(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ralm.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "e"), "--format",
              "encoded", "--users", "500", "--clicks", "4000", "--seed", "2"]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = EncodedDataset.load(tmp_path / "e")
    assert (ds.n_users, len(ds.interactions)) == (500, 4_000)
    res = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "dataset.toml").is_file()
    res = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--out", "x", "--clicks", "9"])
    assert isinstance(res.exception, ConfigError)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    for fmt in ("parquet", "encoded"):
        args = ["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "other")]
        res = runner.invoke(app, [*args, "--format", fmt])
        assert isinstance(res.exception, ConfigError), fmt
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    # re-running into an existing output folder replaces it
    res = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output


def test_interrupted_parquet_write_leaves_nothing_behind(
    tiny: SynthData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ralm.data.synth_parquet as sp

    def boom(data: SynthData) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sp, "items_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(tiny, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one
