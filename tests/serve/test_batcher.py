"""Micro-batcher: concurrent requests share batches; order, caps and errors."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from ralm.serve.batcher import MicroBatcher
from ralm.serve.scoring import RecommendResult, ScoreRequest, score_batch
from ralm.serve.service import RalmService


def test_concurrent_requests_are_batched_in_order() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def fn(reqs: Sequence[int]) -> list[int]:
        gate.wait(5)  # hold the first batch so the others queue up
        return [r * 10 for r in reqs]

    b: MicroBatcher[int, int] = MicroBatcher(
        fn, max_batch=8, window_ms=50, on_batch=lambda n, s: sizes.append(n)
    )
    futs = [b.submit(i) for i in range(20)]
    gate.set()
    assert [f.result(5) for f in futs] == [i * 10 for i in range(20)]
    b.close()
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) < 20


def test_errors_reach_every_caller_and_worker_survives() -> None:
    def fn(reqs: Sequence[int]) -> list[int]:
        if any(r < 0 for r in reqs):
            raise ValueError("negative")
        return list(reqs)

    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, window_ms=0)
    with pytest.raises(ValueError, match="negative"):
        b.submit(-1).result(5)
    assert b.submit(3).result(5) == 3
    b.close()
    with pytest.raises(RuntimeError):
        b.submit(1)


def test_held_requests_merge_into_one_scorer_call_each_with_its_own_rows(
    service: RalmService,
) -> None:
    """24 users queued behind a busy worker are scored in ONE call of the real scorer, and
    every caller gets exactly the answer it gets when scored alone."""
    snap, scorer = service.holder.current(), service.model.scorer
    users = [f"u{i}" for i in range(25)]
    vecs, found = service.model.embedder.lookup(users)
    assert bool(found.all())
    reqs = [ScoreRequest(np.asarray(v, np.float32), 5 + i % 4) for i, v in enumerate(vecs)]
    alone = [score_batch(scorer, snap, [r])[0] for r in reqs]
    calls: list[int] = []
    entered, gate = threading.Event(), threading.Event()

    def fn(batch: Sequence[ScoreRequest]) -> list[RecommendResult]:
        calls.append(len(batch))
        entered.set()
        gate.wait(10)  # the first batch holds the worker while the others queue up
        return score_batch(scorer, snap, batch)

    b: MicroBatcher[ScoreRequest, RecommendResult] = MicroBatcher(fn, max_batch=64, window_ms=50)
    first = b.submit(reqs[0])
    assert entered.wait(10)
    rest = [b.submit(r) for r in reqs[1:]]
    gate.set()
    got = [f.result(10) for f in [first, *rest]]
    b.close()
    assert calls == [1, 24]  # 25 requests, 2 scorer calls
    for r, g, a in zip(reqs, got, alone, strict=True):
        assert len(g.items) == r.n
        np.testing.assert_allclose([i.score for i in g.items], [i.score for i in a.items],
                                   atol=1e-5)  # fmt: skip
        ref = {i.item_id: i.score for i in a.items}  # ids may swap only between float ties
        for i in g.items:
            assert abs(ref.get(i.item_id, a.items[-1].score) - i.score) <= 1e-5
    tops = {tuple(i.item_id for i in g.items[:3]) for g in got}
    assert len(tops) >= 3  # users of different groups: a mixed-up row would be caught


def test_window_adapts_to_the_load_and_history_records_batches() -> None:
    """No wait after a batch of one (a sequential caller), a window of at most
    window_fraction x the previous batch's time after a bigger batch, capped by window_ms."""
    import time

    gate = threading.Event()

    def fn(reqs: Sequence[int]) -> list[int]:
        gate.wait(5)
        time.sleep(0.02)  # every batch takes ~20 ms
        return list(reqs)

    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=8, window_ms=1000, window_fraction=0.5)
    assert b.window() == 1.0  # nothing seen yet: the configured window
    gate.set()
    assert b.submit(0).result(5) == 0  # the first batch waits the configured window
    t0 = time.perf_counter()
    for i in range(1, 3):  # sequential: after a batch of one there is no wait at all
        assert b.submit(i).result(5) == i
    assert time.perf_counter() - t0 < 0.5  # a 1 s window would have held each request
    assert [n for n, _ in b.history] == [1, 1, 1]
    assert b.window() == 0.0
    gate.clear()
    futs = [b.submit(i) for i in range(5)]  # one batch of 1 holds the worker, 4 queue up
    gate.set()
    assert [f.result(5) for f in futs] == list(range(5))
    sizes = [n for n, _ in b.history][3:]
    assert sum(sizes) == 5 and max(sizes) > 1
    last_s = b.history[-1][1]
    assert last_s >= 0.02 and abs(b.window() - 0.5 * last_s) < 1e-9  # fraction of the last
    b.close()
    capped: MicroBatcher[int, int] = MicroBatcher(fn, window_ms=1, window_fraction=100.0)
    gate.clear()
    futs = [capped.submit(i) for i in range(3)]
    gate.set()
    [f.result(5) for f in futs]
    if capped.history[-1][0] > 1:
        assert capped.window() == 0.001  # window_ms caps the adaptive window
    capped.close()


def test_arecommend_known_user_inline_equals_recommend_and_checks_n(
    service: RalmService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known user's lookup runs on the event loop (no executor hop) and answers exactly
    what the blocking path answers; a user the table does not know still takes the
    executor path (here: unknown, so a 404-type error), and n is checked on both."""
    import asyncio

    from ralm.errors import RalmError
    from ralm.serve.service import UnknownUserError

    ref = service.recommend(user_id="u3", n=7, exclude=["i0"])
    loop_calls: list[object] = []

    async def run(**kw: object) -> object:
        loop = asyncio.get_running_loop()
        real = loop.run_in_executor

        def spy(*a: object) -> object:
            loop_calls.append(a[1])
            return real(*a)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "run_in_executor", spy)
        return await service.arecommend(**kw)  # type: ignore[arg-type]

    got = asyncio.run(run(user_id="u3", n=7, exclude=["i0"]))
    assert loop_calls == []  # inline: no thread hop for a table lookup
    assert got == ref and got.user == "known"  # type: ignore[attr-defined]
    with pytest.raises(UnknownUserError):
        asyncio.run(run(user_id="nobody", n=7))
    assert len(loop_calls) == 1  # not in the table: the executor path (store, features)
    with pytest.raises(RalmError, match="n: must be"):
        asyncio.run(run(user_id="u3", n=0))


def test_hold_after_a_batch_of_several_and_never_after_one() -> None:
    """hold(): after a batch of S > 1 during which Q <= S/2 requests arrived, the next
    batch waits for S + Q requests up to hold_fraction of that batch's time; no hold when
    more arrived, after a batch of one, nor with hold_fraction None / 0; an unmet hold ends
    on time and the lone request is still answered."""
    import time

    gate = threading.Event()
    gate.set()

    def fn(reqs: Sequence[int]) -> list[int]:
        gate.wait(5)
        time.sleep(0.1)  # every batch takes ~100 ms
        return [r + 1 for r in reqs]

    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=8, window_ms=1, hold_fraction=0.5)
    assert b.hold() == (0, 0.0)  # nothing seen yet
    assert b.submit(0).result(5) == 1
    assert b.hold() == (0, 0.0)  # after a batch of one: a sequential caller never waits
    gate.clear()
    first = b.submit(0)  # holds the worker; the next three queue up behind it
    time.sleep(0.05)
    futs = [b.submit(i) for i in range(1, 4)]
    gate.set()
    assert [f.result(5) for f in [first, *futs]] == [1, 2, 3, 4]
    assert [n for n, _ in b.history][-2:] == [1, 3]
    want, held = b.hold()
    assert want == 3 and abs(held - 0.5 * b.history[-1][1]) < 1e-9 and held >= 0.05
    b._arrived = 1  # one more arrived during the batch of 3: wait for all 4
    assert b.hold()[0] == 4
    b._arrived = 2  # as many arrived as were answered: steady traffic, no hold
    assert b.hold() == (0, 0.0)
    b._arrived = 0
    t0 = time.perf_counter()
    assert b.submit(7).result(5) == 8  # alone: held for company that never comes
    waited = time.perf_counter() - t0 - b.history[-1][1]
    assert held * 0.9 <= waited < held + 1.0  # the hold, and not much more
    assert [n for n, _ in b.history][-1] == 1
    b.close()
    for off in (None, 0.0):
        nb: MicroBatcher[int, int] = MicroBatcher(fn, window_ms=1, hold_fraction=off)
        nb._last = (5, 1.0)
        assert nb.hold() == (0, 0.0)
        nb.close()


def test_hold_keeps_closed_loop_callers_in_one_batch_each_with_its_own_result() -> None:
    """8 callers that resubmit 2-9 ms after their answer (an HTTP round trip, longer than
    the 1 ms window): with the hold each round is one batch of 8, and every caller gets the
    answer to its own request; without it the rounds split."""
    import time

    def fn(reqs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        time.sleep(0.06)
        return [(c * 1000 + r, c) for c, r in reqs]

    def rounds(hold: float | None) -> list[int]:
        b: MicroBatcher[tuple[int, int], tuple[int, int]] = MicroBatcher(
            fn, max_batch=64, window_ms=1, hold_fraction=hold
        )
        start = threading.Barrier(8)
        bad: list[object] = []

        def caller(c: int) -> None:
            start.wait(5)
            for r in range(6):
                got = b.submit((c, r)).result(10)
                if got != (c * 1000 + r, c):
                    bad.append(got)
                time.sleep(0.002 + 0.001 * c)  # the way back and the next request

        threads = [threading.Thread(target=caller, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        b.close()
        assert bad == []
        sizes = [n for n, _ in b.history]
        assert sum(sizes) == 48
        return sizes

    held = rounds(0.5)
    assert held[-4:].count(8) >= 3, held  # after the start: whole rounds
    assert len(held) <= 9, held
    split = rounds(None)
    assert len(split) > len(held), (split, held)
