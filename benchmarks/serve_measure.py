"""Measurement helpers of ``bench_serve.py``: timing, the matmul floors, the load report.

Timings run in a worker thread (:func:`_in_worker`), as the service scores in its
batcher thread. :func:`floors` times one memory pass over the centroid table, the plain
matmul of the scoring shape ``(I*k, h) @ (h, 2B)`` and the scorer itself; :class:`Floors`
times the batched matmul floor once per batch size; :func:`load_report` turns one
concurrency level's latencies and the batches the batcher formed into req/s, latency
percentiles and the ratio to the floor of those same batches (issue 9 target).
"""

from __future__ import annotations

import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ralm.common.threads import inherit_threads

TARGET_THROUGHPUT = 1.3  # issue 9: req/s within 1.3x of the floor of the same batches


def _timeit(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _rss_mb() -> float:
    """Current resident set size (MB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))  # ms


def _in_worker(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread (the service scores in its batcher thread)."""
    box: dict[str, Any] = {}

    def run() -> None:
        inherit_threads()  # else a fresh thread's first matmul runs on every core
        box.update(out=fn())

    th = threading.Thread(target=run)
    th.start()
    th.join()
    return box["out"]


def floors(svc: Any, batch: int, repeat: int) -> dict[str, float]:
    """Memory pass and the scorer's own matmul shape, against the scorer itself.

    Timed in a worker thread, as the service runs scoring. The scorer runs from terms
    prepared once per chunk (``prepare_items``), as an index version keeps them; the floor
    is ``(I*k, h) @ (h, 2B)`` (attention logits and dots need 2B columns).
    """
    snap = svc.holder.current()
    model = svc.model.scorer
    cen = torch.from_numpy(snap.centroids.copy())  # (I, k, h) one contiguous copy
    flat = cen.reshape(-1, cen.shape[-1])  # (I*k, h)
    nbytes = cen.numel() * cen.element_size()
    out: dict[str, float] = {"table_mb": nbytes / 2**20}
    t = _in_worker(lambda: min(_timeit(lambda: cen.sum(), repeat)))
    out["memory_pass_ms"] = t * 1000
    out["memory_pass_gb_s"] = nbytes / t / 1e9
    with torch.no_grad():
        terms = [
            model.prepare_items(
                t["centroids"], t["mask"], t["global_vec"], gram=t["gram"], sizes=t["sizes"]
            )
            for t in (c.scoring_tensors for c in snap.chunks)
        ]
    for b in (1, batch):
        x = torch.randn(cen.shape[-1], 2 * b)  # (h, 2B)
        out[f"matmul_b{b}_ms"] = (
            _in_worker(lambda x=x: min(_timeit(lambda: flat @ x, repeat))) * 1000
        )  # (I*k, 2B)
        with torch.no_grad():  # a realistic E_u: transformed (post-ReLU) embeddings
            e_u = model.transform(torch.randn(b, cen.shape[-1]))  # (B, h)

        def score(e_u: torch.Tensor = e_u) -> None:
            for t in terms:
                model.score_prepared(e_u, t)

        out[f"scorer_b{b}_ms"] = _in_worker(lambda s=score: min(_timeit(s, repeat))) * 1000

    return out


class Floors:
    """The batched matmul floor ``(I*k, h) @ (h, 2B)`` per batch size, timed once each.

    Timed in a worker thread (the batcher's way), float32, the faster of one whole-table
    matmul and the same matmul in chunks of 1,024 items, best of ``repeat``.
    """

    def __init__(self, table: torch.Tensor, k: int, repeat: int = 3) -> None:
        self.table, self.k, self.repeat = table, k, repeat
        self.ms: dict[int, float] = {}

    def __call__(self, b: int) -> float:
        if b not in self.ms:
            x = torch.randn(self.table.shape[1], 2 * b)  # (h, 2B)
            step = 1024 * self.k

            def chunked() -> None:
                for lo in range(0, self.table.shape[0], step):
                    torch.mm(self.table[lo : lo + step], x)

            whole = _in_worker(lambda: min(_timeit(lambda: self.table @ x, self.repeat)))
            part = _in_worker(lambda: min(_timeit(chunked, self.repeat)))
            self.ms[b] = min(whole, part) * 1000
        return self.ms[b]


def load_report(
    done: list[float],
    wall: float,
    batches: list[tuple[int, float]],
    floor: Floors | None,
    full: int | None = None,
) -> dict[str, Any]:
    """req/s, latency, the batch sizes formed and the floor of those same batches.

    Where the wall time went: ``busy_s`` is the batcher's time inside its batch function
    (scoring, top-n, result objects), ``busy_to_floor`` that time over the matmul floor of
    the same batches (the scorer's own overhead), ``idle_share`` the share of the wall time
    the batcher had no batch to run (waiting for requests: HTTP, parsing, clients, windows).
    ``ratio_to_full_floor``: against the floor of full batches of ``full`` requests (the
    concurrency, at most ``max_batch``), which also counts what fragmented batches cost.
    """
    sizes = [n for n, _ in batches]
    busy = sum(s for _, s in batches)
    out: dict[str, Any] = {
        "requests": len(done),
        "req_per_s": len(done) / wall,
        "p50_ms": _pct(done, 50),
        "p99_ms": _pct(done, 99),
        "batches": len(sizes),
        "mean_batch": float(np.mean(sizes)) if sizes else 0.0,
        "batch_sizes": {str(b): n for b, n in sorted(Counter(sizes).items())},
        "busy_s": round(busy, 3),
        "idle_share": round(max(0.0, 1 - busy / wall), 3),
    }
    if floor is not None and sizes:
        floor_s = sum(floor(b) for b in sizes) / 1000  # the same batches, matmul only
        out["floor_req_per_s"] = sum(sizes) / floor_s
        out["busy_to_floor"] = round(busy / floor_s, 2)
        ratio = out["floor_req_per_s"] / out["req_per_s"]
        out["ratio_to_floor"] = round(ratio, 2)
        if full:
            out["ratio_to_full_floor"] = round(full / floor(full) * 1000 / out["req_per_s"], 2)
        out["target"] = (
            f"<= {TARGET_THROUGHPUT}x: {'met' if ratio <= TARGET_THROUGHPUT else 'NOT met'}"
        )
    return out
