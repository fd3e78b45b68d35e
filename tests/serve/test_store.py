"""Seed store: dedup, recency, the N bound, change tracking and durability."""

from __future__ import annotations

from pathlib import Path

import pytest

from ralm.serve.store import Click, SeedStore


def test_dedup_and_recency(tmp_path: Path) -> None:
    st = SeedStore(tmp_path / "s.db")
    assert st.add_clicks([Click("a", "x", 1.0), Click("b", "x", 2.0), Click("a", "x", 3.0)]) == 2
    assert st.item("x").n_seeds == 2  # type: ignore[union-attr]
    assert st.seeds("x") == ["a", "b"]  # a's repeat click refreshed its recency
    assert st.add_clicks([Click("b", "x", 1.5)]) == 0  # an older repeat does not move b back
    assert st.seeds("x") == ["a", "b"]
    assert sorted(st.items_of_user("a")) == ["x"]
    st.close()


def test_bound_keeps_most_recent(tmp_path: Path) -> None:
    st = SeedStore(tmp_path / "s.db", max_seeds=3)
    st.add_clicks([Click(f"u{i}", "x", float(i)) for i in range(5)])
    st.add_clicks([Click("u0", "x", 10.0)])  # u0 comes back as the most recent
    assert st.seeds("x") == ["u0", "u4", "u3"]
    assert st.item("x").n_seeds == 3  # type: ignore[union-attr]
    assert st.n_seed_rows() == 3
    st.close()


def test_change_tracking(tmp_path: Path) -> None:
    st = SeedStore(tmp_path / "s.db")
    st.add_clicks([Click("a", "x", 1.0), Click("a", "y", 1.0)])
    changed = {it.item_id: it.changed_seq for it in st.items(changed_only=True)}
    assert set(changed) == {"x", "y"}
    st.add_clicks([Click("b", "x", 2.0)])  # arrives during a cycle that covered the old seq
    st.mark_clustered(changed)
    assert [it.item_id for it in st.items(changed_only=True)] == ["x"]
    st.close()


def test_survives_reopen_and_meta(tmp_path: Path) -> None:
    st = SeedStore(tmp_path / "s.db", synchronous="NORMAL")
    st.add_clicks([Click("a", "x", 1.0)])
    st.set_meta("index", {"version": 3})
    st.put_user_features("new", {"group": "g1"})
    st.close()
    st = SeedStore(tmp_path / "s.db")
    assert st.seeds("x") == ["a"]
    assert st.get_meta("index") == {"version": 3}
    assert st.user_features(["new", "nobody"]) == {"new": {"group": "g1"}}
    st.add_clicks([Click("b", "x", 2.0)])  # sequence numbers continue after the restart
    assert st.seeds("x") == ["b", "a"]
    st.close()


def test_bulk_import_matches_add_clicks(tmp_path: Path) -> None:
    rows = [(f"u{i % 7}", f"i{i % 3}", float(i)) for i in range(40)]
    a = SeedStore(tmp_path / "a.db", max_seeds=4)
    a.bulk_import(rows)
    b = SeedStore(tmp_path / "b.db", max_seeds=4)
    b.add_clicks([Click(u, i, t) for u, i, t in rows])
    for item in ("i0", "i1", "i2"):
        assert a.seeds(item) == b.seeds(item)
        assert a.item(item).n_seeds == b.item(item).n_seeds == 4  # type: ignore[union-attr]
    a.close()
    b.close()


def test_bad_synchronous(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SeedStore(tmp_path / "s.db", synchronous="OFF")
