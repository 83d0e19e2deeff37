"""No usage lost when Redis loses data: each proxy's journal is replayed and the ledger keeps
every answered request exactly once, with counters that match it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ledger.journal import CLOCK_SKEW_MS, Journal
from ledger.redis_client import connect_redis
from tests.conftest import MOCK_KEY, Gateway, RedisServer, proxy_process

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
COST = 4500  # 1200 × $3 + 60 × $15, in µ$ (as in test_outage)
REAL_ONLY = pytest.mark.parametrize("redis_url", ["real"], indirect=True)


async def send(url: str, key: str, answered: list[str]) -> None:
    """One request; its id goes to `answered` when the client saw a 200."""
    async with aiohttp.ClientSession() as s, s.post(
            url + "/v1/messages", data=BODY, headers={"x-api-key": key}) as resp:
        await resp.read()
        if resp.status == 200:
            answered.append(resp.headers["x-meterd-request-id"])


async def ledger(gw: Gateway) -> dict[str, int]:
    """request id → how many times DuckDB holds it, and the cost of each."""
    conn = gw.admin.catalog.conn

    def read() -> list[tuple[Any, ...]]:
        return conn.execute("SELECT id, count(*), min(cost_micros), max(cost_micros) "
                            "FROM requests GROUP BY id").fetchall()
    rows = await gw.admin.db(read)
    for _, _, low, high in rows:
        assert low == high == COST
    return {r[0]: r[1] for r in rows}


def table(case: str, answered: list[str], held: dict[str, int]) -> tuple[int, int, int]:
    accounted = sum(1 for rid in answered if held.get(rid) == 1)
    lost = sum(1 for rid in answered if rid not in held)
    doubled = sum(1 for rid in answered if held.get(rid, 0) > 1)
    print(f"\n{'case':<28}{'sent':>6}{'accounted':>11}{'lost':>6}{'doubled':>9}\n"
          f"{case:<28}{len(answered):>6}{accounted:>11}{lost:>6}{doubled:>9}")
    return accounted, lost, doubled


async def spent(gw: Gateway) -> int:
    events_dev = await gw.admin.db(lambda: gw.admin.catalog.conn.execute(
        "SELECT DISTINCT developer_id FROM requests").fetchall())
    (dev_id,), = events_dev
    counter = gw.proxy.keyspace.counter("developer", dev_id, "monthly", datetime.now(UTC))
    return int(await gw.proxy.redis.hget(counter, "spent") or 0)


async def until(check: Any, what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


@REAL_ONLY
async def test_redis_restarted_empty_loses_no_answered_request(
        start_gateway, own_redis: RedisServer) -> None:
    gw = await start_gateway(redis_url=own_redis.url)
    key = await gw.developer()
    answered: list[str] = []
    await asyncio.gather(*(send(gw.url, key, answered) for _ in range(6)))
    await gw.proxy.drain()
    await gw.admin.rollup.run_once()  # six in the ledger
    await asyncio.gather(*(send(gw.url, key, answered) for _ in range(5)))
    await gw.proxy.drain()  # five only in Redis (and the journal)
    journal = gw.proxy.gate.journal
    assert journal is not None
    await until(lambda: journal.epoch is not None, "the journal never looked at redis")

    own_redis.stop()  # no save: it comes back empty
    own_redis.start()
    await until(lambda: journal.replays == 1, "the journal never replayed")
    await gw.admin.rollup.run_once()  # rebuilds the counters, rolls up the replays

    held = await ledger(gw)
    assert table("redis restarted empty", answered, held) == (11, 0, 0)
    assert len(held) == 11
    assert await spent(gw) == 11 * COST  # counters match the ledger: none counted twice


@REAL_ONLY
async def test_a_killed_proxys_journal_is_replayed_by_the_next_one(
        start_gateway, own_redis: RedisServer, tmp_path: Path) -> None:
    gw = await start_gateway(redis_url=own_redis.url)
    key = await gw.developer()
    env = {"MTD_UPSTREAM_KEY": MOCK_KEY, "MTD_UPSTREAM_URL": gw.upstream.url}
    answered: list[str] = []
    async with proxy_process(gw, tmp_path / "p", **env) as (url, proc):
        await asyncio.gather(*(send(url, key, answered) for _ in range(4)))
        await gw.settled(4)
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    own_redis.stop()  # and Redis loses the four before any rollup
    own_redis.start()
    async with proxy_process(gw, tmp_path / "p", **env):
        for _ in range(100):  # the new proxy adopts the journal and replays it
            if len(await gw.events()) >= 4:
                break
            await asyncio.sleep(0.05)
        await gw.admin.rollup.run_once()
    held = await ledger(gw)
    assert table("proxy SIGKILLed + empty redis", answered, held) == (4, 0, 0)
    assert await spent(gw) == 4 * COST


async def test_the_journal_keeps_what_the_ledger_may_not_have(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append({"keys": ["a"], "args": [1]})
    journal.entries[0] = (1_000, journal.entries[0][1])  # sent at t = 1 s
    journal.append({"keys": ["b"], "args": [2]})
    sent_b = journal.entries[1][0]
    assert await journal.trim(1_000 + CLOCK_SKEW_MS) == 0  # within the clock margin: kept
    assert await journal.trim(1_001 + CLOCK_SKEW_MS) == 1
    assert [orjson.loads(line)[1]["keys"] for line in journal.path.read_bytes().split()] == [["b"]]
    assert journal.entries[0][0] == sent_b
    journal.close()
    journal.path.rename(tmp_path / "dead-1.journal")  # as a process of another pid left it
    again = Journal(tmp_path)  # another process adopts what a dead one left
    assert again.adopted == 1
    again.close()
    third = Journal(tmp_path)  # a dead process with our own pid (reused after a reboot)
    assert third.adopted == 1 and not (tmp_path / "dead-1.journal").exists()
    third.close()


async def test_the_embedded_backend_trims_the_journal_too(tmp_path: Path) -> None:
    redis = connect_redis("embedded://journal-test")  # no INFO command there
    journal = Journal(tmp_path)
    journal.append({"keys": ["a"], "args": [1]})

    async def apply(entry: dict[str, Any]) -> int:
        return 0
    await redis.set("{j}:mark", int(time.time() * 1000) + CLOCK_SKEW_MS + 1000)
    assert not await journal.watch(redis, "{j}:epoch", "{j}:mark", apply)
    assert journal.entries == []
    journal.close()
