"""The ``user item item ...`` reader (LightGCN / NGCF train.txt, test.txt) -> the given split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ralm.data.encoded import Split
from ralm.data.ingest import ingest
from ralm.data.prepare import prepare
from ralm.data.splits import SplitConfig
from ralm.data.user_item_lists import read_user_item_lines, read_user_item_lists
from ralm.errors import DataError

TRAIN = "0 10 11 12\n1 11\n\n2 12 10\n3\n"  # a blank line; user 3 has no train items
TEST = "0 13\n1 10 12\n2 11\n3 11\n"


def write_lists(d: Path, train: str = TRAIN, test: str = TEST, valid: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.txt").write_text(train)
    (d / "test.txt").write_text(test)
    if valid is not None:
        (d / "valid.txt").write_text(valid)
    return d


def _pairs_naive(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        toks = line.split()
        out += [(toks[0], t) for t in toks[1:]]
    return out


def _pairs(ds, split: Split) -> list[tuple[str, str]]:
    it = ds.interactions
    m = it.split == split
    return sorted(zip(ds.user_ids[it.user[m]], ds.item_ids[it.item[m]], strict=True))


def test_lines_parse_like_a_naive_loop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u, *rng.integers(0, 50, rng.integers(0, 6))])) for u in range(40)]
    text = "\n".join(lines) + "\n"
    (tmp_path / "f.txt").write_text(text.replace(" ", "  \t", 3))
    t = read_user_item_lines(tmp_path / "f.txt")
    got = list(zip(t["user_id"].to_pylist(), t["item_id"].to_pylist(), strict=True))
    assert got == _pairs_naive(text)


def test_given_split_is_kept_as_given(tmp_path: Path) -> None:
    raw = read_user_item_lists(write_lists(tmp_path / "gowalla-mini"))
    assert raw.time_from_order
    ds = ingest(raw, SplitConfig(method="given", valid_frac=0.0))
    assert ds.name == "gowalla-mini"
    assert _pairs(ds, Split.TEST) == sorted(_pairs_naive(TEST))
    assert _pairs(ds, Split.TRAIN) == sorted(_pairs_naive(TRAIN))
    assert ds.extra["split"]["n_cold_items"] == 0
    off, val = ds.multivalent["history"]
    u0 = int(np.flatnonzero(ds.user_ids == "0")[0])
    assert sorted(ds.item_ids[val[off[u0] : off[u0 + 1]] - 1]) == ["10", "11", "12"]
    assert [f.name for f in ds.fields] == ["history"]


def test_default_valid_is_random_and_a_valid_file_is_used(tmp_path: Path) -> None:
    ds = ingest(
        read_user_item_lists(write_lists(tmp_path / "a", train="0 1 2 3 4 5 6 7 8 9 10\n")),
        SplitConfig(method="given", valid_frac=0.3),
    )
    assert ds.extra["split"]["valid_source"] == "random"  # file order is no time
    assert (ds.interactions.split == Split.VALID).sum() == 3
    ds = ingest(
        read_user_item_lists(write_lists(tmp_path / "b", valid="0 12\n2 13\n")),
        SplitConfig(method="given"),
    )
    assert _pairs(ds, Split.VALID) == [("0", "12"), ("2", "13")]


def test_prepare_source_form(tmp_path: Path) -> None:
    d = write_lists(tmp_path / "lg")
    ds = prepare(f"lightgcn:{d}", tmp_path / "out", SplitConfig(method="given"))
    assert (tmp_path / "out" / "meta.json").is_file()
    assert len(ds.interactions) == len(_pairs_naive(TRAIN)) + len(_pairs_naive(TEST))


@pytest.mark.parametrize(
    ("train", "pattern"),
    [
        (b"0 1 2\n1 \xff\xfe 3\n", r"train.txt, line 2: not valid UTF-8"),
        (b"0\n1\n\n", r"train.txt: no \(user, item\) entries"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, train: bytes, pattern: str) -> None:
    d = write_lists(tmp_path / "x")
    (d / "train.txt").write_bytes(train)
    with pytest.raises(DataError, match=pattern):
        read_user_item_lists(d)


def test_missing_test_file(tmp_path: Path) -> None:
    d = write_lists(tmp_path / "x")
    (d / "test.txt").unlink()
    with pytest.raises(DataError, match=r"test.txt does not exist"):
        read_user_item_lists(d)
