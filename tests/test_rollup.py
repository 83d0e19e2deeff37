"""The rollup: usage events from the Redis stream into DuckDB exactly once, whatever fails.

Every test runs on a real redis-server and on the embedded backend (the `redis` fixture).
The helpers at the top are shared with test_rebuild.py and test_reports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

import duckdb
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ledger.catalog import connect
from ledger.keyspace import KeySpace
from ledger.pricing import MTOK, PriceTable
from ledger.redis_client import connect_redis
from ledger.rollup import (
    GROUP,
    JOB_ID,
    STEPS,
    Rollup,
    lock_key,
    purge,
    schedule,
    schedule_purge,
)
from ledger.settlement import FIELDS, US, Settlement
from ledger.usage import Usage

KS = KeySpace()
PRICES = PriceTable.load()
MODELS = ("claude-sonnet-4-5", "claude-opus-4-8", "claude-haiku-5-5", "acme-model-1")
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_write_5m", "cache_write_1h",
                 "cache_read", "web_search")
SUMMED = (*TOKEN_COLUMNS, "cost_micros")


class Crash(Exception):
    """What a fault hook raises: the process 'dies' at that step."""


async def inline_db(fn: Callable[..., Any], *args: Any) -> Any:
    """The DuckDB runner for tests: on the event loop's thread, one call at a time."""
    return fn(*args)


def fresh_db() -> duckdb.DuckDBPyConnection:
    return connect(":memory:")


def is_error(e: dict[str, Any]) -> bool:
    return not 200 <= int(e["status"]) < 300 or e["error_type"] != ""


def make_events(n: int, *, seed: int = 1, start: datetime | None = None, days: int = 3,
                developers: Iterable[tuple[str, str]] = (("dev_a", "team_x"),
                                                          ("dev_b", "team_x"),
                                                          ("dev_c", "team_y")),
                prefix: str = "mreq_") -> list[dict[str, Any]]:
    """Synthetic usage events as the proxy settles them: every field, realistic variety
    (models with tiers, fast mode, US geography, errors, estimates, sessions)."""
    rng = random.Random(seed)
    devs = list(developers)
    begin = start or datetime(2026, 3, 1, tzinfo=UTC)
    span_ms = days * 86_400_000
    events = []
    for i in range(n):
        dev, team = rng.choice(devs)
        status = rng.choice((200,) * 12 + (429, 529))
        events.append({
            "id": f"{prefix}{seed}_{i:06d}",
            "ts_ms": int(begin.timestamp() * 1000) + rng.randrange(span_ms),
            "developer_id": dev, "team_id": team, "key_id": f"key_{dev}",
            "model": rng.choice(MODELS), "provider": "anthropic", "status": status,
            "stream": rng.choice((0, 1)),
            "input_tokens": rng.randrange(0, 3000),
            "output_tokens": rng.randrange(0, 2000) if status == 200 else 0,
            "cache_write_5m": rng.choice((0, rng.randrange(1, 5000))),
            "cache_write_1h": rng.choice((0, 0, rng.randrange(1, 2000))),
            "cache_read": rng.choice((0, rng.randrange(1, 150_000))),
            "web_search": rng.choice((0, 0, 0, 1, 2)),
            "cost_micros": rng.randrange(0, 400_000),
            "price_row": "x", "price_version": "p-test", "priced": 1,
            "latency_ms": rng.randrange(100, 9000), "ttfb_ms": rng.randrange(-1, 900),
            "estimated": int(rng.random() < 0.05),
            "error_type": "" if status == 200 else rng.choice(("rate_limit_error",
                                                                 "overloaded_error")),
            "service_tier": "standard", "speed": rng.choice(("", "", "fast")),
            "inference_geo": rng.choice(("", "not_available", "us")),
            "session_id": rng.choice(("", f"sess-{dev}-1", f"sess-{dev}-2")),
            "agent_id": "", "parent_agent_id": "", "request_class": "", "prompt_id": "",
            "project": ("", "apollo", "zephyr")[i % 3],  # not drawn: seeds keep their events
            "upstream_request_id": f"req_{seed}_{i:06d}",
            "refusal": "",
        })
    return events


async def send(redis: Any, events: Iterable[dict[str, Any]]) -> None:
    """Append events to the stream as settlement does (one packed field); a field that is
    not a Settlement's is a TypeError."""
    async with redis.pipeline(transaction=False) as pipe:
        for e in events:
            pipe.xadd(KS.events, {"e": Settlement(**e).packed()})
        await pipe.execute()


def raw_line(**values: str) -> str:
    """A stream line as any writer may have left it: missing values empty, nothing checked."""
    return US.join(values.get(name, "") for name in FIELDS)


def expected_totals(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Plain-Python sums over distinct request ids."""
    unique = {e["id"]: e for e in events}.values()
    out = {name: sum(int(e[name]) for e in unique) for name in SUMMED}
    out["requests"] = len(unique)
    out["errors"] = sum(1 for e in unique if is_error(e))
    out["estimated"] = sum(int(e["estimated"]) for e in unique)
    return out


def table_totals(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    measures = (*SUMMED, "requests", "errors", "estimated")
    if table == "requests":
        sql = (f"SELECT {', '.join(f'sum({m})' for m in SUMMED)}, count(*), "
               "count(*) FILTER (WHERE status < 200 OR status >= 300 OR error_type <> ''), "
               "count(*) FILTER (WHERE estimated) FROM requests")
    else:
        sql = f"SELECT {', '.join(f'sum({m})' for m in measures)} FROM {table}"
    row = conn.execute(sql).fetchone()
    assert row is not None
    return {m: int(v or 0) for m, v in zip(measures, row, strict=True)}


def assert_rolled_up_once(conn: duckdb.DuckDBPyConnection,
                          events: Iterable[dict[str, Any]]) -> None:
    """requests and the rollups hold exactly the events sent, to the micro-dollar."""
    want = expected_totals(events)
    for table in ("requests", "usage_daily", "usage_sessions", "usage_projects"):
        assert table_totals(conn, table) == want, table


def expected_saved(e: dict[str, Any]) -> int:
    """What the cache reads of one event would have cost at the input rate minus what they
    cost, from the price rows directly (fallback: $5 input, $0.50 cache read)."""
    usage = Usage(input_tokens=int(e["input_tokens"]), cache_write_5m=int(e["cache_write_5m"]),
                  cache_write_1h=int(e["cache_write_1h"]), cache_read=int(e["cache_read"]),
                  speed=e["speed"])
    row = PRICES.row_for(e["model"])
    if row is None:
        diff, us = 5_000_000 - 500_000, True
    else:
        rates = row.rates_for(usage)
        diff, us = rates.input - rates.cache_read, row.us_geo_multiplier
    amount = Fraction(usage.cache_read * diff, MTOK)
    if us and e["inference_geo"] == "us":
        amount *= Fraction(11, 10)
    whole, rest = divmod(amount.numerator, amount.denominator)
    return whole + (2 * rest >= amount.denominator)


async def backlog(redis: Any) -> tuple[int, int]:
    """(entries left in the stream, entries read but not acknowledged)."""
    pending = await redis.xpending(KS.events, GROUP)
    return int(await redis.xlen(KS.events)), int(pending["pending"])


# --- one run ----------------------------------------------------------------------------


async def test_rollup_commits_every_event_once_and_empties_the_stream(redis: Any) -> None:
    events = make_events(250)
    await send(redis, events)
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db, batch=60)
    assert await rollup.run_once() == 250
    assert_rolled_up_once(conn, events)
    assert await backlog(redis) == (0, 0)
    assert await rollup.run_once() == 0
    assert_rolled_up_once(conn, events)


async def test_every_event_field_lands_in_its_column(redis: Any) -> None:
    (event,) = make_events(1, seed=5)
    event.update(status=529, error_type="overloaded_error", estimated=1, stream=1, priced=0,
                 ttfb_ms=-1, agent_id="agent-7", parent_agent_id="agent-1",
                 request_class="haiku-title", prompt_id="prompt-3")
    await send(redis, [event])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    cur = conn.execute("SELECT * FROM requests")
    row = dict(zip([d[0] for d in cur.description], cur.fetchone() or (), strict=True))
    assert row["ts"] == datetime.fromtimestamp(event["ts_ms"] / 1000, UTC).replace(tzinfo=None)
    for name in FIELDS:
        if name == "ts_ms":
            continue
        want = event[name]
        got = row[name]
        assert (int(got) if isinstance(got, bool) else got) == want, name
    assert row["cache_saved_micros"] == expected_saved(event)


async def test_cache_savings_are_priced_per_request_with_tiers_fast_mode_and_geography(
        redis: Any) -> None:
    events = make_events(400, seed=9)
    await send(redis, events)
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    stored = dict(conn.execute("SELECT id, cache_saved_micros FROM requests").fetchall())
    assert stored == {e["id"]: expected_saved(e) for e in events}
    daily = conn.execute("SELECT sum(cache_saved_micros) FROM usage_daily").fetchone()
    assert daily == (sum(stored.values()),)


async def test_the_same_request_twice_in_the_stream_is_counted_once(redis: Any) -> None:
    events = make_events(30)
    # A settlement replayed after its done-marker was lost: in one batch and in a later one.
    await send(redis, [*events, events[3], events[3]])
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db, batch=1000)
    assert await rollup.run_once() == 30
    await send(redis, [events[5], events[7]])
    assert await rollup.run_once() == 0
    assert_rolled_up_once(conn, events)
    assert await backlog(redis) == (0, 0)


async def test_separators_inside_values_cannot_shift_columns(redis: Any) -> None:
    (event,) = make_events(1)
    event["model"] = "evil\x1fdev_z\x1eother\x1f"
    event["session_id"] = "s\x1e1"
    await send(redis, [event, {**event, "id": event["id"] + "-again"}])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    rows = conn.execute("SELECT model, session_id, developer_id, cost_micros FROM requests"
                        ).fetchall()
    assert rows == [("evil dev_z other ", "s 1", event["developer_id"],
                     event["cost_micros"])] * 2


async def test_malformed_event_fields_get_defaults_instead_of_blocking_the_stream(
        redis: Any) -> None:
    await redis.xadd(KS.events, {"e": raw_line(**{
        "id": "odd-1", "ts_ms": "soon", "input_tokens": "many", "developer_id": "dev_a"})})
    await redis.xadd(KS.events, {"e": raw_line(**{"developer_id": "dev_b", "cost_micros": "17"})})
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db)
    assert await rollup.run_once() == 2
    await asyncio.sleep(0.002)
    # The same timeless event again: its copy gets a later time, and is still not new.
    await redis.xadd(KS.events, {"e": raw_line(**{
        "id": "odd-1", "ts_ms": "soon", "input_tokens": "many", "developer_id": "dev_a"})})
    assert await rollup.run_once() == 0
    rows = conn.execute("SELECT id, developer_id, input_tokens, cost_micros, ttfb_ms, priced, "
                        "ts > TIMESTAMP '2020-01-01' FROM requests ORDER BY developer_id"
                        ).fetchall()
    assert rows[0] == ("odd-1", "dev_a", 0, 0, -1, True, True)
    assert rows[1][0].startswith("stream:") and rows[1][1:] == ("dev_b", 0, 17, -1, True, True)


# --- crashes at every step ------------------------------------------------------------------


CRASH_LOCK_MS = 2_500


@pytest.mark.parametrize("rerun", ["same process", "new process after lock expiry"])
@pytest.mark.parametrize("step", STEPS)
async def test_crash_at_any_rollup_step_then_rerun_neither_loses_nor_double_counts(
        redis: Any, step: str, rerun: str) -> None:
    events = make_events(300, seed=3)
    await send(redis, events)
    conn = fresh_db()
    calls: dict[str, int] = {}

    def fault(at: str) -> None:
        calls[at] = calls.get(at, 0) + 1
        if at == step and calls[at] == 2:  # the second batch dies at this step
            raise Crash(at)

    # A lock long enough that a loaded machine's batch never outlives its lease: the crash,
    # not a lapse, must end the first run.
    first = Rollup(redis, KS, conn, inline_db, batch=100, fault=fault, lock_ttl_ms=CRASH_LOCK_MS)
    with pytest.raises(Crash):
        await first.run_once()
    committed = table_totals(conn, "requests")["requests"]
    assert committed == (200 if step == "committed" else 100)
    # The rollup tables never hold a partial batch.
    assert table_totals(conn, "usage_daily") == table_totals(conn, "requests")
    assert table_totals(conn, "usage_sessions") == table_totals(conn, "requests")
    assert table_totals(conn, "usage_projects") == table_totals(conn, "requests")
    assert (await backlog(redis))[1] > 0  # the failed batch is still unacknowledged

    if rerun == "same process":
        first.fault = None
        again = first
    else:  # the process died holding the lock: a new one waits for it to expire
        again = Rollup(redis, KS, conn, inline_db, batch=100, lock_ttl_ms=CRASH_LOCK_MS)
        assert await again.run_once() == 0
        await asyncio.sleep(CRASH_LOCK_MS / 1000 + 0.1)
    assert await again.run_once() == 300 - committed
    assert_rolled_up_once(conn, events)
    assert await backlog(redis) == (0, 0)


async def test_crash_in_every_batch_at_every_step_still_converges(redis: Any) -> None:
    events = make_events(500, seed=4)
    await send(redis, events)
    conn = fresh_db()
    rng = random.Random(11)

    def fault(at: str) -> None:
        if rng.random() < 0.3:
            raise Crash(at)

    rollup = Rollup(redis, KS, conn, inline_db, batch=50, fault=fault)
    for _ in range(200):
        try:
            await rollup.run_once()
        except Crash:
            continue
        if await backlog(redis) == (0, 0):
            break
    assert_rolled_up_once(conn, events)


# --- one rollup at a time -------------------------------------------------------------------


async def test_two_admin_processes_only_one_rolls_up_at_a_time(redis_url: str,
                                                               redis: Any) -> None:
    """Two admin processes (own Redis client, own DuckDB) run the job concurrently: at no
    moment do both write, every event lands in exactly one of them."""
    clients = [connect_redis(redis_url) for _ in range(2)]
    dbs = [fresh_db() for _ in range(2)]
    writing: list[int] = []
    overlap = False

    async def tracked(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal overlap
        overlap = overlap or bool(writing)
        writing.append(1)
        try:
            await asyncio.sleep(0.001)  # hand the loop to the other process mid-write
            return fn(*args)
        finally:
            writing.pop()

    procs = [Rollup(c, KS, d, tracked, batch=40) for c, d in zip(clients, dbs, strict=True)]
    events = make_events(600, seed=8)
    for chunk in range(0, 600, 100):
        await send(redis, events[chunk:chunk + 100])
        await asyncio.gather(*(p.run_once() for p in procs), *(p.run_once() for p in procs))
    assert not overlap
    assert [p.leader for p in procs].count(True) == 1
    counts = [table_totals(d, "requests")["requests"] for d in dbs]
    assert sorted(counts) == [0, 600]  # the standby never wrote
    for p in procs:
        await p.close()
    for c in clients:
        await c.aclose()


async def test_standby_takes_over_when_the_leader_closes(redis_url: str, redis: Any) -> None:
    a, b = connect_redis(redis_url), connect_redis(redis_url)
    db_a, db_b = fresh_db(), fresh_db()
    leader = Rollup(a, KS, db_a, inline_db, lock_ttl_ms=60_000)
    standby = Rollup(b, KS, db_b, inline_db, lock_ttl_ms=60_000)
    first, second = make_events(50, seed=1), make_events(70, seed=2)
    await send(redis, first)
    assert await leader.run_once() == 50
    await send(redis, second)
    assert await standby.run_once() == 0
    assert not standby.leader
    await leader.close()  # a clean shutdown releases the lock at once
    assert await redis.get(lock_key(KS)) is None
    assert await standby.run_once() == 70
    assert standby.leader
    assert_rolled_up_once(db_a, first)
    assert_rolled_up_once(db_b, second)
    assert await leader.run_once() == 0  # the old leader is now the standby
    await standby.close()
    await a.aclose()
    await b.aclose()


async def test_standby_takes_over_when_the_leaders_lock_expires(redis_url: str,
                                                                redis: Any) -> None:
    """The leader dies mid-batch (after its commit, before its ack) without releasing the
    lock; after expiry the standby on the same host (same DuckDB file) finishes the job."""
    a, b = connect_redis(redis_url), connect_redis(redis_url)
    conn = fresh_db()

    def die_after_commit(step: str) -> None:
        if step == "committed":
            raise Crash(step)

    # A TTL long enough that a loaded machine cannot outlast it between the next two lines.
    leader = Rollup(a, KS, conn, inline_db, batch=30, lock_ttl_ms=1500, fault=die_after_commit)
    standby = Rollup(b, KS, conn, inline_db, batch=30, lock_ttl_ms=1500)
    events = make_events(100, seed=6)
    await send(redis, events)
    with pytest.raises(Crash):
        await leader.run_once()
    assert await standby.run_once() == 0  # the dead leader's lock still holds
    while await redis.exists(leader.lock):  # until it expires (nobody released it)
        await asyncio.sleep(0.05)
    assert await standby.run_once() == 70  # the 30 committed before the crash: not again
    assert_rolled_up_once(conn, events)
    assert await backlog(redis) == (0, 0)
    await standby.close()
    await a.aclose()
    await b.aclose()


async def test_the_heartbeat_keeps_a_live_holders_lock_past_its_ttl_until_it_closes(
        redis_url: str, redis: Any) -> None:
    """Between runs nothing else renews the lock: the heartbeat does, so a standby never takes
    the lock of a holder that is alive, and takes it at once when the holder closes."""
    a, b = connect_redis(redis_url), connect_redis(redis_url)
    leader = Rollup(a, KS, fresh_db(), inline_db, lock_ttl_ms=300)
    standby = Rollup(b, KS, fresh_db(), inline_db, lock_ttl_ms=300)
    taken: list[str] = []
    leader.start_heartbeat(lambda: taken.append("leader"))
    assert await leader.run_once() == 0 and leader.leader
    await asyncio.sleep(1.0)  # more than three TTLs without a run
    assert await standby.run_once() == 0
    assert not standby.leader
    await leader.close()
    assert await redis.get(lock_key(KS)) is None
    events = make_events(20, seed=5)
    await send(redis, events)
    assert await standby.run_once() == 20
    assert taken == []  # the leader took the lock in its run, not in its heartbeat
    await standby.close()
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize("stalls_at", ["daily", "committed"])
async def test_a_holder_whose_lock_lapsed_mid_batch_neither_commits_nor_acknowledges(
        redis_url: str, redis: Any, stalls_at: str) -> None:
    """The holder stalls (the event loop blocked, as by a long pause) for longer than its
    lock's TTL while writing a batch: before the commit it must not commit; after the commit
    it must not acknowledge. The next holder finishes, and every event counts once."""
    a, b = connect_redis(redis_url), connect_redis(redis_url)
    conn = fresh_db()

    def stall(step: str) -> None:
        if step == stalls_at:
            time.sleep(0.4)

    first = Rollup(a, KS, conn, inline_db, batch=100, lock_ttl_ms=300, fault=stall)
    events = make_events(100, seed=9)
    await send(redis, events)
    await first.run_once()
    committed = table_totals(conn, "requests")["requests"]
    assert committed == (100 if stalls_at == "committed" else 0)
    assert await backlog(redis) == (100, 100)  # all still pending, for the next holder
    assert not first.leader
    nxt = Rollup(b, KS, conn, inline_db, batch=100, lock_ttl_ms=300)
    assert await nxt.run_once() == 100 - committed
    assert_rolled_up_once(conn, events)
    assert await backlog(redis) == (0, 0)
    await nxt.close()
    await a.aclose()
    await b.aclose()


# --- scheduling, shutdown and retention -----------------------------------------------------


async def test_scheduled_job_rolls_up_and_final_run_catches_the_rest_at_shutdown(
        redis: Any) -> None:
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db)
    ticks = asyncio.Event()

    async def on_tick() -> None:
        ticks.set()

    scheduler = AsyncIOScheduler(timezone=UTC)
    schedule(scheduler, rollup, 0.05, on_tick)
    job = scheduler.get_job(JOB_ID)
    assert job is not None and job.max_instances == 1 and job.coalesce
    first = make_events(20, seed=1)
    await send(redis, first)
    scheduler.start()
    try:
        for _ in range(100):
            ticks.clear()
            await asyncio.wait_for(ticks.wait(), 5)
            if table_totals(conn, "requests")["requests"] == 20:
                break
    finally:
        scheduler.shutdown(wait=False)
    await asyncio.sleep(0.2)  # a tick that was running when the scheduler stopped ends
    late = make_events(15, seed=2)
    await send(redis, late)  # settled while the admin process stops
    assert await rollup.final_run() == 15
    assert_rolled_up_once(conn, first + late)
    assert await redis.get(lock_key(KS)) is None  # released for a standby


async def test_purge_deletes_old_raw_rows_but_keeps_the_daily_rollups(redis: Any) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = make_events(300, start=start, days=30)
    await send(redis, events)
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    before = table_totals(conn, "usage_daily")
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    cutoff_ms = int((now - timedelta(days=10)).timestamp() * 1000)
    old = [e for e in events if e["ts_ms"] < cutoff_ms]
    assert purge(conn, 10, now) == len(old) > 0
    assert table_totals(conn, "requests") == expected_totals(
        e for e in events if e["ts_ms"] >= cutoff_ms)
    assert table_totals(conn, "usage_daily") == before
    assert table_totals(conn, "usage_sessions") == before
    assert table_totals(conn, "usage_projects") == before
    assert purge(conn, 10, now) == 0
    with pytest.raises(ValueError):
        purge(conn, 0, now)


async def test_rollup_days_are_utc_days_of_the_request_start(redis: Any) -> None:
    (late,) = make_events(1, seed=1)
    late["ts_ms"] = int(datetime(2026, 2, 28, 23, 59, 59, 999_000, tzinfo=UTC).timestamp()
                        * 1000)
    (early,) = make_events(1, seed=2)
    early["ts_ms"] = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    await send(redis, [late, early])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    days = conn.execute("SELECT day, sum(requests) FROM usage_daily GROUP BY day ORDER BY day"
                        ).fetchall()
    assert days == [(date(2026, 2, 28), 1), (date(2026, 3, 1), 1)]


async def test_scheduled_purge_applies_the_retention_at_start(redis: Any) -> None:
    now = datetime.now(UTC)
    old = make_events(30, start=now - timedelta(days=50), days=5, prefix="old_")
    recent = make_events(20, start=now - timedelta(days=3), days=1, prefix="new_")
    await send(redis, old + recent)
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    scheduler = AsyncIOScheduler(timezone=UTC)
    schedule_purge(scheduler, conn, inline_db, 30)
    scheduler.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if table_totals(conn, "requests")["requests"] == 20:
                break
    finally:
        scheduler.shutdown(wait=False)
    assert table_totals(conn, "requests") == expected_totals(recent)
    assert table_totals(conn, "usage_daily") == expected_totals(old + recent)


async def test_closing_ends_the_heartbeat_even_when_a_redis_call_swallows_the_cancel(
        redis: Any) -> None:
    """redis-py can swallow a CancelledError that lands inside a command: the heartbeat must
    still end, or the admin's shutdown waits for it forever."""
    rollup = Rollup(redis, KS, fresh_db(), inline_db, lock_ttl_ms=100)
    inside = asyncio.Event()

    async def swallowing_hold() -> bool:
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py may, mid-command
            await asyncio.sleep(0.05)
        return False

    rollup._hold = swallowing_hold  # type: ignore[method-assign]
    rollup.start_heartbeat(lambda: None)
    await inside.wait()
    closing = asyncio.ensure_future(rollup.close())
    done, _ = await asyncio.wait({closing}, timeout=2.0)
    assert closing in done, "close() is still waiting for the heartbeat"
