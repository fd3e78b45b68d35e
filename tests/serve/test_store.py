"""SQLite-only behaviour of the seed store (the shared contract is test_store_contract.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
