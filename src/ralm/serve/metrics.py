"""Service metrics in the Prometheus text exposition format (hand-written, no dependency).

Counters, gauges and cumulative histograms with labels; every update takes one lock, which
is far below the cost of the work being measured.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RECLUSTER_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1200.0)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + body + "}"


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count, per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return super().render() + [f"{self.name}{_fmt_labels(k)} {_fmt(v)}" for k, v in items]


class Gauge(Counter):
    """A value that can go up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] = float(value)


class Histogram(_Metric):
    """Cumulative histogram (``_bucket``, ``_sum``, ``_count``) per label set.

    Args:
        name: metric name.
        help_text: HELP line.
        buckets: upper bounds, increasing; ``+Inf`` is added.
    """

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(float(b) for b in buckets)
        self._data: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            i = 0
            while i < len(self.buckets) and value > self.buckets[i]:
                i += 1
            counts[i] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            d = self._data.get(tuple(sorted(labels.items())))
            return 0 if d is None else sum(d[0])

    def render(self) -> list[str]:
        out = super().render()
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            acc = 0
            for b, c in zip((*self.buckets, math.inf), counts, strict=True):
                acc += c
                out.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt(b)),))} {acc}")
            out.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt(total)}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {acc}")
        return out


class ServiceMetrics:
    """Every metric the service exports on ``GET /metrics``."""

    def __init__(self) -> None:
        self.request_latency = Histogram(
            "ralm_request_latency_seconds", "HTTP request latency by route.", LATENCY_BUCKETS
        )
        self.requests = Counter("ralm_requests_total", "HTTP requests by route and status.")
        self.batch_size = Histogram(
            "ralm_scoring_batch_size", "Requests per micro-batch.", BATCH_BUCKETS
        )
        self.batch_latency = Histogram(
            "ralm_scoring_batch_seconds", "Time to score one micro-batch.", LATENCY_BUCKETS
        )
        self.recluster_duration = Histogram(
            "ralm_recluster_duration_seconds",
            "Duration of a re-clustering cycle by kind (full, fast).",
            RECLUSTER_BUCKETS,
        )
        self.reclustered_items = Counter(
            "ralm_reclustered_items_total", "Items re-clustered, by kind (full, fast)."
        )
        self.seeds_ingested = Counter(
            "ralm_seeds_ingested_total", "Click events acknowledged by POST /clicks."
        )
        self.new_seeds = Counter("ralm_new_seeds_total", "New distinct (item, user) seeds.")
        self.index_version = Gauge("ralm_index_version", "Version of the published index.")
        self.index_items = Gauge("ralm_index_items", "Items in the published index.")
        self.index_servable = Gauge("ralm_index_servable_items", "Items that can be recommended.")

    def render(self) -> str:
        """The full exposition text."""
        lines: list[str] = []
        for m in vars(self).values():
            if isinstance(m, _Metric):
                lines += m.render()
        return "\n".join(lines) + "\n"
