"""Helpers of the seed-store contract suite (``test_store_contract.py``).

:class:`RefStore` is a naive in-memory model of the contract's semantics (plain dicts and
sorts), :func:`check_against` compares every read of a store with it, and :class:`Maker`
opens fresh stores of one kind (SQLite or Redis) and reopens them on the same data.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from pathlib import Path

import pytest

from ralm.serve.redis_store import RedisSeedStore
from ralm.serve.seed_store import Click, SeedStore
from ralm.serve.store import SQLiteSeedStore

from .redis_fixture import RedisServer


class Maker:
    """Opens fresh stores of one kind and reopens them on the same data."""

    def __init__(self, kind: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.tmp = tmp
        self.request = request
        self.opened: list[SeedStore] = []

    def _open(self, loc: str, max_seeds: int) -> SeedStore:
        st: SeedStore
        if self.kind == "sqlite":
            st = SQLiteSeedStore(self.tmp / f"{loc}.db", max_seeds=max_seeds)
        else:
            srv: RedisServer = self.request.getfixturevalue("redis_server")
            st = RedisSeedStore(srv.url, max_seeds=max_seeds, prefix=f"{loc}:")
        self.opened.append(st)
        return st

    def new(self, max_seeds: int = 1000) -> SeedStore:
        st = self._open(uuid.uuid4().hex[:12], max_seeds)
        st._loc = st.path.stem if self.kind == "sqlite" else st.prefix[:-1]  # type: ignore[attr-defined]
        return st

    def reopen(self, st: SeedStore) -> SeedStore:
        loc = st._loc  # type: ignore[attr-defined]
        st.close()
        again = self._open(loc, st.max_seeds)
        again._loc = loc  # type: ignore[attr-defined]
        return again

    def second(self, st: SeedStore) -> SeedStore:
        """Another handle on the same data (another replica or process)."""
        return self._open(st._loc, st.max_seeds)  # type: ignore[attr-defined]

    def close_all(self) -> None:
        for st in self.opened:
            with contextlib.suppress(Exception):  # a test may have closed it already
                st.close()


class RefStore:
    """Naive model of the contract: dicts, full sorts, no cleverness."""

    def __init__(self, max_seeds: int) -> None:
        self.n = max_seeds
        self.seq = 0
        self.rows: dict[str, dict[str, tuple[float, int]]] = {}  # item -> user -> (ts, seq)
        self.state: dict[str, dict[str, float]] = {}

    def add(self, clicks: list[Click]) -> int:
        written: dict[str, dict[str, tuple[int, bool, float]]] = {}
        for c in clicks:
            old = self.rows.get(c.item_id, {}).get(c.user_id)
            if old is not None and c.ts <= old[0]:
                continue
            self.seq += 1
            self.rows.setdefault(c.item_id, {})[c.user_id] = (c.ts, self.seq)
            w = written.setdefault(c.item_id, {})
            new = old is None or (c.user_id in w and w[c.user_id][1])
            w[c.user_id] = (self.seq, new, c.ts)
        added = 0
        for item, w in written.items():
            rows = self.rows[item]
            oldest_first = sorted(rows, key=lambda u: rows[u])
            for u in oldest_first[: max(0, len(rows) - self.n)]:
                del rows[u]
            kept = {u: v for u, v in w.items() if u in rows}
            if not kept:
                continue
            added += sum(1 for _, new, _ in kept.values() if new)
            st = self.state.setdefault(item, {"clustered_seq": 0, "last_click": -math.inf})
            st["n_seeds"] = len(rows)
            st["last_click"] = max(st["last_click"], *(t for _, _, t in w.values()))
            st["changed_seq"] = max(s for s, _, _ in kept.values())
        return added

    def seeds(self, item: str) -> list[str]:
        rows = self.rows.get(item, {})
        return sorted(rows, key=lambda u: rows[u], reverse=True)

    def events(self) -> list[tuple[int, str, str, float]]:
        return sorted((s, u, i, t) for i, r in self.rows.items() for u, (t, s) in r.items())

    def changed(self) -> set[str]:
        return {i for i, s in self.state.items() if s["changed_seq"] > s["clustered_seq"]}


def check_against(st: SeedStore, ref: RefStore) -> None:
    """Every read of ``st`` equals the reference model."""
    items = {s.item_id: s for s in st.items()}
    assert set(items) == set(ref.state)
    for i, s in items.items():
        want = ref.state[i]
        assert (s.n_seeds, s.last_click, s.changed_seq, s.clustered_seq) == (
            want["n_seeds"],
            want["last_click"],
            want["changed_seq"],
            want["clustered_seq"],
        ), i
        assert st.item(i) == s
        assert st.seeds(i) == ref.seeds(i)
    assert {s.item_id for s in st.items(changed_only=True)} == ref.changed()
    got, mark = st.clicks_since(0)
    ev = ref.events()
    assert [(c.user_id, c.item_id, c.ts) for c in got] == [(u, i, t) for _, u, i, t in ev]
    assert mark == (ev[-1][0] if ev else 0)
    assert st.n_seed_rows() == len(ev)
    assert st.n_items() == len(ref.state)
