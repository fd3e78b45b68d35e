"""SQLite-only behaviour of the seed store (the shared contract is test_store_contract.py)."""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ralm.serve import seed_store
from ralm.serve.store import Click, ItemState, SeedStore, SQLiteSeedStore


def test_old_name_and_reexports() -> None:
    assert SeedStore is SQLiteSeedStore
    assert Click is seed_store.Click and ItemState is seed_store.ItemState


def test_survives_reopen_with_normal_sync(tmp_path: Path) -> None:
    st = SQLiteSeedStore(tmp_path / "s.db", synchronous="NORMAL")
    st.add_clicks([Click("a", "x", 1.0)])
    st.set_meta("index", {"version": 3})
    st.close()
    st = SQLiteSeedStore(tmp_path / "s.db")
    assert st.seeds("x") == ["a"]
    assert st.get_meta("index") == {"version": 3}
    st.close()


def test_sequence_numbers_are_never_reused(tmp_path: Path) -> None:
    """A seq handed to a seed that was trimmed at once is not handed out again."""
    st = SQLiteSeedStore(tmp_path / "s.db", max_seeds=1)
    st.add_clicks([Click("new", "x", 5.0)])  # seq 1
    st.add_clicks([Click("old", "x", 1.0)])  # seq 2, trimmed in the same call
    assert st.seeds("x") == ["new"] and st.item("x").changed_seq == 1  # type: ignore[union-attr]
    st.close()
    st = SQLiteSeedStore(tmp_path / "s.db", max_seeds=1)
    st.add_clicks([Click("newer", "x", 9.0)])
    assert st.item("x").changed_seq == 3  # type: ignore[union-attr]
    assert st.clicks_since(0) == ([Click("newer", "x", 9.0)], 3)
    st.close()


def test_failed_call_leaves_nothing(tmp_path: Path) -> None:
    st = SQLiteSeedStore(tmp_path / "s.db")
    st.add_clicks([Click("a", "x", 1.0)])
    with pytest.raises(ValueError, match="finite"):
        st.add_clicks([Click("b", "x", 2.0), Click("c", "x", float("inf"))])
    assert st.seeds("x") == ["a"] and st.n_seed_rows() == 1
    st.add_clicks([Click("b", "x", 2.0)])
    assert st.item("x").changed_seq == 2  # type: ignore[union-attr]  # the seq was rolled back
    st.close()


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteSeedStore(tmp_path / "s.db", synchronous="OFF")
    with pytest.raises(ValueError, match="max_seeds"):
        SQLiteSeedStore(tmp_path / "s.db", max_seeds=0)


def test_two_writers_on_one_file_share_the_sequence(tmp_path: Path) -> None:
    """Two processes (here: two stores) writing one file never hand out a seq twice."""
    a = SQLiteSeedStore(tmp_path / "s.db")
    b = SQLiteSeedStore(tmp_path / "s.db")
    for k in range(6):
        (a if k % 2 else b).add_clicks([Click(f"u{k}", "x", float(k)), Click(f"u{k}", "y", 1.0)])
    b.bulk_import([("v", "z", 1.0)])
    a.add_clicks([Click("w", "z", 2.0)])
    events, mark = a.clicks_since(0)
    assert len(events) == 14 and b.clicks_since(0) == (events, mark)
    paged, w = [], 0
    while page := a.clicks_since(w, limit=1)[0]:  # a seq handed out twice would be skipped
        paged += page
        w = a.clicks_since(w, limit=1)[1]
    assert paged == events
    assert a.seeds("x") == b.seeds("x") == [f"u{k}" for k in reversed(range(6))]
    assert a.item("z").changed_seq == mark  # type: ignore[union-attr]
    a.close()
    b.close()


def test_bulk_import_raises_the_page_cache_only_while_it_runs(tmp_path: Path) -> None:
    """The import runs with a large page cache (the B-trees thrash in SQLite's 2 MiB
    default at wechat scale) and leaves the connection's setting as it was, on error too."""
    from ralm.serve import store as store_mod

    st = SQLiteSeedStore(tmp_path / "s.db")
    (before,) = st._w.execute("PRAGMA cache_size").fetchone()
    seen: list[int] = []

    def clicks() -> Iterator[tuple[str, str, float]]:
        seen.append(st._w.execute("PRAGMA cache_size").fetchone()[0])
        yield ("u", "i", 1.0)

    assert st.bulk_import(clicks()) == 1
    assert seen == [-store_mod.BULK_CACHE_KIB]
    assert st._w.execute("PRAGMA cache_size").fetchone()[0] == before

    def bad() -> Iterator[tuple[str, str, float]]:
        yield ("u", "j", 2.0)
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        st.bulk_import(bad())
    assert st._w.execute("PRAGMA cache_size").fetchone()[0] == before
    assert st.n_items() == 1  # the failed import was rolled back


def _dump(st: SQLiteSeedStore) -> tuple[list[Any], list[Any], list[Any], int]:
    """Everything bulk_import writes: seeds (with ts and seq), items, the seq counter."""
    con = st._w
    seeds = con.execute("SELECT * FROM seeds ORDER BY item_id, user_id").fetchall()
    items = con.execute(
        "SELECT item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq "
        "FROM items ORDER BY item_id"
    ).fetchall()
    idx = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'seeds' ORDER BY name"
    ).fetchall()
    return seeds, items, idx, st._seq


def _history(seed: int, n: int, users: int, items: int) -> list[tuple[str, str, float]]:
    """Clicks with repeats, equal times (ties broken by arrival), older re-sends and
    items far over max_seeds."""
    rng = random.Random(seed)
    rows = [
        (f"u{rng.randrange(users)}", f"i{rng.randrange(items)}", float(rng.randrange(60)))
        for _ in range(n)
    ]
    rows += [(u, i, t - 1000.0) for u, i, t in rng.sample(rows, n // 5)]
    rows += rng.sample(rows, n // 5)
    rows += [("solo", "only-one", -5.0), ("Zed", "i0", 59.0), ("éa", "i1", 61.0)]
    return rows


@pytest.mark.parametrize(("seed", "max_seeds"), [(0, 3), (1, 7), (2, 1), (3, 10_000)])
def test_bulk_import_into_empty_store_equals_the_general_path_and_add_clicks(
    tmp_path: Path, seed: int, max_seeds: int
) -> None:
    """The one-pass load of an empty store writes exactly what the general (upsert) path
    writes (and, up to the seq numbering, one add_clicks call): seeds with ts and seq,
    trimming, counts, first_seen (earliest click, trimmed ones included), last_click,
    changed_seq, the seq counter and the indexes; the result survives a reopen."""
    rows = _history(seed, 600, users=25, items=6)
    fast = SQLiteSeedStore(tmp_path / "fast.db", max_seeds=max_seeds)
    general = SQLiteSeedStore(tmp_path / "general.db", max_seeds=max_seeds)
    general._bulk_load_empty = False
    live = SQLiteSeedStore(tmp_path / "live.db", max_seeds=max_seeds)
    for st in (fast, general, live):  # a store that handed out seqs before
        st.add_clicks([Click("pre", "gone", 1.0)])
        st._w.execute("DELETE FROM seeds")
        st._w.execute("DELETE FROM items")
    n = fast.bulk_import(iter(rows))
    assert n == general.bulk_import(rows) == fast.n_seed_rows()
    live.add_clicks([Click(u, i, t) for u, i, t in rows])
    a, b, c = _dump(fast), _dump(general), _dump(live)
    assert a == b
    assert a[3] == 1 + len(rows)  # every imported click took a seq
    # add_clicks numbers only the events it stores (and stamps first_seen "now"): same
    # seeds with the same times and recency order, counts and last_click
    assert [r[:3] for r in a[0]] == [r[:3] for r in c[0]]
    assert all(fast.seeds(i) == live.seeds(i) for i, *_ in a[1])
    assert [(r[0], r[1], r[3]) for r in a[1]] == [(r[0], r[1], r[3]) for r in c[1]]
    earliest: dict[str, float] = {}
    for _, i, t in rows:
        earliest[i] = min(earliest.get(i, t), t)
    assert {r[0]: r[2] for r in a[1]} == earliest
    assert max(r[1] for r in a[1]) <= max_seeds
    # a re-import takes the general path in both (with equal times a trimmed seed can come
    # back with a newer seq, so it is idempotent only up to ties, as it always was)
    assert fast.bulk_import(rows) == general.bulk_import(rows)
    a = _dump(fast)
    assert a == _dump(general)
    fast.close()
    fast = SQLiteSeedStore(tmp_path / "fast.db", max_seeds=max_seeds)
    assert _dump(fast) == a
    assert fast._w.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for st in (fast, general, live):
        st.close()


def test_bulk_import_into_empty_store_rolls_back(tmp_path: Path) -> None:
    """A failing load of an empty store leaves it empty, indexes and seq counter as they
    were; a NaN time is refused like the general path refuses it (NOT NULL)."""
    st = SQLiteSeedStore(tmp_path / "s.db")
    before = _dump(st)

    def bad() -> Iterator[tuple[str, str, float]]:
        yield ("u", "j", 2.0)
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        st.bulk_import(bad())
    assert _dump(st) == before
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        st.bulk_import([("u", "j", 2.0), ("u", "j", math.nan)])
    assert _dump(st) == before
    general = SQLiteSeedStore(tmp_path / "g.db")
    general._bulk_load_empty = False
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        general.bulk_import([("u", "j", 2.0), ("u", "j", math.nan)])
    assert st.bulk_import([("u", "j", 2.0)]) == 1 and st.item("j").changed_seq == 1  # type: ignore[union-attr]
    st.close()
    general.close()
