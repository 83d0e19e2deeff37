"""Redis goes away mid-run: admission follows the policy, and no usage is lost or doubled."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest

from dashboard.state import ADMIN
from ledger.money import parse_usd
from meterd.apps import ADMIN_APP, create_root_app
from tests.conftest import Gateway, RedisServer

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
COST = 4500  # 1200 × $3 + 60 × $15, in µ$
# These tests run their own redis-server; the embedded backend has no outage to inject.
pytestmark = pytest.mark.parametrize("redis_url", ["real"], indirect=True)


async def send(gw: Gateway, key: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/messages", data=BODY, headers={"x-api-key": key}) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if resp.status != 200 else {}


async def test_fail_open_admits_during_outage_and_spool_replays_exactly_once(
        start_gateway, own_redis: RedisServer) -> None:
    gw = await start_gateway(redis_url=own_redis.url, redis_outage_policy="fail_open")
    key = await gw.developer()
    await gw.change(gw.admin.catalog.set_budget, "developer", "Ada", "monthly", parse_usd("10"))
    assert (await send(gw, key))[0] == 200
    await gw.settled(1)

    own_redis.stop(save=True)
    statuses = [(await send(gw, key))[0] for _ in range(3)]
    await gw.proxy.drain()
    assert statuses == [200, 200, 200]  # fail_open: served, and metered later
    assert gw.proxy.gate.spool.depth == 3
    spooled = [orjson.loads(line) for line in gw.proxy.gate.spool.path.read_bytes().split()]

    own_redis.start()
    for _ in range(100):  # the maintenance loop replays about once a second
        if gw.proxy.gate.spool.depth == 0:
            break
        await asyncio.sleep(0.05)
    assert gw.proxy.gate.spool.depth == 0
    events = await gw.events()
    assert len(events) == 4 and len({e["id"] for e in events}) == 4
    dev_id = events[0]["developer_id"]
    counter = gw.proxy.keyspace.counter("developer", dev_id, "monthly", datetime.now(UTC))
    spent = int(await gw.proxy.redis.hget(counter, "spent"))
    assert spent == 4 * COST

    # A second replay of the same settlements (a crash during replay) changes nothing.
    assert [await gw.proxy.gate.apply(entry) for entry in spooled] == [0, 0, 0]
    assert int(await gw.proxy.redis.hget(counter, "spent")) == 4 * COST
    assert len(await gw.events()) == 4


async def test_fail_closed_refuses_during_outage_with_a_clear_message(
        start_gateway, own_redis: RedisServer) -> None:
    gw = await start_gateway(redis_url=own_redis.url, redis_outage_policy="fail_closed")
    key = await gw.developer()
    await gw.change(gw.admin.catalog.set_limits, "developer", "Ada", rpm=1000)
    assert (await send(gw, key))[0] == 200

    own_redis.stop(save=True)
    resp = await gw.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    status, doc = resp.status, await resp.json()
    assert status == 429
    # the contract's shape for a counter that cannot be read: no retrying into it
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["anthropic-ratelimit-unified-overage-disabled-reason"] == "fetch_error"
    assert doc["error"]["type"] == "billing_error"
    assert "cannot reach Redis" in doc["error"]["message"]
    assert "fail_closed" in doc["error"]["message"]
    assert len(gw.upstream.recorded) == 1  # the refused request never reached the provider

    own_redis.start()
    await asyncio.sleep(0.2)
    assert (await send(gw, key))[0] == 200



async def test_admin_logs_one_line_when_redis_goes_down_and_one_when_it_returns(
        own_redis: RedisServer, aiohttp_client, make_settings,
        caplog: pytest.LogCaptureFixture) -> None:
    """The rollup ticks many times while Redis is stopped: the log says so once, without a
    traceback, and once more when Redis answers again."""
    app = create_root_app(make_settings(redis_url=own_redis.url, rollup_interval=0.05),
                          proxy=False)
    await aiohttp_client(app)
    rollup = app[ADMIN_APP][ADMIN].rollup
    runs = 0
    run_once = rollup.run_once

    async def counted() -> int:  # the scheduler's job calls through this
        nonlocal runs
        runs += 1
        return await run_once()
    rollup.run_once = counted  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)

    def lines() -> list[logging.LogRecord]:
        # meterd's lines, and the scheduler's errors (a job that raised, with its traceback)
        return [r for r in caplog.records
                if (r.name.startswith("meterd") and r.levelno >= logging.INFO)
                or (r.name.startswith("apscheduler") and r.levelno >= logging.ERROR)]

    caplog.clear()
    own_redis.stop()
    runs_before = runs
    for _ in range(200):
        await asyncio.sleep(0.05)
        if runs - runs_before >= 10:
            break
    assert runs - runs_before >= 10  # ten rollups tried while Redis was down
    during = lines()
    assert [r.levelno for r in during] == [logging.WARNING], [r.getMessage() for r in during]
    assert "redis" in during[0].getMessage().lower()

    own_redis.start()  # empty: the rollup also rebuilds the counters, and says so
    for _ in range(200):
        await asyncio.sleep(0.05)
        if not rollup.redis_down:
            break
    await asyncio.sleep(0.5)  # more rollups, with Redis back
    after = [r.getMessage() for r in lines()[1:]]
    assert [m for m in after if "redis" in m.lower()] == ["redis answers again, rollups resume"]
    assert not [r for r in lines()[1:] if r.levelno >= logging.WARNING], after
    assert not any(r.exc_info for r in lines())  # no traceback at any point
