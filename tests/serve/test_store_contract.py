"""The seed-store contract, run against every implementation (SQLite and a real Redis).

Behaviour is checked against :class:`RefStore`, a naive in-memory model of the semantics
written with plain dicts and sorts, and the two stores against each other. ``RefStore``,
``check_against`` and the store ``Maker`` are in ``store_contract_ref.py``.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ralm.serve.redis_store import RedisSeedStore
from ralm.serve.seed_store import Click, SeedStore
from ralm.serve.store import SQLiteSeedStore

from .redis_fixture import RedisServer
from .store_contract_ref import Maker, RefStore, check_against

STORES = ["sqlite", "redis"]


@pytest.fixture(params=STORES)
def maker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Maker]:
    m = Maker(request.param, tmp_path, request)
    yield m
    m.close_all()


# ---- the contract, method by method -----------------------------------------------------
def test_is_a_seed_store(maker: Maker) -> None:
    assert isinstance(maker.new(), SeedStore)


def test_recency_order_and_repeat_clicks(maker: Maker) -> None:
    st = maker.new()
    assert st.add_clicks([Click("a", "x", 1.0), Click("b", "x", 2.0), Click("a", "x", 3.0)]) == 2
    assert st.item("x").n_seeds == 2  # type: ignore[union-attr]
    assert st.seeds("x") == ["a", "b"]  # a's newer click refreshed its recency
    assert st.add_clicks([Click("b", "x", 1.5)]) == 0  # an older repeat does not move b back
    assert st.seeds("x") == ["a", "b"]
    # equal timestamps: arrival order decides
    st.add_clicks([Click("c", "y", 5.0), Click("d", "y", 5.0), Click("e", "y", 4.0)])
    assert st.seeds("y") == ["d", "c", "e"]
    assert st.seeds("y", limit=2) == ["d", "c"]
    assert st.seeds("y", limit=0) == []
    assert st.seeds("nobody-clicked-this") == []
    assert st.item("nobody-clicked-this") is None
    assert st.items_of_user("a") == ["x"]
    assert st.items_of_user("zed") == []


def test_trims_to_the_most_recent_n(maker: Maker) -> None:
    st = maker.new(max_seeds=3)
    assert st.add_clicks([Click(f"u{i}", "x", float(i)) for i in range(5)]) == 3
    assert st.seeds("x") == ["u4", "u3", "u2"]
    st.add_clicks([Click("u0", "x", 10.0)])  # u0 comes back as the most recent
    assert st.seeds("x") == ["u0", "u4", "u3"]
    assert st.item("x").n_seeds == 3  # type: ignore[union-attr]
    assert st.n_seed_rows() == 3
    assert st.items_of_user("u2") == []  # trimmed seeds leave the user's items too
    assert st.items_of_user("u0") == ["x"]


def test_idempotent_on_user_item_ts(maker: Maker) -> None:
    st = maker.new(max_seeds=3)
    batch = [Click(f"u{i}", f"i{i % 2}", float(i)) for i in range(8)]
    st.add_clicks(batch)
    before = (st.items(), st.clicks_since(0), st.n_seed_rows(), st.seeds_many(["i0", "i1"]))
    assert st.add_clicks(batch) == 0  # re-sent as is
    assert st.add_clicks(batch[::-1]) == 0  # in another order
    assert st.add_clicks([batch[0]]) == 0  # a trimmed seed's old event comes back
    after = (st.items(), st.clicks_since(0), st.n_seed_rows(), st.seeds_many(["i0", "i1"]))
    assert after == before  # including changed_seq: nothing to re-cluster
    assert st.items(changed_only=True) == before[0]


def test_changed_and_clustered_marks(maker: Maker) -> None:
    st = maker.new()
    st.add_clicks([Click("a", "x", 1.0), Click("a", "y", 1.0)])
    changed = {it.item_id: it.changed_seq for it in st.items(changed_only=True)}
    assert set(changed) == {"x", "y"}
    st.add_clicks([Click("b", "x", 2.0)])  # arrives during a cycle that covered the old seq
    st.mark_clustered({**changed, "never-seen": 99})
    assert [it.item_id for it in st.items(changed_only=True)] == ["x"]
    x = st.item("x")
    assert x is not None and x.clustered_seq == changed["x"] < x.changed_seq
    st.mark_clustered({"y": 0})  # an older mark never lowers clustered_seq
    assert st.item("y").clustered_seq == changed["y"]  # type: ignore[union-attr]
    assert st.item("never-seen") is None
    st.mark_clustered({"x": x.changed_seq})
    assert st.items(changed_only=True) == []
    st.mark_all_changed()
    assert {it.item_id for it in st.items(changed_only=True)} == {"x", "y"}
    assert all(it.clustered_seq == 0 for it in st.items())


def test_items_in_first_seen_order(maker: Maker) -> None:
    st = maker.new()
    st.add_clicks([Click("a", "m", 1.0), Click("a", "b", 1.0)])
    time.sleep(0.002)
    st.add_clicks([Click("a", "a", 1.0), Click("b", "m", 2.0)])
    got = st.items()
    assert [s.item_id for s in got] == ["b", "m", "a"]  # (first_seen, id)
    assert got[0].first_seen == got[1].first_seen < got[2].first_seen
    assert got[0].first_seen >= time.time() - 60


def test_batch_reads_equal_single_reads(maker: Maker) -> None:
    st = maker.new(max_seeds=50)
    rng = random.Random(1)
    st.add_clicks(
        [
            Click(f"u{rng.randrange(40)}", f"i{rng.randrange(300)}", rng.randrange(20))
            for _ in range(3000)
        ]
    )
    ids = [f"i{k}" for k in range(300)] + ["unknown", "i3"]  # > one chunk, a repeat
    for limit in (None, 1, 7, 0):
        many = st.seeds_many(ids, limit)
        assert set(many) == set(ids)
        for i in ids:
            assert many[i] == st.seeds(i, limit), (i, limit)
    assert st.seeds_many([]) == {}


def test_watermark_reads_page_through_every_event(maker: Maker) -> None:
    st = maker.new()
    st.add_clicks([Click(f"u{k}", f"i{k % 3}", float(k)) for k in range(10)])
    full, mark = st.clicks_since(0)
    assert len(full) == 10
    pages: list[Click] = []
    w = 0
    while True:
        page, w2 = st.clicks_since(w, limit=3)
        if not page:
            assert w2 == w
            break
        assert len(page) <= 3 and w2 > w
        pages += page
        w = w2
    assert pages == full and w == mark
    assert st.clicks_since(mark) == ([], mark)
    st.add_clicks([Click("u0", "i0", 50.0), Click("new", "i9", 1.0)])  # a refresh, a seed
    newer, mark2 = st.clicks_since(mark)
    assert newer == [Click("u0", "i0", 50.0), Click("new", "i9", 1.0)]
    assert mark2 > mark
    everything, _ = st.clicks_since(0)
    assert len(everything) == 11  # u0's older event was replaced by its refresh
    assert st.clicks_since(0, limit=0) == ([], 0)


def test_user_features_and_meta(maker: Maker) -> None:
    st = maker.new()
    st.put_user_features("web-1", {"gender": "F", "genres": ["Comedy", "Drama"]})
    st.put_user_features("web-2", {"age": 25})
    st.put_user_features("web-2", {"age": 26})  # the latest features win
    assert st.user_features(["web-1", "web-2", "nobody"]) == {
        "web-1": {"gender": "F", "genres": ["Comedy", "Drama"]},
        "web-2": {"age": 26},
    }
    assert st.user_features([]) == {}
    assert st.get_meta("index") is None
    assert st.get_meta("index", {"v": 0}) == {"v": 0}
    st.set_meta("index", {"version": 3, "path": "/x/v3"})
    st.set_meta("max_version", 3)
    assert st.get_meta("index") == {"version": 3, "path": "/x/v3"}
    assert st.get_meta("max_version") == 3


def test_survives_reopen(maker: Maker) -> None:
    st = maker.new(max_seeds=5)
    st.add_clicks([Click("a", "x", 1.0), Click("b", "y", 2.0)])
    st.set_meta("index", {"version": 3})
    st.put_user_features("new", {"group": "g1"})
    st.mark_clustered({"y": st.item("y").changed_seq})  # type: ignore[union-attr]
    before = st.items()
    st = maker.reopen(st)
    assert st.items() == before
    assert st.seeds("x") == ["a"]
    assert st.get_meta("index") == {"version": 3}
    assert st.user_features(["new"]) == {"new": {"group": "g1"}}
    _, mark = st.clicks_since(0)
    st.add_clicks([Click("b", "x", 2.0)])  # sequence numbers continue after the reopen
    assert st.seeds("x") == ["b", "a"]
    assert st.item("x").changed_seq > mark  # type: ignore[union-attr]
    assert [it.item_id for it in st.items(changed_only=True)] == ["x"]


def test_bulk_import_equals_add_clicks(maker: Maker) -> None:
    rows = [(f"u{i % 7}", f"i{i % 3}", float(i)) for i in range(40)]
    rows += [(u, i, t - 100.0) for u, i, t in rows[:10]]  # older repeats change nothing
    a, b = maker.new(max_seeds=4), maker.new(max_seeds=4)
    assert a.bulk_import(rows) == 12
    b.add_clicks([Click(u, i, t) for u, i, t in rows])
    for item in ("i0", "i1", "i2"):
        assert a.seeds(item) == b.seeds(item)
        assert a.item(item).n_seeds == b.item(item).n_seeds == 4  # type: ignore[union-attr]
    assert {s.item_id for s in a.items(changed_only=True)} == {"i0", "i1", "i2"}
    a.mark_clustered({s.item_id: s.changed_seq for s in a.items()})
    before = (a.items(), a.clicks_since(0))
    assert a.bulk_import(rows) == 12  # idempotent: nothing becomes pending again
    assert (a.items(), a.clicks_since(0)) == before


def test_imported_items_are_first_seen_at_their_earliest_click(maker: Maker) -> None:
    """History is imported with its times: an item's first_seen is its earliest imported
    click (even one whose seed was trimmed), not the import time; live clicks of a new
    item are first seen when they arrive."""
    rows = [("u1", "x", 50.0), ("u2", "x", 10.0), ("u3", "x", 30.0), ("u1", "y", 70.0)]
    st = maker.new(max_seeds=2)
    st.bulk_import(rows)
    got = {it.item_id: it.first_seen for it in st.items()}
    assert got == {"x": 10.0, "y": 70.0}
    st.bulk_import([("u9", "x", 5.0), ("u9", "y", 80.0)])  # an earlier click moves it back
    got = {it.item_id: it.first_seen for it in st.items()}
    assert got == {"x": 5.0, "y": 70.0}
    t0 = time.time()
    st.add_clicks([Click("u1", "z", 1.0)])
    assert st.item("z").first_seen >= t0  # type: ignore[union-attr]


def test_rejects_non_finite_time(maker: Maker) -> None:
    st = maker.new()
    with pytest.raises(ValueError, match="ts must be finite"):
        st.add_clicks([Click("a", "x", 1.0), Click("a", "y", math.nan)])
    assert st.n_items() == 0  # nothing of the refused call was stored


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_streams_match_the_reference(maker: Maker, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([2, 3, 5])
    st, ref = maker.new(max_seeds=n), RefStore(n)
    sent: list[Click] = []
    for step in range(40):
        batch = [
            Click(f"u{rng.randrange(8)}", f"i{rng.randrange(4)}", float(rng.randrange(12)))
            for _ in range(rng.randrange(1, 9))
        ]
        if sent and rng.random() < 0.3:
            batch += rng.sample(sent, min(3, len(sent)))  # re-sent events
        sent += batch
        assert st.add_clicks(batch) == ref.add(batch), step
        if rng.random() < 0.2:
            covered = {s.item_id: s.changed_seq for s in st.items(changed_only=True)}
            st.mark_clustered(covered)
            for i, s in covered.items():
                ref.state[i]["clustered_seq"] = max(ref.state[i]["clustered_seq"], s)
        check_against(st, ref)


def test_sqlite_and_redis_agree(redis_server: RedisServer, tmp_path: Path) -> None:
    """The same calls give the same state in both stores, sequence numbers included."""
    a = SQLiteSeedStore(tmp_path / "a.db", max_seeds=4)
    b = RedisSeedStore(redis_server.url, max_seeds=4, prefix=f"agree{uuid.uuid4().hex}:")
    rng = random.Random(7)
    for _ in range(30):
        batch = [
            Click(f"u{rng.randrange(10)}", f"i{rng.randrange(5)}", float(rng.randrange(6)))
            for _ in range(rng.randrange(1, 12))
        ]
        assert a.add_clicks(batch) == b.add_clicks(batch)

    def view(st: SeedStore) -> object:
        items = [(s.item_id, s.n_seeds, s.last_click, s.changed_seq, s.clustered_seq)
                 for s in st.items()]  # fmt: skip
        ids = [s.item_id for s in st.items()]
        users = [f"u{k}" for k in range(10)]
        return (sorted(items), st.seeds_many(ids), st.clicks_since(0),
                {u: st.items_of_user(u) for u in users}, st.n_seed_rows())  # fmt: skip

    assert view(a) == view(b)
    a.close()
    b.close()


def test_redis_refuses_another_max_seeds(redis_server: RedisServer) -> None:
    from ralm.errors import ConfigError

    prefix = f"cfg{uuid.uuid4().hex}:"
    RedisSeedStore(redis_server.url, max_seeds=10, prefix=prefix).close()
    with pytest.raises(ConfigError, match="max_seeds=10"):
        RedisSeedStore(redis_server.url, max_seeds=11, prefix=prefix)


def test_redis_unreachable_is_a_one_line_error() -> None:
    import socket

    from ralm.errors import RalmError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(RalmError, match=f"127.0.0.1:{port}.*cannot reach redis-server"):
        RedisSeedStore(f"redis://127.0.0.1:{port}/0")


def test_open_seed_store_picks_the_implementation(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from ralm.serve.stores import open_seed_store

    a = open_seed_store(tmp_path / "s.db", max_seeds=7)
    b = open_seed_store(redis_server.url, max_seeds=7)
    assert isinstance(a, SQLiteSeedStore) and isinstance(b, RedisSeedStore)
    assert a.max_seeds == b.max_seeds == 7
    a.close()
    b.close()


def test_ids_with_separators_and_unicode(maker: Maker) -> None:
    st = maker.new(max_seeds=2)
    odd = [Click("ü:1", "item:ä/x", 1.5), Click("12:ab", "item:ä/x", 2.25), Click("", "3:", 0.1)]
    odd.append(Click("ü:1", "3:", 7.0))
    st.add_clicks(odd)
    assert st.seeds("item:ä/x") == ["12:ab", "ü:1"]
    assert st.seeds_many(["3:"]) == {"3:": ["ü:1", ""]}
    assert st.items_of_user("ü:1") == ["3:", "item:ä/x"]
    got, _ = st.clicks_since(0)
    assert got == odd
    st.add_clicks([Click("new", "item:ä/x", 9.0)])  # trims ü:1 from item:ä/x
    assert st.clicks_since(0)[0] == [odd[1], odd[2], odd[3], Click("new", "item:ä/x", 9.0)]


def test_concurrent_writers_on_two_handles(maker: Maker) -> None:
    """Two replicas, two threads each, writing the same items at once: no lost or doubled
    update. Distinct timestamps and no trimming make the final state order-independent."""
    import threading

    a = maker.new(max_seeds=10_000)
    b = maker.second(a)
    rng = random.Random(5)
    ts = rng.sample(range(100_000), 2400)
    clicks = [Click(f"u{rng.randrange(60)}", f"i{rng.randrange(6)}", float(t)) for t in ts]
    parts = [clicks[k::4] for k in range(4)]
    errors: list[BaseException] = []

    def write(st: SeedStore, part: list[Click]) -> None:
        try:
            for lo in range(0, len(part), 20):
                st.add_clicks(part[lo : lo + 20])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=write, args=(st, p))
        for st, p in zip([a, b, a, b], parts, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    ref = RefStore(10_000)
    ref.add(sorted(clicks, key=lambda c: c.ts))
    for i in ref.rows:
        assert a.seeds(i) == b.seeds(i) == ref.seeds(i)
        assert a.item(i).n_seeds == len(ref.rows[i])  # type: ignore[union-attr]
    events, mark = a.clicks_since(0)
    assert sorted((c.item_id, c.user_id, c.ts) for c in events) == sorted(
        (i, u, t) for _, u, i, t in ref.events()
    )
    paged, w = 0, 0  # every seq handed out once: paging one by one sees every event
    while True:
        page, w = b.clicks_since(w, limit=1)
        if not page:
            break
        paged += 1
    assert paged == len(events) == a.n_seed_rows() and w == mark
