"""Claude Code's native budget notices through the proxy: the usage-limit headers on each answer,
the 429 once blocked, the provider's own rate-limit headers kept from developers, and
GET /api/oauth/usage for gateway keys and signed-in developers (gateway protocol, "Usage-limit
headers"). Both Redis backends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import anthropic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ledger.money import parse_usd
from tests.conftest import Gateway
from tests.sso import SSO
from tests.test_budgets import BODY, COST, new_session

pytest_plugins = ("tests.sso_fixtures",)

U = "anthropic-ratelimit-unified-"


def next_utc_midnight() -> int:
    return (int(time.time()) // 86400 + 1) * 86400


def unified(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(U)}


async def test_each_answer_says_how_much_of_the_cap_is_used_counting_its_own_request(
        gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    # 30,000 µ$ a day; each request reserves 6,000 µ$ at admission and costs 4,500.
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "daily", 30_000)
    seen = []
    async with new_session() as s:
        for _ in range(6):
            async with s.post(gateway.url + "/v1/messages", data=BODY,
                              headers={"x-api-key": key}) as resp:
                await resp.read()
                assert resp.status == 200
                seen.append(unified(resp.headers))
            await gateway.proxy.drain()
    reset = str(next_utc_midnight())
    # spent before + this request's 6,000: 6,000 / 10,500 / 15,000 / 19,500 / 24,000 / 28,500
    assert [h[U + "overage-utilization"] for h in seen] == [
        "0.20", "0.35", "0.50", "0.65", "0.80", "0.95"]
    assert [h[U + "status"] for h in seen] == ["allowed"] * 4 + ["allowed_warning"] * 2
    # the 5th request itself passes 75 %: its answer carries the notice, not the 6th's
    assert [h.get(U + "overage-surpassed-threshold") for h in seen] == [
        None, None, None, None, "0.75", "0.95"]
    for h in seen:
        assert h[U + "reset"] == h[U + "overage-reset"] == reset
        assert h[U + "representative-claim"] == "overage"
        assert h[U + "overage-status"] == h[U + "status"]
        assert U + "overage-scope" not in h  # the developer's own cap


async def test_no_cap_no_notice_headers(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert resp.status == 200
    assert unified(resp.headers) == {}


async def test_a_blocked_developer_gets_the_contracts_429_and_the_sdk_does_not_retry(
        gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "daily", 9_000)
    served = 0
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key,
                                        max_retries=3) as client:
        with pytest.raises(anthropic.RateLimitError) as refused:
            for _ in range(10):
                await client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                             messages=[{"role": "user", "content": "Hi"}])
                served += 1
                await gateway.proxy.drain()
    assert served >= 1
    resp = refused.value.response
    assert resp.status_code == 429
    reset = next_utc_midnight()
    assert unified(resp.headers) == {
        U + "status": "rejected", U + "reset": str(reset), U + "overage-reset": str(reset),
        U + "overage-utilization": "1", U + "overage-surpassed-threshold": "1",
        U + "overage-period": "daily", U + "overage-disabled-reason": "org_spend_cap_reached"}
    assert resp.headers["x-should-retry"] == "false"
    assert abs(int(resp.headers["retry-after"]) - (reset - time.time())) <= 5
    error = resp.json()["error"]
    assert error["type"] == "billing_error"
    message = error["message"]
    assert message.startswith("spend limit reached (developer Ada, daily) · resets ")
    assert message.endswith(" UTC · ask your meterd administrator for an increase")
    assert len(gateway.upstream.recorded) == served  # refused before the provider
    assert gateway.proxy.metrics.rejections["billing_error"] == 1  # and asked once: no retry


async def test_a_team_pool_that_ran_out_says_so(start_gateway: Any) -> None:
    gateway = await start_gateway(public_url="https://gw.example.com")
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "team", "platform", "monthly", 1)
    resp = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert resp.status == 429
    headers = unified(resp.headers)
    assert headers[U + "overage-scope"] == "group_pool"
    assert headers[U + "overage-period"] == "monthly"
    assert (await resp.json())["error"]["message"].endswith(
        " · request an increase at https://gw.example.com/admin/me#increase")


@pytest.fixture
async def quota_upstream() -> AsyncIterator[TestServer]:
    """A provider that tells the organization its own quota and rate limits."""
    async def messages(request: web.Request) -> web.Response:
        body = {"type": "message", "model": "claude-sonnet-4-6", "content": [],
                "usage": {"input_tokens": 1200, "output_tokens": 60}}
        return web.json_response(body, headers={
            "anthropic-ratelimit-unified-status": "allowed",
            "anthropic-ratelimit-unified-5h-utilization": "0.99",
            "anthropic-ratelimit-requests-limit": "4000",
            "Anthropic-RateLimit-Tokens-Remaining": "1", "request-id": "req_quota"})

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


@pytest.mark.parametrize("capped", [False, True])
async def test_the_providers_own_quota_never_reaches_a_developer(
        start_gateway: Any, quota_upstream: TestServer, capped: bool) -> None:
    gateway = await start_gateway(upstream_url=str(quota_upstream.make_url("")).rstrip("/"))
    key = await gateway.developer("Ada", "platform")
    if capped:
        await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly",
                             parse_usd("10"))
    resp = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert resp.status == 200
    assert resp.headers["request-id"] == "req_quota"  # the provider's other headers pass
    names = {k.lower() for k in resp.headers if k.lower().startswith("anthropic-ratelimit-")}
    if capped:  # meterd's own, describing the developer's cap
        assert names == {U + n for n in ("status", "representative-claim", "overage-status",
                                         "overage-utilization", "reset", "overage-reset")}
        assert resp.headers[U + "overage-utilization"] != "0.99"
    else:
        assert names == set()


async def test_usage_for_a_gateway_key_with_a_cap_matches_the_headers(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly",
                         parse_usd("0.10"))  # 10 cents
    await gateway.change(gateway.admin.catalog.set_budget, "team", "platform", "daily",
                         parse_usd("1"))
    for _ in range(3):
        resp = await gateway.client.post("/v1/messages", data=BODY,
                                         headers={"x-api-key": key})
        assert resp.status == 200
        await gateway.proxy.drain()
    header_reset = int(resp.headers[U + "overage-reset"])
    usage = await gateway.client.get("/api/oauth/usage", headers={"x-api-key": key})
    assert usage.status == 200 and usage.headers["cache-control"] == "no-store"
    doc = await usage.json()
    # 3 × 4,500 µ$ = 13,500 µ$ = 1.35 ¢ → 1 ¢ of the developer's 10 ¢ (13 %), 1 ¢ of the
    # team's 100 ¢ (1 %): the developer's cap is the fullest, as in the headers.
    assert doc["extra_usage"] == {"is_enabled": True, "monthly_limit": 10, "used_credits": 1,
                                  "utilization": 13, "currency": "USD"}
    rows = {row["group"]: row for row in doc["limits"]}
    assert rows["monthly"]["is_active"] and not rows["daily"]["is_active"]
    assert (rows["monthly"]["percent"], rows["daily"]["percent"]) == (13, 1)
    assert datetime.fromisoformat(rows["monthly"]["resets_at"]).timestamp() == header_reset
    assert 3 * COST == 13_500


async def test_usage_of_a_cap_that_blocks_is_full_and_critical_as_the_429_says(
        gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "team", "platform", "weekly",
                         parse_usd("1"))
    for _ in range(2):  # 9,000 µ$ of the team's $1: under 1 %
        resp = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
        assert resp.status == 200
    await gateway.proxy.drain()
    # A $0 cap blocks whatever was spent: the developer's 9,000 µ$ of $0 is no "0 %".
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "daily", 0)
    refused = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert refused.status == 429
    assert (await refused.json())["error"]["type"] == "billing_error"
    assert refused.headers[U + "overage-period"] == "daily"
    doc = await (await gateway.client.get("/api/oauth/usage",
                                          headers={"x-api-key": key})).json()
    assert doc["extra_usage"] == {"is_enabled": True, "monthly_limit": 0, "used_credits": 1,
                                  "utilization": 100, "currency": "USD"}
    rows = {row["group"]: row for row in doc["limits"]}
    assert (rows["daily"]["percent"], rows["daily"]["severity"]) == (100, "critical")
    assert rows["daily"]["is_active"] and not rows["weekly"]["is_active"]
    assert (rows["weekly"]["percent"], rows["weekly"]["severity"]) == (0, "normal")
    assert datetime.fromisoformat(rows["daily"]["resets_at"]).timestamp() == int(
        refused.headers[U + "overage-reset"])


async def test_usage_without_a_cap_is_the_developers_spend(gateway: Gateway) -> None:
    key = await gateway.developer()
    for _ in range(2):
        assert (await gateway.client.post("/v1/messages", data=BODY,
                                          headers={"x-api-key": key})).status == 200
    await gateway.proxy.drain()
    doc = await (await gateway.client.get("/api/oauth/usage",
                                          headers={"x-api-key": key})).json()
    # 2 × 4,500 µ$ = 0.9 ¢ → 1 ¢, the same this day, week and month
    assert doc == {"extra_usage": {
        "is_enabled": True, "monthly_limit": None, "used_credits": 1, "utilization": None,
        "currency": "USD", "daily": {"limit": None, "used_credits": 1, "utilization": None},
        "weekly": {"limit": None, "used_credits": 1, "utilization": None}}, "limits": []}


async def test_usage_needs_a_credential(gateway: Gateway) -> None:
    resp = await gateway.client.get("/api/oauth/usage")
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_usage_for_a_signed_in_developer(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    bearer = {"Authorization": f"Bearer {answer['access_token']}"}
    gateway = sso.gateway
    await gateway.change(gateway.admin.catalog.set_budget, "team", "engineering", "weekly",
                         parse_usd("5"))
    resp = await gateway.client.get("/api/oauth/usage", headers=bearer)
    assert resp.status == 200
    doc = await resp.json()
    assert doc["extra_usage"]["monthly_limit"] == 500
    assert [(r["group"], r["is_active"]) for r in doc["limits"]] == [("weekly", True)]
