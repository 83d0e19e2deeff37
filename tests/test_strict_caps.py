"""Strict caps hold when requests enable server tools: 200 concurrent requests through two
proxies on one Redis, each answer costing as much as its request allows (advisor calls short of
fast mode, which they cannot use)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from meterd.apps import create_proxy_app
from meterd.settings import Settings
from proxy.state import STATE, ProxyState
from tests.conftest import Gateway

pytestmark = pytest.mark.parametrize("redis_url", ["real"], indirect=True)

MODEL = "claude-3-haiku"  # dearest input side $0.50 (1h cache write), output $1.25
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
CONTEXT = 1_000_000  # a pass after a search reads at most a context window
REQUESTS = 200


def body(max_tokens: int, tools: list[dict[str, Any]], stream: bool = True) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                         "tools": tools, "messages": [{"role": "user", "content": "Search"}]})


def worst_usage(prompt: int, max_tokens: int, searches: int) -> str:
    """What an answer may cost at most: every pass after a search reads a full context
    window, written to the 1h cache (the dearest input side), and every search made."""
    read = prompt + searches * CONTEXT
    return orjson.dumps({
        "input_tokens": 0, "output_tokens": max_tokens, "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": read},
        "server_tool_use": {"web_search_requests": searches}}).decode()


@pytest.fixture
async def proxies(gateway: Gateway, make_settings: Callable[..., Settings], tmp_path: Path,
                  aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
                  ) -> list[tuple[str, ProxyState]]:
    """The gateway's proxy and a second proxy app from the real factory, on the same Redis."""
    second = await aiohttp_client(create_proxy_app(make_settings(
        upstream_url=gateway.upstream.url, data_dir=str(tmp_path / "proxy2"))))
    return [(gateway.url, gateway.proxy),
            (str(second.make_url("")).rstrip("/"), second.app[STATE])]


async def strict_cap(gateway: Gateway, proxies: list[tuple[str, ProxyState]],
                     amount: int) -> None:
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly",
                         amount, "strict")
    for _, state in proxies:
        await state.refresh_policy()


async def burst(proxies: list[tuple[str, ProxyState]], key: str, data: bytes,
                usage: str) -> list[tuple[int, Any]]:
    """REQUESTS at once, alternating between the proxies. The provider answers after 2 s, so
    every admission is decided before any request settles."""
    headers = {"x-api-key": key, "x-mock-usage": usage, "x-mock-delay-ms": "2000"}

    async def send(session: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
        url = proxies[i % len(proxies)][0]
        async with session.post(url + "/v1/messages", data=data, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, (i % len(proxies), orjson.loads(raw) if resp.status != 200
                                 else raw)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(send(session, i) for i in range(REQUESTS)))


async def spent(gateway: Gateway, proxies: list[tuple[str, ProxyState]],
                expected: int) -> dict[str, int]:
    """The developer's monthly counter once `expected` µ$ have settled (or 5 s passed)."""
    dev_id = (await gateway.admin.db(gateway.admin.catalog.developers))[0]["id"]
    key = gateway.proxy.keyspace.counter("developer", dev_id, "monthly", datetime.now(UTC))
    for _ in range(100):
        for _, state in proxies:
            await state.drain()
        counter = {k.decode(): int(v) for k, v in
                   (await gateway.proxy.redis.hgetall(key)).items() if not k.startswith(b"w")}
        if counter.get("spent", 0) >= expected:
            break
        await asyncio.sleep(0.05)
    return counter


def check_refusals(results: list[tuple[int, Any]], proxies: list[Any]) -> None:
    """Every request not admitted was refused by the spend cap, on both proxies."""
    refused = [detail for status, detail in results if status != 200]
    assert {status for status, _ in results} <= {200, 429}
    assert all(doc["error"]["type"] == "billing_error" for _, doc in refused)
    assert {proxy for proxy, _ in refused} == set(range(len(proxies)))


@pytest.mark.parametrize(("max_tokens", "max_uses"), [(100, 2), (4, None)],
                         ids=["max_uses 2", "no max_uses: one search per output token"])
async def test_strict_cap_is_never_passed_by_searches_through_two_proxies(
        gateway: Gateway, proxies: list[tuple[str, ProxyState]], max_tokens: int,
        max_uses: int | None) -> None:
    key = await gateway.developer("Ada", "platform")
    tool = SEARCH if max_uses is None else {**SEARCH, "max_uses": max_uses}
    data = body(max_tokens, [tool])
    searches = max_tokens if max_uses is None else max_uses
    # The worst case: the prompt (a token per body byte) and each pass after a search (a
    # context window) at $0.50/MTok, max_tokens at $1.25/MTok, each search $0.01. In quarter
    # µ$: rounded up for the reservation, half up for what the answer below costs.
    read = len(data) + searches * CONTEXT
    reserve = -(-(2 * read + 5 * max_tokens) // 4) + searches * 10_000
    cost = (2 * read + 5 * max_tokens + 2) // 4 + searches * 10_000
    # Room for five worst cases and half of a sixth: exactly five are admitted.
    cap = 5 * reserve + reserve // 2
    await strict_cap(gateway, proxies, cap)
    results = await burst(proxies, key, data, worst_usage(len(data), max_tokens, searches))
    admitted = sum(status == 200 for status, _ in results)
    assert admitted == 5
    check_refusals(results, proxies)
    counter = await spent(gateway, proxies, admitted * cost)
    assert counter["spent"] == admitted * cost <= cap
    assert counter["held"] == 0


async def test_strict_cap_is_never_passed_by_advisor_calls_through_two_proxies(
        gateway: Gateway, proxies: list[tuple[str, ProxyState]]) -> None:
    key = await gateway.developer("Ada", "platform")
    advice, max_tokens = 1000, 100
    data = body(max_tokens, [{"type": "advisor_20260301", "name": "advisor",
                              "model": "claude-opus-4-8", "max_uses": 1,
                              "max_tokens": advice}], stream=False)
    # One call reads at most the prompt, the output and its own advice; the executor's pass
    # after it reads that again. Reserved: the executor at $0.50 / $1.25, the advisor at Opus
    # 4.8's dearest rates (fast: $20 1h write, $50 out) with the US multiplier. In hundredths
    # of µ$, rounded up.
    context = len(data) + max_tokens + advice
    executor_in = len(data) + context
    reserve = -(-(executor_in * 50 + max_tokens * 125 + (context * 20 + advice * 50) * 110)
                // 100)
    # The answer: the executor's input all 1h writes; the call all 1h writes at Opus 4.8's
    # $10 and its advice at $25, in the US (× 1.1 for Opus 4.8 only). Half up.
    cost = (executor_in * 50 + max_tokens * 125 + (context * 10 + advice * 25) * 110 + 50) \
        // 100
    usage = orjson.dumps({
        "input_tokens": 0, "output_tokens": max_tokens, "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": executor_in,
        "cache_creation": {"ephemeral_5m_input_tokens": 0,
                           "ephemeral_1h_input_tokens": executor_in},
        "inference_geo": "us",
        "iterations": [
            {"type": "message", "input_tokens": len(data), "output_tokens": 10},
            {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 0,
             "output_tokens": advice, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": context,
             "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                "ephemeral_1h_input_tokens": context}},
            {"type": "message", "input_tokens": context, "output_tokens": 90}]}).decode()
    cap = 5 * reserve + reserve // 2
    await strict_cap(gateway, proxies, cap)
    results = await burst(proxies, key, data, usage)
    admitted = sum(status == 200 for status, _ in results)
    assert admitted == 5
    check_refusals(results, proxies)
    counter = await spent(gateway, proxies, admitted * cost)
    assert counter["spent"] == admitted * cost <= cap
    assert counter["held"] == 0
