"""Prometheus text format of the hand-written metrics."""

from __future__ import annotations

from ralm.serve.metrics import Counter, Histogram, ServiceMetrics


def test_histogram_is_cumulative() -> None:
    h = Histogram("lat", "latency", (0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v, route="/r")
    lines = h.render()
    assert 'lat_bucket{route="/r",le="0.1"} 1' in lines
    assert 'lat_bucket{route="/r",le="1"} 3' in lines
    assert 'lat_bucket{route="/r",le="+Inf"} 4' in lines
    assert 'lat_count{route="/r"} 4' in lines
    assert 'lat_sum{route="/r"} 4.05' in lines
    assert h.count(route="/r") == 4


def test_counter_labels_escaped_and_render_all() -> None:
    c = Counter("c_total", "help")
    c.inc(2, path='a"b')
    assert 'c_total{path="a\\"b"} 2' in c.render()
    m = ServiceMetrics()
    m.seeds_ingested.inc(5)
    text = m.render()
    assert "# TYPE ralm_request_latency_seconds histogram" in text
    assert "ralm_seeds_ingested_total 5" in text
    assert text.endswith("\n")
