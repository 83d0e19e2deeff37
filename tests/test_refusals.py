"""A request the gateway refuses is a $0 row of the request log naming what refused it: on
the settlements' event stream, rolled up exactly once, never spend, never usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger import reports
from ledger.gate import Ticket
from ledger.lifecycle import Lifecycle
from ledger.models_allowed import AllowedModels
from ledger.policy import Principal
from ledger.settlement import SPENT, Settlement
from tests.conftest import Gateway
from tests.test_budgets import COST, MODEL, new_session, send


async def ledger_rows(gateway: Gateway, sql: str) -> list[tuple[Any, ...]]:
    catalog = gateway.admin.catalog

    def run() -> list[tuple[Any, ...]]:
        with catalog.lock:
            return catalog.conn.execute(sql).fetchall()
    return await gateway.admin.db(run)


async def page(gateway: Gateway, status: str | None) -> list[dict[str, Any]]:
    catalog = gateway.admin.catalog

    def run() -> list[dict[str, Any]]:
        with catalog.lock:
            return reports.requests_page(catalog.conn, status=status)[0]
    return await gateway.admin.db(run)


async def test_budget_refusal_is_a_free_row_rolled_up_once(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    await gateway.change(cat.set_budget, "developer", "Ada", "daily", 8000)  # one request fits
    async with new_session() as s:
        assert (await send(s, gateway.url, key))[0] == 200  # spends 4500 µ$: past the cap
        status, doc = await send(s, gateway.url, key)
    assert status == 429 and doc["error"]["type"] == "billing_error"
    events = await gateway.settled(2)
    assert len(events) == 2
    refused = events[1]
    today = datetime.now(UTC)
    tomorrow = today + timedelta(days=1)
    assert refused["cost_micros"] == "0" and refused["status"] == "429"
    assert refused["refusal"] == \
        f"budget: developer Ada, daily $0.008000 · until {tomorrow:%Y-%m-%d} 00:00 UTC"
    assert refused["error_type"] == "billing_error" and refused["model"] == MODEL
    # The refusal added nothing to spend: the counter holds the one served request.
    proxy = gateway.proxy
    counter = proxy.keyspace.counter("developer", refused["developer_id"], "daily", today)
    assert int(await proxy.redis.hget(counter, SPENT)) == COST
    # Rolled up exactly once: a second run finds nothing new.
    rollup = gateway.admin.rollup
    assert rollup is not None
    assert await rollup.run_once() == 2
    assert await rollup.run_once() == 0
    rows = await ledger_rows(gateway, "SELECT refusal, cost_micros, status FROM requests "
                                      "ORDER BY refusal")
    assert rows == [("", COST, 200), (refused["refusal"], 0, 429)]
    # Not usage: the daily rollup counts the served request only.
    assert await ledger_rows(gateway, "SELECT sum(requests), sum(errors), sum(cost_micros) "
                                      "FROM usage_daily") == [(1, 0, COST)]
    # The request log's status filter: refused by gateway, apart from failed requests.
    assert [r["refusal"] for r in await page(gateway, "refused")] == [refused["refusal"]]
    assert await page(gateway, "error") == []
    assert [r["status"] for r in await page(gateway, "ok")] == [200]


async def test_refusal_is_recorded_once_when_replayed(gateway: Gateway) -> None:
    gate = gateway.proxy.gate
    who = Principal("k1", "d1", "", "t1", "", (), ())
    ticket = Ticket("req-refused-1", who, datetime.now(UTC), admitted=False)
    gate.refuse(ticket, Settlement.refused(ticket, "rate limit: 1 requests per minute"))
    gate.refuse(ticket, Settlement.refused(ticket, "rate limit: 1 requests per minute"))
    await gate.drain()
    assert len(await gateway.events()) == 1


async def test_rate_limit_revoked_key_and_denied_model_are_refusals(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    await gateway.change(cat.set_limits, "developer", "Ada", rpm=1)
    other = await gateway.developer("Bob", "web")
    await gateway.change(AllowedModels(cat).set, "web", ["claude-haiku-4-5"])
    async with new_session() as s:
        assert (await send(s, gateway.url, key))[0] == 200
        assert (await send(s, gateway.url, key))[0] == 429  # the second in the minute
        assert (await send(s, gateway.url, other))[0] == 400  # sonnet: not for team web
        assert (await send(s, gateway.url, "mtd-not-a-key"))[0] == 401  # nobody: no row
    events = await gateway.settled(3)
    refusals = {e["refusal"].split(":")[0]: e for e in events if e["refusal"]}
    assert refusals["rate limit"]["refusal"] == \
        "rate limit: 1 requests per minute (developer Ada); retry in " + \
        refusals["rate limit"]["refusal"].rsplit("retry in ", 1)[1]
    assert refusals["model"]["refusal"].startswith(
        f"model: model '{MODEL}' is not allowed for team web")
    assert refusals["model"]["status"] == "400"
    assert all(e["cost_micros"] == "0" for e in refusals.values())
    assert len(events) == 3  # the unknown key left no row


@pytest.mark.parametrize(("how", "why"), [
    ("revoke the key", "key: gateway key has been revoked"),
    ("disable the developer", "key: credential belongs to a disabled or removed developer")])
async def test_a_refused_known_key_names_its_developer(gateway: Gateway, how: str,
                                                       why: str) -> None:
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    ada = next(d for d in await gateway.admin.db(cat.developers) if d["name"] == "Ada")
    key_id = await _only_key(gateway, ada["id"])
    if how == "revoke the key":
        await gateway.change(cat.revoke_key, key_id)
    else:
        await gateway.change(Lifecycle(cat).set_disabled, ada["id"], True)
    async with new_session() as s:
        status, doc = await send(s, gateway.url, key)
    assert status == 401 and doc["error"]["type"] == "authentication_error"
    [event] = await gateway.settled(1)
    assert event["developer_id"] == ada["id"] and event["key_id"] == key_id
    assert event["refusal"] == why
    assert event["cost_micros"] == "0" and event["status"] == "401"


async def _only_key(gateway: Gateway, developer_id: str) -> str:
    rows = await ledger_rows(gateway, f"SELECT id FROM api_keys WHERE developer_id = "
                                      f"'{developer_id}'")
    return str(rows[0][0])

