"""Spend caps and rate limits, enforced at admission under real concurrency."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from ledger.money import parse_usd
from tests.conftest import Gateway

MODEL = "claude-sonnet-4-6"
# About the size of a small Claude Code request: strict caps reserve one token per body byte.
SYSTEM = "You are a careful coding assistant. " * 170
BODY = orjson.dumps({"model": MODEL, "max_tokens": 100, "stream": True, "system": SYSTEM,
                     "messages": [{"role": "user", "content": "Hello"}]})
# What the mock answers unless told otherwise: 1200 in, 60 out → 1200×3 + 60×15 = 4500 µ$.
COST = 4500


async def send(session: aiohttp.ClientSession, url: str, key: str,
               headers: dict[str, str] | None = None, body: bytes = BODY) -> tuple[int, Any]:
    async with session.post(url + "/v1/messages", data=body,
                            headers={"x-api-key": key, **(headers or {})}) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if resp.status != 200 else raw)


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def until_refused(urls: list[str], key_for: Any, workers: int,
                        headers: dict[str, str] | None = None) -> tuple[int, list[int]]:
    """`workers` clients each send requests until refused; (accepted, refusal statuses)."""
    accepted = 0
    refusals: list[int] = []

    async def worker(i: int) -> None:
        nonlocal accepted
        async with new_session() as session:
            while True:
                status, _ = await send(session, urls[i % len(urls)], key_for(i), headers)
                if status != 200:
                    refusals.append(status)
                    return
                accepted += 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return accepted, refusals


async def knows_cap(url: str, keys: list[str], scope: str) -> None:
    """Wait until the proxy at `url` (another process) applies a `scope` cap to every key."""
    deadline = time.monotonic() + 10
    async with new_session() as s:
        for key in keys:
            while True:
                async with s.get(url + "/meterd/v1/me", headers={"x-api-key": key}) as r:
                    me = await r.json() if r.status == 200 else {"budgets": []}
                if any(b["scope"] == scope for b in me["budgets"]):
                    break
                assert time.monotonic() < deadline, f"{url} never applied the {scope} cap"
                await asyncio.sleep(0.05)


async def counter(gw: Gateway, scope: str, scope_id: str, period: str = "monthly") -> dict:
    key = gw.proxy.keyspace.counter(scope, scope_id, period, datetime.now(UTC))
    raw = await gw.proxy.redis.hgetall(key)
    return {k.decode(): int(v) for k, v in raw.items() if not k.startswith(b"w")}


async def ids(gw: Gateway) -> tuple[str, str]:
    dev = (await gw.admin.db(gw.admin.catalog.developers))[0]
    return dev["id"], dev["team_id"]


@dataclass
class FixedClock:
    """The gate's clock in a test: it says `at` until the test moves it."""

    at: datetime

    def __call__(self) -> datetime:
        return self.at


# Half a minute into a UTC minute: rate windows are UTC minutes, and a burst at a fixed time
# lands in one of them (on the real clock it could straddle two).
MID_MINUTE = datetime(2026, 3, 12, 9, 41, 30, tzinfo=UTC)


@pytest.fixture
def clock(gateway: Gateway) -> FixedClock:
    """Fix the time the gateway's proxy admits at."""
    fixed = FixedClock(MID_MINUTE)
    gateway.proxy.gate.clock = fixed
    return fixed


# -- exact refusals --------------------------------------------------------------------------

async def test_spend_cap_refusal_has_exact_body_and_headers(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    await gateway.change(cat.set_budget, "team", "platform", "monthly", 1)  # 1 µ$
    async with new_session() as s:
        before = datetime.now(UTC)
        resp = await s.post(gateway.url + "/v1/messages", data=BODY, headers={"x-api-key": key})
        doc = await resp.json()
    assert resp.status == 429
    year, month = (before.year + 1, 1) if before.month == 12 else (before.year,
                                                                     before.month + 1)
    reset = datetime(year, month, 1, tzinfo=UTC)
    assert doc == {"type": "error", "error": {
        "type": "billing_error",
        "message": f"spend limit reached (team platform, monthly) · resets "
                   f"{reset:%Y-%m-%d} 00:00 UTC · ask your meterd administrator for an "
                   "increase"}}
    assert resp.headers["x-should-retry"] == "false"
    expected_wait = math.ceil(reset.timestamp() - before.timestamp())
    assert abs(int(resp.headers["retry-after"]) - expected_wait) <= 2
    assert len(gateway.upstream.recorded) == 0  # refused before the provider saw anything


async def test_rate_limit_refusal_has_exact_body_and_headers(gateway: Gateway,
                                                             clock: FixedClock) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_limits, "developer", "Ada", rpm=2)
    async with new_session() as s:
        first = await s.post(gateway.url + "/v1/messages", data=BODY, headers={"x-api-key": key})
        await first.read()
        assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
        assert first.headers["anthropic-ratelimit-requests-reset"] == "2026-03-12T09:42:00Z"
        await (await s.post(gateway.url + "/v1/messages", data=BODY,
                            headers={"x-api-key": key})).read()
        resp = await s.post(gateway.url + "/v1/messages", data=BODY, headers={"x-api-key": key})
        doc = await resp.json()
    assert resp.status == 429
    assert resp.headers["retry-after"] == "30"  # the rest of the minute
    assert resp.headers["x-should-retry"] == "true"
    assert doc == {"type": "error", "error": {
        "type": "rate_limit_error",
        "message": "rate limit reached: 2 requests per minute (developer Ada); retry in 30 s"}}


async def test_rate_window_ends_exactly_at_the_utc_minute(gateway: Gateway,
                                                          clock: FixedClock) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_limits, "developer", "Ada", rpm=1)
    clock.at = datetime(2026, 3, 12, 9, 41, 59, 999_000, tzinfo=UTC)
    async with new_session() as s:
        last = await s.post(gateway.url + "/v1/messages", data=BODY, headers={"x-api-key": key})
        await last.read()
        refused = await s.post(gateway.url + "/v1/messages", data=BODY,
                               headers={"x-api-key": key})
        await refused.read()
        clock.at = datetime(2026, 3, 12, 9, 42, tzinfo=UTC)
        first = await s.post(gateway.url + "/v1/messages", data=BODY, headers={"x-api-key": key})
        await first.read()
    assert last.status == 200
    assert last.headers["anthropic-ratelimit-requests-reset"] == "2026-03-12T09:42:00Z"
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"  # 1 ms left, rounded up to a whole second
    assert first.status == 200  # a new window: the request of :59.999 no longer counts
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert first.headers["anthropic-ratelimit-requests-reset"] == "2026-03-12T09:43:00Z"


async def test_count_tokens_is_never_blocked_by_a_cap(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "daily", 0)
    async with new_session() as s:
        status, _ = await send(s, gateway.url, key)
        assert status == 429
        resp = await s.post(gateway.url + "/v1/messages/count_tokens", data=BODY,
                            headers={"x-api-key": key})
        assert resp.status == 200


# -- races -------------------------------------------------------------------------------------

async def test_strict_cap_is_never_passed_by_200_concurrent_streams(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    cap = parse_usd("0.10")
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly", cap,
                         "strict")
    reserve = gateway.proxy.estimate(MODEL, len(BODY), 100).strict_micros
    accepted, refusals = await until_refused([gateway.url], lambda i: key, 200)
    events = await gateway.settled(accepted)
    dev_id, _ = await ids(gateway)
    spent = (await counter(gateway, "developer", dev_id))["spent"]
    assert gateway.proxy.gate.redis_errors == 0
    assert spent == accepted * COST == sum(int(e["cost_micros"]) for e in events)
    assert spent <= cap  # never passed, under any concurrency
    assert spent > cap - reserve  # and the cap was used up, not refused early
    assert set(refusals) == {429}
    assert (await counter(gateway, "developer", dev_id))["held"] == 0


async def test_estimate_cap_overshoot_is_bounded_by_in_flight_requests(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    cap = parse_usd("0.10")
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly", cap)
    # Each request really costs more than its estimate: 5000×3 + 60×15 = 15,900 µ$.
    usage = {"x-mock-usage": '{"input_tokens": 5000, "output_tokens": 60}'}
    estimate = gateway.proxy.estimate(MODEL, len(BODY), 100).default_micros
    actual = 15_900
    accepted, _ = await until_refused([gateway.url], lambda i: key, 200, usage)
    await gateway.settled(accepted)
    dev_id, _ = await ids(gateway)
    spent = (await counter(gateway, "developer", dev_id))["spent"]
    assert spent == accepted * actual
    # At most cap/estimate requests can hold reservations at once; each may overshoot by
    # (actual - estimate). That is the whole bound.
    assert spent <= cap + (cap // estimate) * (actual - estimate)
    assert spent > cap - estimate


async def test_requests_per_minute_admits_exactly_the_limit(gateway: Gateway,
                                                            clock: FixedClock) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_limits, "developer", "Ada", rpm=37)
    async with new_session() as s:
        results = await asyncio.gather(*(send(s, gateway.url, key) for _ in range(200)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 37
    assert statuses.count(429) == 163
    assert {doc["error"]["type"] for status, doc in results if status == 429} == {
        "rate_limit_error"}


async def test_concurrency_limit_admits_exactly_the_limit(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_limits, "team", "platform", concurrency=5)
    slow = {"x-mock-event-delay-ms": "100"}  # ~1 s per stream: all 200 overlap
    async with new_session() as s:
        results = await asyncio.gather(*(send(s, gateway.url, key, slow) for _ in range(200)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 5
    async with new_session() as s:  # slots were released when the streams ended
        assert (await send(s, gateway.url, key))[0] == 200


async def test_input_tokens_per_minute_is_reserved_before_forwarding(
        gateway: Gateway, clock: FixedClock) -> None:
    key = await gateway.developer("Ada", "platform")
    prompt_estimate = gateway.proxy.estimate(MODEL, len(BODY), 100).prompt_tokens
    await gateway.change(gateway.admin.catalog.set_limits, "developer", "Ada",
                         itpm=prompt_estimate * 3)
    async with new_session() as s:
        results = await asyncio.gather(*(send(s, gateway.url, key) for _ in range(50)))
    assert [status for status, _ in results].count(200) == 3


# -- aborts, thresholds, scopes ---------------------------------------------------------------

async def test_aborted_stream_is_billed_and_releases_slot_and_reservation(
        gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    await gateway.change(cat.set_limits, "developer", "Ada", concurrency=1)
    await gateway.change(cat.set_budget, "developer", "Ada", "monthly", parse_usd("5"))
    async with new_session() as s:
        resp = await s.post(gateway.url + "/v1/messages", data=BODY, headers={
            "x-api-key": key, "x-mock-text-chunks": "40", "x-mock-event-delay-ms": "50"})
        seen = b""
        while b"content_block_delta" not in seen:
            seen += await resp.content.readany()
        resp.close()
    (event,) = await gateway.settled(1)
    assert event["estimated"] == "1" and event["input_tokens"] == "1200"
    dev_id, _ = await ids(gateway)
    monthly = await counter(gateway, "developer", dev_id)
    assert monthly["held"] == 0 and monthly["spent"] == int(event["cost_micros"]) > 3600
    flying = await gateway.proxy.redis.zcard(gateway.proxy.keyspace.in_flight("developer",
                                                                               dev_id))
    assert flying == 0
    async with new_session() as s:  # the slot is free again
        assert (await send(s, gateway.url, key))[0] == 200


async def test_soft_thresholds_are_recorded_once_and_shown_in_headers(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    # 5 requests of 4500 µ$ reach 75% of 30,000 on the 5th settlement (22,500).
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "daily", 30_000)
    headers = []
    async with new_session() as s:
        for _ in range(6):
            resp = await s.post(gateway.url + "/v1/messages", data=BODY,
                                headers={"x-api-key": key})
            await resp.read()
            headers.append(resp.headers)
            await gateway.proxy.drain()
    alerts = await gateway.proxy.redis.xrange(gateway.proxy.keyspace.alerts)
    assert [(f[b"threshold"], f[b"spent"]) for _, f in alerts] == [(b"75", b"22500")]
    passed = "anthropic-ratelimit-unified-overage-surpassed-threshold"
    assert passed not in headers[0]
    # The 6th request was admitted with 22,500 spent + 6,000 reserved: 95% of the cap.
    assert headers[5]["anthropic-ratelimit-unified-overage-utilization"] == "0.95"
    assert headers[5][passed] == "0.95"


async def test_team_member_default_cap_applies_to_each_member(gateway: Gateway) -> None:
    ada = await gateway.developer("Ada", "platform")
    bob = await gateway.developer("Bob", "platform")
    # Room for one request's reservation, not for a second one after it settled.
    cap = gateway.proxy.estimate(MODEL, len(BODY), 100).default_micros + 1000
    await gateway.change(gateway.admin.catalog.set_budget, "team_member", "platform", "daily",
                         cap)
    async with new_session() as s:
        assert [(await send(s, gateway.url, k))[0] for k in (ada, ada, bob, bob)] == [
            200, 429, 200, 429]


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_team_pool_holds_across_developers_and_two_proxy_processes(
        gateway: Gateway, second_proxy: str) -> None:
    keys = [await gateway.developer(f"Dev {i}", "platform") for i in range(4)]
    cap = parse_usd("0.20")
    await gateway.change(gateway.admin.catalog.set_budget, "team", "platform", "monthly", cap,
                         "strict")
    await knows_cap(second_proxy, keys, "team")  # it polls the policy every 0.25 s
    reserve = gateway.proxy.estimate(MODEL, len(BODY), 100).strict_micros
    _, team_id = await ids(gateway)

    async def settled(accepted: int) -> dict[str, int]:
        deadline = time.monotonic() + 5
        while (now := await counter(gateway, "team", team_id))["spent"] < accepted * COST:
            assert time.monotonic() < deadline  # the other process settles on its own loop
            await asyncio.sleep(0.05)
        return now

    accepted, refusals = await until_refused([gateway.url, second_proxy],
                                             lambda i: keys[i % 4], 200)
    assert set(refusals) == {429}  # the cap refused them, nothing else
    assert (await settled(accepted))["spent"] == accepted * COST <= cap
    # Under concurrency a request is refused while others hold reservations. Alone, one is
    # refused only when the pool is spent (or a reservation leaked).
    more, refusals = await until_refused([second_proxy], lambda i: keys[1], 1)
    assert refusals == [429]
    pool = await settled(accepted + more)
    assert pool["spent"] == (accepted + more) * COST
    assert cap - reserve < pool["spent"] <= cap
    assert pool["held"] == 0
    by_dev = {e["developer_id"] for e in await gateway.events()}
    assert len(by_dev) > 1  # the pool was shared

