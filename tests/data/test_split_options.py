"""Issue 13 item 6: a given split stays as given; VALID from a random sample, a given file,
the time tail or nowhere; VALID folded back; ML-1M ratings without timestamps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from generic_fixture import write_tiny
from test_readers import write_ml1m

from ralm.data.clicks import fit_splits, split_clicks
from ralm.data.encoded import Split
from ralm.data.ingest import ingest, load_raw
from ralm.data.readers import read_ml1m
from ralm.data.schema import load_schema
from ralm.data.splits import SplitConfig, assign_splits
from ralm.errors import DataError


def _events(seed: int = 0, n_users: int = 50, n_items: int = 30, n: int = 3000):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n)
    item = rng.integers(0, n_items, n)
    ts = np.arange(n, dtype=np.int64)  # one row per second: the tail is well defined
    label = np.ones(n, dtype=np.int8)
    return user, item, ts, label, n_items


def test_given_split_moves_no_item_into_the_cold_hold_out_by_default() -> None:
    user, item, ts, label, n_items = _events()
    given = np.zeros(ts.size, bool)
    given[::5] = True
    cfg = SplitConfig(method="given")  # cold_item_frac left at its default
    split, extra = assign_splits(user, item, ts, label, n_items, cfg, given)
    assert cfg.cold_fraction == 0.0 and extra["n_cold_items"] == 0
    assert np.all(split[given] == Split.TEST)  # every given TEST row stays TEST
    assert np.all(np.isin(split[~given], [Split.TRAIN, Split.VALID]))
    asked = SplitConfig(method="given", cold_item_frac=0.1, cold_min_clicks=5)
    split, extra = assign_splits(user, item, ts, label, n_items, asked, given)
    assert extra["n_cold_items"] > 0  # ...unless asked for
    assert SplitConfig().cold_fraction == 0.1  # derived splits keep the old default


@pytest.mark.parametrize("method", ["per_user", "given"])
def test_random_valid_is_a_per_user_sample_not_the_tail(method: str) -> None:
    user, item, ts, label, n_items = _events(1)
    given = (np.arange(ts.size) % 7 == 0) if method == "given" else None
    cfg = SplitConfig(method=method, valid_from="random", cold_item_frac=0.0, seed=3)  # type: ignore[arg-type]
    split, extra = assign_splits(user, item, ts, label, n_items, cfg, given)
    assert extra["valid_source"] == "random"
    tail = SplitConfig(method=method, valid_from="train-tail", cold_item_frac=0.0)  # type: ignore[arg-type]
    split_tail, _ = assign_splits(user, item, ts, label, n_items, tail, given)
    np.testing.assert_array_equal(split == Split.TEST, split_tail == Split.TEST)  # same TEST
    base = ~(split == Split.TEST)
    for u in range(50):  # same VALID count per user as the tail rule, other rows
        mu = base & (user == u)
        assert (split[mu] == Split.VALID).sum() == (split_tail[mu] == Split.VALID).sum()
        assert (split[mu] == Split.TRAIN).sum() >= 1
    assert not np.array_equal(split, split_tail)
    # the random VALID rows are spread over time: some precede the user's last TRAIN row
    v = split == Split.VALID
    last_train = np.zeros(50)
    np.maximum.at(last_train, user[split == Split.TRAIN], ts[split == Split.TRAIN])
    assert (ts[v] < last_train[user[v]]).mean() > 0.5


def test_auto_valid_is_random_without_usable_time() -> None:
    user, item, _, label, n_items = _events(2)
    const = np.zeros(user.size, dtype=np.int64)  # all timestamps equal: no usable time
    cfg = SplitConfig(cold_item_frac=0.0)
    _, extra = assign_splits(user, item, const, label, n_items, cfg)
    assert extra["valid_source"] == "random" and not extra["time_usable"]
    _, extra = assign_splits(user, item, np.arange(user.size), label, n_items, cfg)
    assert extra["valid_source"] == "train-tail"
    _, extra = assign_splits(
        user, item, np.arange(user.size), label, n_items, cfg, None, None, False
    )
    assert extra["valid_source"] == "random"  # file-order time is no usable time


def test_valid_none_and_given_file() -> None:
    user, item, ts, label, n_items = _events(3)
    cfg = SplitConfig(valid_from="none", cold_item_frac=0.0)
    split, _ = assign_splits(user, item, ts, label, n_items, cfg)
    assert not (split == Split.VALID).any() and (split == Split.TEST).any()
    vfile = np.arange(ts.size) % 11 == 0
    cfg = SplitConfig(valid_from="given-file", cold_item_frac=0.0)
    split, extra = assign_splits(user, item, ts, label, n_items, cfg, None, vfile)
    np.testing.assert_array_equal(split == Split.VALID, vfile)
    assert extra["valid_source"] == "given-file"
    auto = SplitConfig(cold_item_frac=0.0)
    split_auto, _ = assign_splits(user, item, ts, label, n_items, auto, None, vfile)
    np.testing.assert_array_equal(split_auto, split)  # auto takes the file when given
    with pytest.raises(ValueError, match="given-file"):
        assign_splits(user, item, ts, label, n_items, cfg)


def _with_files(tmp_path: Path, valid: str | None) -> Path:
    toml = write_tiny(tmp_path)
    (tmp_path / "test.csv").write_text("user_id,item_id,timestamp\nu1,i4,200\nu2,i3,201\n")
    extra = '[files]\ntest_interactions = "test.csv"'
    if valid is not None:
        (tmp_path / "valid.csv").write_text(valid)
        extra += '\nvalid_interactions = "valid.csv"'
    toml.write_text(toml.read_text().replace("[files]", extra))
    return toml


def test_given_validation_file_is_valid_and_fold_keeps_train_whole(tmp_path: Path) -> None:
    toml = _with_files(tmp_path, "user_id,item_id,timestamp\nu3,i1,160\nu4,i2,161\n")
    ds = ingest(load_raw(load_schema(toml)), SplitConfig(method="given"))
    it = ds.interactions
    valid = sorted(zip(ds.user_ids[it.user[it.split == Split.VALID]],
                       ds.item_ids[it.item[it.split == Split.VALID]], strict=True))  # fmt: skip
    assert valid == [("u3", "i1"), ("u4", "i2")]
    assert ds.extra["split"]["valid_source"] == "given-file"
    assert fit_splits(ds) == (Split.TRAIN,)

    def history(d, uid: str) -> list[str]:
        off, val = d.multivalent["history"]
        u = int(np.flatnonzero(d.user_ids == uid)[0])
        return sorted(str(d.item_ids[v - 1]) for v in val[off[u] : off[u + 1]])

    assert "i1" not in history(ds, "u3")  # VALID is not history ...
    folded = ingest(load_raw(load_schema(toml)), SplitConfig(method="given", fold_valid=True))
    assert fit_splits(folded) == (Split.TRAIN, Split.VALID)
    assert "i1" in history(folded, "u3")  # ... unless folded back into the given train
    assert "i4" not in history(folded, "u1")  # TEST never is
    np.testing.assert_array_equal(folded.interactions.split, it.split)  # VALID still marked
    u, _ = split_clicks(folded, fit_splits(folded))
    assert len(u) == int(np.isin(it.split, [Split.TRAIN, Split.VALID]).sum() - 1)  # 1 label-0


def test_given_file_without_a_file_is_a_data_error(tmp_path: Path) -> None:
    toml = _with_files(tmp_path, None)
    with pytest.raises(DataError, match=r"valid_interactions"):
        ingest(load_raw(load_schema(toml)), SplitConfig(method="given", valid_from="given-file"))


def test_ml1m_ratings_without_timestamps_use_file_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = write_ml1m(tmp_path / "ml-1m")
    (d / "ratings.dat").write_text("1::1193::5\n1::661::3\n2::1193::4\n")
    raw = read_ml1m(d)
    assert raw.time_from_order and "file order" in caplog.text
    ds = ingest(raw, SplitConfig(cold_item_frac=0.0, valid_frac=0.0, test_frac=0.0))
    it = ds.interactions
    assert it.ts.tolist() == [0, 1, 2]  # file order
    assert [(ds.user_ids[u], ds.item_ids[i]) for u, i in zip(it.user, it.item, strict=True)] == [
        ("1", "1193"), ("1", "661"), ("2", "1193")
    ]  # fmt: skip
    (d / "ratings.dat").write_text("1::1193::5::\n1::661::3::\n")  # empty timestamp field
    assert read_ml1m(d).time_from_order
    (d / "ratings.dat").write_text("1::1193::5\n1::661::3::978302109\n")  # mixed forms
    with pytest.raises(DataError, match=r"ratings.dat, line 2: expected 3 columns, got 4"):
        read_ml1m(d)
