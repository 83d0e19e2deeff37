"""Per-model caps: a cap on a model family that switching spellings cannot dodge, held under
200 concurrent requests through two proxies with no overshoot in strict mode."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from ledger.catalog import Catalog, CatalogError, connect
from ledger.model_caps import ModelCaps, matches
from proxy.state import ProxyState
from tests.conftest import Gateway
from tests.test_strict_caps import MODEL, REQUESTS, body, proxies, worst_usage

__all__ = ["proxies"]  # the fixture, used by name


@pytest.mark.parametrize(("models", "model", "expected"), [
    (("opus",), "claude-opus-4-8", True),
    (("opus",), "us.anthropic.claude-opus-4-8-v1:0", True),  # Bedrock
    (("opus",), "claude-opus-4-8@20260101", True),  # Vertex
    (("opus",), "Claude-Opus-4-8[1m]", True),
    (("opus",), "claude-3-opus-20240229", True),
    (("opus",), "claude-sonnet-4-6", False),
    (("opus",), "claude-opusx-1", False),  # a family is a whole word of the id
    (("claude-haiku-*",), "eu.anthropic.claude-haiku-4-5-20251001-v1:0", True),
    (("claude-haiku-*",), "claude-3-haiku", False),
    (("claude-sonnet-4-6", "opus"), "claude-sonnet-4-6-20260101", True),
])
def test_a_model_set_matches_every_spelling_of_its_models(models: tuple[str, ...], model: str,
                                                           expected: bool) -> None:
    assert matches(models, model) is expected


def test_a_model_cap_is_validated_and_audited() -> None:
    catalog = Catalog(connect(":memory:"))
    caps = ModelCaps(catalog)
    with pytest.raises(CatalogError, match="name at least one model"):
        caps.set("org", "", "daily", [], 1_000)
    with pytest.raises(CatalogError, match="not negative"):
        caps.set("org", "", "daily", ["opus"], -1)
    row = caps.set("org", "", "daily", ["Opus"], 1_000, actor="lee")
    assert (row["models"], row["amount_micros"]) == (["opus"], 1_000)
    again = caps.set("org", "", "daily", ["opus"], 2_000, actor="lee")  # replaces it
    assert again["id"] == row["id"] and len(caps.all()) == 1
    assert [a["action"] for a in catalog.audit()] == ["model_budget.set"] * 2


async def test_a_strict_model_cap_holds_under_200_requests_through_two_proxies(
        gateway: Gateway, proxies: list[tuple[str, ProxyState]]) -> None:
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    max_tokens = 100
    capped = body(max_tokens, [])  # claude-3-haiku
    other = capped.replace(MODEL.encode(), b"claude-sonnet-4-6")
    # Strict reserves a token per body byte at haiku's dearest input side ($0.50/MTok) and
    # max_tokens at $1.25/MTok, in quarter µ$, rounded up; the answer (all of it 1h cache
    # writes) costs the same, half up.
    reserve = -(-(2 * len(capped) + 5 * max_tokens) // 4)
    cost = (2 * len(capped) + 5 * max_tokens + 2) // 4
    cap = 5 * reserve + reserve // 2  # room for exactly five
    await gateway.change(ModelCaps(cat).set, "developer", "Ada", "monthly", ["haiku"], cap,
                         "strict")
    for _, state in proxies:
        await state.refresh_policy()
    usage = worst_usage(len(capped), max_tokens, 0)
    headers = {"x-api-key": key, "x-mock-usage": usage, "x-mock-delay-ms": "2000"}

    async def send(session: aiohttp.ClientSession, i: int) -> tuple[int, bool, Any]:
        """Haiku on i % 4 in (0, 1), Sonnet otherwise; both proxies get both."""
        on_haiku = i % 4 < 2
        url = proxies[i % 2][0]
        async with session.post(url + "/v1/messages", data=capped if on_haiku else other,
                                headers=headers) as resp:
            raw = await resp.read()
            return resp.status, on_haiku, orjson.loads(raw) if resp.status != 200 else None

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(send(session, i) for i in range(REQUESTS)))
    assert sum(s == 200 for s, haiku, _ in results if haiku) == 5
    assert all(s == 200 for s, haiku, _ in results if not haiku)  # Sonnet is not capped
    refused = [doc for s, _, doc in results if s != 200]
    assert len(refused) == REQUESTS // 2 - 5
    assert all(doc["error"]["type"] == "billing_error" and
               "developer Ada on haiku, monthly" in doc["error"]["message"] for doc in refused)

    dev_id = (await gateway.admin.db(cat.developers))[0]["id"]
    model_key = gateway.proxy.keyspace.model_counter("developer", dev_id, "monthly",
                                                     datetime.now(UTC), ("haiku",))
    for _ in range(100):
        for _, state in proxies:
            await state.drain()
        counter = {k.decode(): int(v) for k, v in
                   (await gateway.proxy.redis.hgetall(model_key)).items()
                   if not k.startswith(b"w")}
        if counter.get("spent", 0) >= 5 * cost:
            break
        await asyncio.sleep(0.05)
    assert counter == {"spent": 5 * cost, "held": 0}
    assert 5 * cost <= cap
