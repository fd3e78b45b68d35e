"""Readers of RecBole atomic files and GroupLens ML-100K / ML-1M, on tiny written fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Split
from ralm.data.ingest import ingest
from ralm.data.readers import read_ml1m, read_ml100k, read_ml100k_recbole, read_recbole
from ralm.data.splits import SplitConfig
from ralm.errors import DataError

NO_SPLIT = SplitConfig(valid_frac=0.0, test_frac=0.0, cold_item_frac=0.0)


def _flags(*on: int) -> str:
    return "|".join("1" if g in on else "0" for g in range(19))


def write_ml100k(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t1\t881250960\n")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    item = (
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}\n"
        f"20|Crème (1994)|01-Jan-1994||http://y|{_flags(8)}\n"
    )
    (d / "u.item").write_bytes(item.encode("latin-1"))
    return d


def write_ml1m(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::97\n")
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    movies = (
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::Zoé: a b (1996)::Animation|Children's|Musical\n"
    )
    (d / "movies.dat").write_bytes(movies.encode("latin-1"))
    return d


def _user(ds: EncodedDataset, uid: str) -> int:
    return int(np.flatnonzero(ds.user_ids == uid)[0])


def _decode(ds: EncodedDataset, field: str, uid: str) -> object:
    u = _user(ds, uid)
    if field in ds.univalent:
        c = int(ds.univalent[field][u])
        return None if c == 0 else str(ds.vocabs[field][c - 1])
    off, val = ds.multivalent[field]
    return sorted(str(ds.vocabs[field][c - 1]) for c in val[off[u] : off[u + 1]])


def test_ml100k_grouplens(tmp_path: Path) -> None:
    ds = ingest(read_ml100k(write_ml100k(tmp_path / "ml-100k")), NO_SPLIT)
    assert ds.n_users == 2 and ds.n_items == 2 and len(ds.interactions) == 3
    assert np.all(ds.interactions.label == 1)  # every rating (even 1 star) is a click
    assert _decode(ds, "gender", "1") == "M"
    assert _decode(ds, "age", "1") == "18-24" and _decode(ds, "age", "2") == "50-55"
    assert _decode(ds, "occupation", "1") == "technician"
    assert _decode(ds, "zip", "1") == "85" and _decode(ds, "zip", "2") == "T8"
    assert _decode(ds, "genres", "1") == ["Animation", "Children's", "Comedy", "Drama"]
    assert _decode(ds, "history", "1") == ["10", "20"]
    assert _decode(ds, "history", "2") == ["10"]


def test_ml1m_dat_files(tmp_path: Path) -> None:
    ds = ingest(read_ml1m(write_ml1m(tmp_path / "ml-1m")), NO_SPLIT)
    assert ds.n_users == 2 and ds.item_ids.tolist() == ["661", "1193"]
    assert _decode(ds, "age", "1") == "<18" and _decode(ds, "age", "2") == "56+"
    assert _decode(ds, "occupation", "1") == "K-12 student"
    assert _decode(ds, "occupation", "2") == "self-employed"
    assert _decode(ds, "zip", "2") == "70"
    assert _decode(ds, "genres", "1") == ["Animation", "Children's", "Drama", "Musical"]
    assert ds.interactions.ts.tolist() == [97, 978300760, 978302109]


def test_ml1m_malformed_line_is_named(tmp_path: Path) -> None:
    d = write_ml1m(tmp_path / "ml-1m")
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(DataError, match=r"ratings.dat, line 2: expected 4 columns, got 3"):
        read_ml1m(d)


def test_ml100k_missing_file(tmp_path: Path) -> None:
    d = write_ml100k(tmp_path / "ml-100k")
    (d / "u.item").unlink()
    with pytest.raises(DataError, match=r"u\.item does not exist"):
        read_ml100k(d)


def write_recbole(d: Path, split_files: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    rows = ["1\t10\t4\t100\n", "2\t10\t3\t101\n", "1\t20\t5\t102\n", "2\t30\t1\t103\n"]
    if split_files:
        (d / f"{d.name}.train.inter").write_text(head + "".join(rows[:3]))
        (d / f"{d.name}.test.inter").write_text(head + rows[3])
    else:
        (d / f"{d.name}.inter").write_text(head + "".join(rows))
    (d / f"{d.name}.user").write_text(
        "user_id:token\tage:float\tgender:token\ttags:token_seq\n1\t20\tM\tx y\n2\t40\tF\ty\n"
    )
    (d / f"{d.name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
        '10\t"Quoted" title\tAction Drama\n20\tB\tComedy\n30\tC\tDrama\n'
    )
    return d


def test_recbole_generic_mapping(tmp_path: Path) -> None:
    ds = ingest(read_recbole(write_recbole(tmp_path / "mini")), NO_SPLIT)
    kinds = {f.name: f.kind for f in ds.fields}
    assert kinds == {
        "age": "continuous",
        "gender": "univalent",
        "tags": "multivalent",
        "history": "multivalent",
    }
    assert _decode(ds, "tags", "1") == ["x", "y"]
    assert _decode(ds, "history", "2") == ["10", "30"]
    np.testing.assert_allclose(ds.continuous[:, 0], [0.0, 1.0])


def test_recbole_benchmark_files_give_the_given_split(tmp_path: Path) -> None:
    raw = read_recbole(write_recbole(tmp_path / "mini", split_files=True))
    ds = ingest(raw, SplitConfig(method="given", valid_frac=0.0, cold_item_frac=0.0))
    it = ds.interactions
    assert it.split[it.ts == 103].tolist() == [Split.TEST]
    assert np.all(it.split[it.ts != 103] == Split.TRAIN)
    assert _decode(ds, "history", "2") == ["10"]  # the TEST click is not in the history


def test_recbole_bad_header(tmp_path: Path) -> None:
    d = write_recbole(tmp_path / "mini")
    (d / "mini.inter").write_text("user_id:token\titem_id:str\n1\t2\n")
    with pytest.raises(DataError, match=r"mini.inter, line 1, column 2: header 'item_id:str'"):
        read_recbole(d)


def test_recbole_copy_of_ml100k(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t3\t881250949\n"
    )
    (d / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t17\tF\twriter\t05201\n"
    )
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    )
    ds = ingest(read_ml100k_recbole(d), NO_SPLIT)
    assert _decode(ds, "age", "1") == "<18" and _decode(ds, "zip", "1") == "05"
    assert _decode(ds, "genres", "1") == ["Animation", "Children's", "Comedy"]
