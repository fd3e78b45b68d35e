"""SQLite-only behaviour of the seed store (the shared contract is test_store_contract.py)."""

from __future__ import annotations

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
