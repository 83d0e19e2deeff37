"""Prometheus metrics of one proxy process (`/metrics`).

The hot path counts in plain ints: prometheus_client's metric objects take a lock and check
their arguments on every call (about 1.5 µs each, eight calls per request: a few percent of
what meterd spends on a request, bench/). prometheus_client still does the exposition: the
counts become metric families only when `/metrics` is scraped (`collect`).

The metrics tell organization-wide spend, so they are not public: on the proxy port only a
scrape with the metrics token (`Authorization: Bearer ...`) gets them; the metrics listener
(`metrics_port`, its own address) serves them to anyone who can reach it, or, when a token is
set, to a scrape with the token there too.
"""

from __future__ import annotations

import hmac
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ledger.policy import KeyRefused

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
TOKEN_CATEGORIES = {  # metric label → the Settlement field it adds up
    "input": "input_tokens", "output": "output_tokens", "cache_write_5m": "cache_write_5m",
    "cache_write_1h": "cache_write_1h", "cache_read": "cache_read"}


class Histogram:
    """Observations counted per bucket (upper bounds inclusive, as Prometheus's `le`)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class ProxyMetrics:
    """One per app, with its own registry, so several apps in one process (tests, `serve`)
    never collide."""

    def __init__(self, redis_errors: Callable[[], float], spool_depth: Callable[[], float],
                 token: str = "") -> None:
        self.requests: Counter[tuple[int, int]] = Counter()  # (upstream status, stream 0/1)
        self.latency = Histogram(_LATENCY)
        self.overhead = Histogram(_OVERHEAD)
        self.tokens = dict.fromkeys(TOKEN_CATEGORIES, 0)
        self.cost_micros = 0
        self.rejections: Counter[str] = Counter()  # by error type
        self.estimated = 0
        self.telemetry_dropped: Counter[str] = Counter()  # OTLP records, by reason
        # Requests a provider failed before answering, by (that provider, the next tried).
        self.fallbacks: Counter[tuple[str, str]] = Counter()
        self._redis_errors, self._spool_depth = redis_errors, spool_depth
        self._token = token.encode()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """The metric families, as prometheus_client's registry asks a collector for them."""
        requests = CounterMetricFamily("meterd_requests", "Metered requests by upstream status.",
                                       labels=["status", "stream"])
        for (status, stream), n in sorted(self.requests.items()):
            requests.add_metric([str(status), str(stream)], n)
        yield requests
        yield self.latency.family("meterd_request_duration_seconds",
                                  "Time from request to the last byte relayed.")
        yield self.overhead.family("meterd_gateway_overhead_seconds",
                                   "Time meterd adds before forwarding (auth, parsing, admission).")
        tokens = CounterMetricFamily("meterd_tokens", "Tokens metered, by category.",
                                     labels=["category"])
        for category, n in self.tokens.items():
            tokens.add_metric([category], n)
        yield tokens
        yield CounterMetricFamily("meterd_cost_micros", "Cost metered, in micro-USD.",
                                  value=self.cost_micros)
        rejections = CounterMetricFamily("meterd_rejections",
                                         "Requests meterd refused, by reason.", labels=["reason"])
        for reason, n in sorted(self.rejections.items()):
            rejections.add_metric([reason], n)
        yield rejections
        yield CounterMetricFamily("meterd_estimated_requests",
                                  "Requests billed from an estimate (stream cut short).",
                                  value=self.estimated)
        dropped = CounterMetricFamily("meterd_telemetry_dropped",
                                      "Telemetry records dropped, by reason.", labels=["reason"])
        for reason, n in sorted(self.telemetry_dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        fallbacks = CounterMetricFamily(
            "meterd_provider_fallbacks",
            "Requests passed to the next provider of their route, by the provider that failed.",
            labels=["provider", "next"])
        for (provider, next_provider), n in sorted(self.fallbacks.items()):
            fallbacks.add_metric([provider, next_provider], n)
        yield fallbacks
        yield GaugeMetricFamily("meterd_redis_errors",
                                "Redis failures seen by admission and settlement.",
                                value=self._redis_errors())
        yield GaugeMetricFamily("meterd_spool_depth",
                                "Settlements waiting in the local spool for Redis.",
                                value=self._spool_depth())

    async def handle(self, request: web.Request) -> web.Response:
        """`/metrics` on the proxy port: a 404 unless a metrics token is set, which the
        scrape must then present."""
        if not self._token:
            raise web.HTTPNotFound()
        return await self.scrape(request)

    async def scrape(self, request: web.Request) -> web.Response:
        """`/metrics` on the metrics listener: the token too, when one is set."""
        if self._token and not self._presents_token(request):
            raise KeyRefused("/metrics needs the metrics token (Authorization: Bearer)")
        return web.Response(body=generate_latest(self.registry),
                            headers={"content-type": CONTENT_TYPE_LATEST})

    def _presents_token(self, request: web.Request) -> bool:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        # Constant time: the comparison must not tell how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode("utf-8", "replace"), self._token)
