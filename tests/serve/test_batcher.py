"""Micro-batcher: concurrent requests share batches; order, caps and errors."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from ralm.serve.batcher import MicroBatcher


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
