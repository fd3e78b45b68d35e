"""Micro-batching: concurrent requests are scored together in one matrix multiply.

A single worker thread takes the first waiting request, then keeps collecting until either
``max_batch`` requests are in hand or the batch's window has passed since the first one,
and runs the batch function once. The window adapts to the load: it is ``window_ms`` at
most, at most ``window_fraction`` of the previous batch's run time (a wait worth a small
share of the work it batches: a fraction of a millisecond on a small catalogue), and 0
right after a batch of one (a sequential caller never waits for company that is not
coming; under concurrency the next batch takes what queued meanwhile, and the window
opens again). Requests that arrive while a batch runs queue up and form the next one.

When a batch of S > 1 requests has just run and at most S/2 requests (Q) arrived while
it ran, the next batch is also *held* open, beyond the window, until it has S + Q
requests (at most ``max_batch``) or ``hold_fraction`` of that batch's run time has
passed: the S callers just answered usually come back (closed-loop clients, a page's next
widget), and over HTTP their answers and next requests take longer to cross the event
loop than the window lasts. Without the hold the few requests that queued during the
batch leave alone, the S returning ones queue behind them, and every round splits in two
(batches of 1 and 31 at concurrency 32, the 1 paying a whole-table pass of its own).
Steady traffic, whose arrivals during a batch fill the next one about as full, is not
held; a hold costs at most ``hold_fraction`` of a batch's time, and never follows a batch
of one.
Callers get a :class:`concurrent.futures.Future` (awaitable from
asyncio through :func:`asyncio.wrap_future`). An exception of the batch function is set on
every future of that batch (one warning line here; the traceback is logged once, by whoever
handles the caller's error, e.g. the HTTP layer's 500); the worker keeps running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from ralm.common.threads import inherit_threads

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")

_STOP = object()


class MicroBatcher(Generic[Req, Res]):
    """Groups requests into batches for ``fn``.

    Args:
        fn: batch function, ``fn(requests) -> results`` (one result per request, same order).
        max_batch: largest batch.
        window_ms: longest a batch stays open after its first request (0 = take only what
            is already queued).
        on_batch: optional callback ``(batch_size, seconds)`` after every batch (metrics).
        name: worker thread name.
        window_fraction: the window is at most this share of the previous batch's run
            time (None: always ``window_ms``).
        history: how many recent ``(batch_size, seconds)`` pairs :attr:`history` keeps.
        hold_fraction: after a batch of S > 1 during which at most S/2 requests arrived,
            the next batch waits for S more up to this share of that batch's run time
            (None or 0: no hold; see module doc).
    """

    def __init__(
        self,
        fn: Callable[[Sequence[Req]], Sequence[Res]],
        max_batch: int = 64,
        window_ms: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "ralm-batcher",
        window_fraction: float | None = 0.25,
        history: int = 4096,
        hold_fraction: float | None = 0.25,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._fn = fn
        self.max_batch = max_batch
        self.window_s = window_ms / 1000.0
        self.window_fraction = window_fraction
        self.hold_fraction = hold_fraction
        self._on_batch = on_batch
        self.history: deque[tuple[int, float]] = deque(maxlen=history)  # (size, seconds)
        self._last: tuple[int, float] | None = None
        self._arrived = 0  # requests that arrived while the last batch ran
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Req) -> Future[Res]:
        """Queue one request; the future resolves when its batch has run."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        fut: Future[Res] = Future()
        self._q.put((request, fut))
        return fut

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the requests already queued."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        inherit_threads()  # the batch function's torch ops: the process's thread count
        stop = False
        while not stop:
            first = self._q.get()
            if first is _STOP:
                break
            batch = [first]
            now = time.perf_counter()
            deadline = now + self.window()
            want, held = self.hold()
            held_deadline = max(deadline, now + held)
            while len(batch) < self.max_batch:
                until = held_deadline if len(batch) < want else deadline
                remaining = until - time.perf_counter()
                try:
                    item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(batch)

    def window(self) -> float:
        """Seconds the next batch stays open after its first request (see module doc)."""
        if self.window_fraction is None or self._last is None:
            return self.window_s
        size, seconds = self._last
        if size <= 1:
            return 0.0
        return min(self.window_s, self.window_fraction * seconds)

    def hold(self) -> tuple[int, float]:
        """``(requests, seconds)``: the next batch waits for that many requests for up to
        that long after it opens (see module doc; ``(0, 0.0)`` = no hold)."""
        if not self.hold_fraction or self._last is None:
            return 0, 0.0
        size, seconds = self._last
        queued = self._arrived
        if size <= 1 or 2 * queued > size:
            return 0, 0.0
        return min(size + queued, self.max_batch), self.hold_fraction * seconds

    def _run_batch(self, batch: list[object]) -> None:
        pairs = [p for p in batch if isinstance(p, tuple)]
        live = [(r, f) for r, f in pairs if f.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            results = self._fn([r for r, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} for {len(live)}")
        except BaseException as e:  # every caller of the batch gets the error (and logs it)
            log.warning("micro-batch of %d failed: %s: %s", len(live), type(e).__name__, e)
            for _, f in live:
                f.set_exception(e)
            return
        seconds = time.perf_counter() - t0
        self._arrived = self._q.qsize()  # arrived while the batch ran (before any answer)
        self._last = (len(live), seconds)
        self.history.append(self._last)
        for (_, f), res in zip(live, results, strict=True):
            f.set_result(res)
        if self._on_batch is not None:
            self._on_batch(len(live), seconds)
