"""The proxy's own counters (proxy/metrics.py) and request ids (proxy/state.py): exact
Prometheus exposition, ids unique per process and per request; who may scrape them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.exposition import generate_latest

from meterd.settings import Settings, SettingsError
from proxy import state as proxy_state
from proxy.metrics import Histogram, ProxyMetrics
from proxy.state import RequestIds
from tests.conftest import Gateway, free_port

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
TOKEN = "mtk-3f9c1b7e5d2a4c6b8e0f1a3c5e7b9d1f"
SPEND = "meterd_cost_micros_total 4500.0"  # the one request below: 1200 × $3 + 60 × $15
StartGateway = Callable[..., Awaitable[Gateway]]


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


# --- who may scrape ---------------------------------------------------------------------------


async def spend(gw: Gateway) -> None:
    key = await gw.developer()
    await (await gw.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})).read()
    await gw.settled(1)


async def scrape(url: str, authorization: str | None = None) -> tuple[int, str]:
    headers = {"authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", headers=headers) as resp:
        return resp.status, await resp.text()


async def test_without_a_metrics_token_the_proxy_port_serves_no_metrics(
        start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    await spend(gw)
    status, body = await scrape(gw.url)
    assert status == 404
    assert orjson.loads(body)["error"]["type"] == "not_found_error"
    assert "meterd_" not in body


@pytest.mark.parametrize("authorization", [
    None,
    "Bearer wrong",
    "Bearer " + TOKEN[:-1] + "0",  # all but the last character right
    TOKEN,  # no scheme
    "Basic " + TOKEN,
])
async def test_a_scrape_without_the_metrics_token_gets_no_spend(
        start_gateway: StartGateway, authorization: str | None) -> None:
    gw = await start_gateway(metrics_token=TOKEN)
    await spend(gw)
    status, body = await scrape(gw.url, authorization)
    assert status == 401
    assert orjson.loads(body)["error"]["type"] == "authentication_error"
    assert "meterd_" not in body and TOKEN not in body


async def test_a_scrape_with_the_metrics_token_gets_the_spend(
        start_gateway: StartGateway) -> None:
    gw = await start_gateway(metrics_token=TOKEN)
    await spend(gw)
    status, body = await scrape(gw.url, f"Bearer {TOKEN}")
    assert status == 200
    assert SPEND in body.splitlines()


async def test_the_metrics_listener_serves_metrics_apart_from_the_proxy_port(
        start_gateway: StartGateway) -> None:
    port = free_port()
    gw = await start_gateway(metrics_port=port)
    await spend(gw)
    listener = f"http://127.0.0.1:{port}"
    status, body = await scrape(listener)
    assert status == 200 and SPEND in body.splitlines()
    assert (await scrape(gw.url))[0] == 404  # not on the proxy port
    async with aiohttp.ClientSession() as s, s.get(listener + "/v1/models") as resp:
        assert resp.status == 404  # the listener serves nothing else


async def test_a_metrics_token_guards_the_metrics_listener_too(
        start_gateway: StartGateway) -> None:
    port = free_port()
    gw = await start_gateway(metrics_port=port, metrics_token=TOKEN)
    await spend(gw)
    listener = f"http://127.0.0.1:{port}"
    status, body = await scrape(listener)
    assert status == 401 and "meterd_" not in body
    status, body = await scrape(listener, f"Bearer {TOKEN}")
    assert status == 200 and SPEND in body.splitlines()


def test_the_metrics_token_comes_from_the_environment_or_a_file_never_the_config(
        tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text(f'metrics_token = "{TOKEN}"\n')
    with pytest.raises(SettingsError, match="metrics_token is a secret"):
        Settings.load(config, environ={})
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    loaded = Settings.load(environ={"MTD_METRICS_TOKEN_FILE": str(secret)})
    assert loaded.metrics_token == TOKEN
    assert TOKEN not in repr(loaded)
    assert Settings.load(environ={"MTD_METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
