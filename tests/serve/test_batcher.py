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
