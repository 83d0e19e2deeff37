"""Prometheus metrics of one proxy process (`/metrics`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
TOKEN_CATEGORIES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


class ProxyMetrics:
    """One registry per app, so several apps in one process (tests, `serve`) never collide."""

    def __init__(self, redis_errors: Callable[[], float], spool_depth: Callable[[], float]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("meterd_requests", "Metered requests by upstream status.",
                                ["status", "stream"], registry=r)
        self.latency = Histogram("meterd_request_duration_seconds",
                                 "Time from request to the last byte relayed.",
                                 buckets=_LATENCY, registry=r)
        self.overhead = Histogram("meterd_gateway_overhead_seconds",
                                  "Time meterd adds before forwarding (auth, parsing, admission).",
                                  buckets=_OVERHEAD, registry=r)
        self.tokens = Counter("meterd_tokens", "Tokens metered, by category.", ["category"],
                              registry=r)
        self.cost = Counter("meterd_cost_micros", "Cost metered, in micro-USD.", registry=r)
        self.rejections = Counter("meterd_rejections", "Requests meterd refused, by reason.",
                                  ["reason"], registry=r)
        self.estimated = Counter("meterd_estimated_requests",
                                 "Requests billed from an estimate (stream cut short).",
                                 registry=r)
        Gauge("meterd_redis_errors", "Redis failures seen by admission and settlement.",
              registry=r).set_function(redis_errors)
        Gauge("meterd_spool_depth", "Settlements waiting in the local spool for Redis.",
              registry=r).set_function(spool_depth)
        # Label children looked up once, not per request (labels() takes a lock and builds
        # a tuple each time).
        self.token_counters = tuple(self.tokens.labels(c) for c in TOKEN_CATEGORIES)
        self._request_counters: dict[tuple[int, int], Any] = {}

    def count_request(self, status: int, stream: int) -> None:
        """One more metered request with this upstream status."""
        child = self._request_counters.get((status, stream))
        if child is None:
            child = self._request_counters[(status, stream)] = self.requests.labels(
                str(status), str(stream))
        child.inc()

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"content-type": CONTENT_TYPE_LATEST})
