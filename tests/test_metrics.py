"""The proxy's own counters (proxy/metrics.py) and request ids (proxy/state.py): exact
Prometheus exposition, ids unique per process and per request."""

from __future__ import annotations

import re

import pytest
from prometheus_client.exposition import generate_latest

from proxy import state as proxy_state
from proxy.metrics import Histogram, ProxyMetrics
from proxy.state import RequestIds


@pytest.mark.parametrize(("observed", "cumulative"), [
    # bounds (0.1, 1, 10): a value on a bound counts in it ("le"), above all in +Inf only
    ([], [0, 0, 0, 0]),
    ([0.1], [1, 1, 1, 1]),
    ([0.05, 0.1000001, 1], [1, 3, 3, 3]),
    ([10, 10.5, 1000], [0, 0, 1, 3]),
    ([0, 2, 2, 2], [1, 1, 4, 4]),
])
def test_histogram_buckets_are_cumulative_upper_bounds(observed: list[float],
                                                       cumulative: list[int]) -> None:
    h = Histogram((0.1, 1, 10))
    for value in observed:
        h.observe(value)
    family = h.family("x_seconds", "x")
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name == "x_seconds_bucket"]
    assert buckets == list(zip(["0.1", "1", "10", "+Inf"], cumulative, strict=True))
    count = next(s.value for s in family.samples if s.name == "x_seconds_count")
    total = next(s.value for s in family.samples if s.name == "x_seconds_sum")
    assert count == len(observed) and total == pytest.approx(sum(observed))


def test_exposition_names_every_metric_with_its_labels() -> None:
    m = ProxyMetrics(redis_errors=lambda: 2, spool_depth=lambda: 5)
    m.requests[200, 1] += 3
    m.requests[529, 0] += 1
    m.tokens["cache_read"] += 70
    m.cost_micros += 4500
    m.rejections["billing_error"] += 1
    m.estimated += 1
    m.overhead.observe(0.0003)
    text = generate_latest(m.registry).decode()
    lines = set(text.splitlines())
    for line in ('meterd_requests_total{status="200",stream="1"} 3.0',
                 'meterd_requests_total{status="529",stream="0"} 1.0',
                 'meterd_tokens_total{category="cache_read"} 70.0',
                 'meterd_tokens_total{category="input"} 0.0',
                 "meterd_cost_micros_total 4500.0",
                 'meterd_rejections_total{reason="billing_error"} 1.0',
                 "meterd_estimated_requests_total 1.0",
                 'meterd_gateway_overhead_seconds_bucket{le="0.0005"} 1.0',
                 'meterd_gateway_overhead_seconds_bucket{le="0.00025"} 0.0',
                 "meterd_request_duration_seconds_count 0.0",
                 "meterd_redis_errors 2.0", "meterd_spool_depth 5.0"):
        assert line in lines, line
    assert "# TYPE meterd_gateway_overhead_seconds histogram" in lines


def test_request_ids_are_distinct_and_shaped_like_before() -> None:
    ids = RequestIds()
    made = [ids() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(re.fullmatch(r"mreq_[0-9a-f]{24}", i) for i in made)
    assert not set(made) & {RequestIds()() for _ in range(1000)}  # every proxy draws anew


def test_request_ids_wrap_within_their_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_state.os, "urandom", lambda n: b"\xff" * n)
    ids = RequestIds()
    assert ids() == "mreq_" + "0" * 24
    assert ids() == "mreq_" + "0" * 23 + "1"
