"""Redis comes back empty: the current periods' counters are rebuilt from DuckDB plus the
events settled since, before budgets are enforced again.

Requests go through the real admission and settlement scripts (`ledger.gate.Gate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import periods, rewind
from ledger.gate import BudgetExceeded, Estimate, Gate, MeteringUnavailable, Ticket
from ledger.journal import Journal
from ledger.keyspace import KeySpace
from ledger.model_caps import Matcher
from ledger.periods import COUNTER_TTL, PERIODS, period_end, period_start
from ledger.policy import Cap, Principal
from ledger.pricing import Cost
from ledger.rebuild import ensure_counters
from ledger.rewind import rewind_if_behind
from ledger.rollup import Rollup
from ledger.settlement import Settlement
from ledger.spool import Spool
from ledger.usage import Usage
from tests.test_rollup import assert_rolled_up_once, fresh_db, inline_db, make_events, send

KS = KeySpace()
NOW = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)  # a Wednesday: the week began on the 16th
SMALL = Estimate(prompt_tokens=100, output_tokens=100, default_micros=10, strict_micros=10)
# Counter fields settle.lua writes: every counter, then daily ones only.
ALL_FIELDS = ("spent",)
DAILY_FIELDS = ("in", "out", "cw5", "cw1", "cr", "ws", "est")
EVENT_FOR_FIELD = {"in": "input_tokens", "out": "output_tokens", "cw5": "cache_write_5m",
                   "cw1": "cache_write_1h", "cr": "cache_read", "ws": "web_search",
                   "est": "estimated"}  # restated on purpose: what the script must write
TEAMS = {"dev_a": "team_x", "dev_b": "team_x", "dev_c": "team_y"}


def principal(dev: str, caps: tuple[Cap, ...] = ()) -> Principal:
    return Principal(f"key_{dev}", dev, dev.title(), TEAMS[dev], TEAMS[dev].title(), caps, ())


async def settle(gate: Gate, event: dict[str, Any], caps: tuple[Cap, ...] = ()) -> Ticket:
    """Admit and settle one request as the proxy does, at the event's start time."""
    at = datetime.fromtimestamp(event["ts_ms"] / 1000, UTC)
    ticket = await gate.admit(principal(event["developer_id"], caps), event["id"], SMALL, at,
                              model=event["model"])
    usage = Usage(**{f: event[f] for f in ("input_tokens", "output_tokens", "cache_write_5m",
                                           "cache_write_1h", "cache_read", "web_search",
                                           "service_tier", "speed", "inference_geo")})
    cost = Cost(event["cost_micros"], event["price_row"], bool(event["priced"]),
                event["price_version"])
    settlement = Settlement.of(ticket, usage, cost, **{
        f: event[f] for f in ("model", "provider", "status", "stream", "estimated",
                              "latency_ms", "ttfb_ms", "error_type", "session_id", "agent_id",
                              "parent_agent_id", "request_class", "prompt_id", "project",
                              "upstream_request_id")})
    assert settlement == Settlement(**event)  # the event, as the proxy would have built it
    await gate.settle(ticket, settlement)
    return ticket


def current_counter_keys(events: list[dict[str, Any]]) -> set[str]:
    keys = set()
    for e in events:
        for period in PERIODS:
            for scope, sid in (("developer", e["developer_id"]), ("team", e["team_id"]),
                               ("org", "")):
                keys.add(KS.counter(scope, sid, period, NOW))
    return keys


def expected_counters(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Plain-Python counters of the current periods: each distinct request once."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in {e["id"]: e for e in events}.values():
        at = datetime.fromtimestamp(e["ts_ms"] / 1000, UTC)
        for period in PERIODS:
            if not period_start(period, NOW) <= at < period_end(period, NOW):
                continue
            for scope, sid in (("developer", e["developer_id"]), ("team", e["team_id"]),
                               ("org", "")):
                fields = out[KS.counter(scope, sid, period, NOW)]
                fields["spent"] += e["cost_micros"]
                if period == "daily":
                    for f in DAILY_FIELDS:
                        fields[f] += int(e[EVENT_FOR_FIELD[f]])
    return {k: {f: v for f, v in d.items() if v} for k, d in out.items()}


async def read_counters(redis: Any, keys: set[str]) -> dict[str, dict[str, int]]:
    """The spend fields of these counters (reservations and threshold marks left out)."""
    out = {}
    for key in keys:
        raw = await redis.hgetall(key)
        fields = {k.decode(): int(v) for k, v in raw.items()
                  if k.decode() in ALL_FIELDS + DAILY_FIELDS and int(v)}
        if fields:
            out[key] = fields
    return out


def this_period_events(n: int, seed: int, prefix: str) -> list[dict[str, Any]]:
    """Events from the 1st of the month (some last month) to just before NOW."""
    start = datetime(2026, 2, 26, tzinfo=UTC)
    events = make_events(n, seed=seed, start=start, days=21, prefix=prefix,
                         developers=TEAMS.items())
    last = int(NOW.timestamp() * 1000) - 1
    for e in events:
        e["ts_ms"] = min(e["ts_ms"], last)
    today = int(datetime(2026, 3, 18, tzinfo=UTC).timestamp() * 1000)
    for i, e in enumerate(events[:n // 5]):  # plenty today, for the daily counters
        e["ts_ms"] = today + i * 1000
    return events


@pytest.fixture
def gate(redis: Any, tmp_path: Path) -> Iterator[Gate]:
    spool = Spool(tmp_path / "spool")
    yield Gate(redis, KS, spool)
    spool.close()


# UTC, and a zone on each side of it: the rebuild must file spend in the org's days as the
# rollup and the settlement script do (at NOW, Tokyo's day is already 19 March).
@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/New_York"])
async def test_counters_rebuilt_after_a_flush_equal_the_counters_before_it(
        redis: Any, gate: Gate, zone: str) -> None:
    periods.set_zone(zone)
    try:
        await _rebuilt_after_a_flush(redis, gate)
    finally:
        periods.set_zone("UTC")


async def _rebuilt_after_a_flush(redis: Any, gate: Gate) -> None:
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db, clock=lambda: NOW)
    assert await rollup.run_once() == 0  # empty DuckDB, fresh Redis: ready at once
    applied: list[dict[str, Any]] = []  # what settlement sent (what the spool would hold)
    build = gate._settlement

    def recording(*args: Any) -> dict[str, Any]:
        applied.append(build(*args))
        return applied[-1]

    gate._settlement = recording  # type: ignore[method-assign]
    before = this_period_events(240, seed=1, prefix="pre_")
    for e in before:
        await settle(gate, e)
    assert await rollup.run_once() == 240
    keys = current_counter_keys(before)
    snapshot = await read_counters(redis, keys)
    assert snapshot == expected_counters(before)

    await redis.flushall()  # Redis restarts without persistence
    after = this_period_events(30, seed=2, prefix="post_")
    for e in after:  # settled while the counters are gone
        await settle(gate, e)
    # A spooled settlement replayed after the flush, although it had been rolled up before.
    assert await gate.apply(applied[0]) == 1

    assert await rollup.run_once() == 30
    assert await redis.exists(KS.ready)
    keys |= current_counter_keys(after)
    assert await read_counters(redis, keys) == expected_counters(before + after)
    assert_rolled_up_once(conn, before + after)
    for key in keys:
        ttl = await redis.ttl(key)
        assert 0 < ttl <= max(COUNTER_TTL.values())


@pytest.mark.parametrize(("scope", "period"), [("developer", "daily"), ("team", "weekly"),
                                               ("org", "monthly")])
async def test_an_exhausted_budget_stays_exhausted_after_a_flush(
        redis: Any, gate: Gate, scope: str, period: str) -> None:
    scope_id = {"developer": "dev_a", "team": "team_x", "org": ""}[scope]
    caps = (Cap("bud_1", scope, scope_id, "cap", period, 1_000_000, "estimate"),)
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db, clock=lambda: NOW)
    await rollup.run_once()
    spend = this_period_events(12, seed=3, prefix="spend_")
    today = int(datetime(2026, 3, 18, 9, tzinfo=UTC).timestamp() * 1000)
    for i, e in enumerate(spend):
        e.update(developer_id="dev_a", team_id="team_x", key_id="key_dev_a", cost_micros=100_000,
                 ts_ms=today + i)
    for e in spend[:10]:
        await settle(gate, e, caps)  # the whole 1 $
    with pytest.raises(BudgetExceeded):
        await gate.admit(principal("dev_a", caps), "next", SMALL, NOW)
    await rollup.run_once()

    await redis.flushall()
    strict = Gate(redis, KS, gate.spool, fail_open=False)
    with pytest.raises(MeteringUnavailable):  # not enforced before the rebuild ...
        await strict.admit(principal("dev_a", caps), "early", SMALL, NOW)
    await rollup.run_once()
    with pytest.raises(BudgetExceeded) as refused:  # ... and exhausted again after it
        await gate.admit(principal("dev_a", caps), "later", SMALL, NOW)
    assert refused.value.cap.period == period
    assert refused.value.resets_at == period_end(period, NOW)


@pytest.mark.parametrize(("scope", "scope_id", "counted"), [
    ("developer", "dev_a", ("developer", "dev_a")),
    ("team_member", "team_x", ("developer", "dev_a")),  # compared with the member's own spend
    ("team", "team_x", ("team", "team_x")),
    ("org", "", ("org", "")),
])
async def test_a_per_model_cap_still_refuses_after_a_flush(
        redis: Any, gate: Gate, scope: str, scope_id: str, counted: tuple[str, str]) -> None:
    opus = ("opus",)
    # The policy names a per-member cap by the member; the catalog by the team.
    cap = Cap("mbud_1", scope, "dev_a" if scope == "team_member" else scope_id, "cap",
              "monthly", 1_000_000, "estimate", models=opus, matches=Matcher(opus))
    conn = fresh_db()
    conn.execute("INSERT INTO model_budgets VALUES ('mbud_1', ?, ?, 'monthly', ['opus'], "
                 "'opus', 1000000, 'estimate', ?)", [scope, scope_id, NOW.replace(tzinfo=None)])
    rollup = Rollup(redis, KS, conn, inline_db, clock=lambda: NOW)
    await rollup.run_once()
    spend = this_period_events(12, seed=6, prefix="opus_")
    start = int(datetime(2026, 3, 2, 9, tzinfo=UTC).timestamp() * 1000)  # this month
    for i, e in enumerate(spend):
        e.update(developer_id="dev_a", team_id="team_x", key_id="key_dev_a", cost_micros=100_000,
                 ts_ms=start + i * 86_400_000 // 8, model="claude-opus-4-8")
    spend[10]["model"] = spend[11]["model"] = "claude-sonnet-4-5"  # not counted by the cap
    for e in spend:
        await settle(gate, e, (cap,))  # ten Opus requests of $0.10: the whole $1
    counter = KS.model_counter(*counted, "monthly", NOW, opus)
    assert int(await redis.hget(counter, "spent")) == 1_000_000
    with pytest.raises(BudgetExceeded):
        await gate.admit(principal("dev_a", (cap,)), "next", SMALL, NOW, model="claude-opus-4-8")
    await rollup.run_once()

    await redis.flushall()  # Redis restarts empty
    await rollup.run_once()  # rebuilds the counters from DuckDB, the model cap's with them
    assert int(await redis.hget(counter, "spent")) == 1_000_000  # the Sonnet $0.20 left out
    with pytest.raises(BudgetExceeded) as refused:
        await gate.admit(principal("dev_a", (cap,)), "later", SMALL, NOW,
                         model="us.anthropic.claude-opus-4-8-v1:0")
    assert refused.value.cap.models == opus
    await gate.admit(principal("dev_a", (cap,)), "sonnet", SMALL, NOW,
                     model="claude-sonnet-4-5")  # other models still pass


async def test_nothing_is_rebuilt_while_the_counters_are_intact(redis: Any,
                                                               gate: Gate) -> None:
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db, clock=lambda: NOW)
    await rollup.run_once()
    events = this_period_events(40, seed=4, prefix="x_")
    for e in events:
        await settle(gate, e)
    await rollup.run_once()
    keys = current_counter_keys(events)
    snapshot = await read_counters(redis, keys)
    assert not await ensure_counters(redis, KS, conn, inline_db, NOW)
    await rollup.run_once()
    assert await read_counters(redis, keys) == snapshot


async def test_a_fresh_redis_for_an_existing_ledger_gets_its_counters(redis: Any) -> None:
    """The admin host keeps its DuckDB; Redis is new (first start against it)."""
    conn = fresh_db()
    events = this_period_events(60, seed=5, prefix="old_")
    other = await _stream_then_roll_up(redis, conn, events)
    assert await ensure_counters(redis, KS, conn, inline_db, NOW)
    assert await read_counters(redis, current_counter_keys(events)) == expected_counters(events)
    assert not await ensure_counters(redis, KS, conn, inline_db, NOW + timedelta(seconds=1))
    await other.close()


async def _stream_then_roll_up(redis: Any, conn: Any, events: list[dict[str, Any]]) -> Rollup:
    """Roll events into DuckDB without touching the counters, then forget Redis."""
    rollup = Rollup(redis, KS, conn, inline_db, rebuild=False)
    await send(redis, events)
    await rollup.run_once()
    await redis.flushall()
    return rollup


async def _copy(redis: Any) -> list[tuple[Any, int, bytes]]:
    """Every key as DUMP gives it, with its TTL: a snapshot of Redis as it is now."""
    return [(key, max(await redis.pttl(key), 0), await redis.dump(key))
            async for key in redis.scan_iter()]


async def _back_as(redis: Any, copy: list[tuple[Any, int, bytes]]) -> None:
    """Redis restarts from that older snapshot (or a replica that lagged takes over)."""
    await redis.flushall()
    for key, ttl, value in copy:
        await redis.restore(key, ttl, value)


# The order of the two repairs is a race in production: a proxy that sees another server
# answer replays at once; the admin finds Redis behind the ledger at its next run, which can
# come while a replay is still running (the fault test found that one).
@pytest.mark.parametrize("order", ["journal-first", "admin-first", "admin-during-replay"])
async def test_a_redis_back_as_an_older_copy_of_itself_counts_everything_once(
        redis: Any, gate: Gate, tmp_path: Path, order: str) -> None:
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db, clock=lambda: NOW)
    await rollup.run_once()
    journal = Journal(tmp_path / "journal")
    proxy = Gate(redis, KS, gate.spool, journal=journal)
    await journal.watch(redis, KS.epoch, KS.rolled_until, proxy.apply)  # the epoch it knows
    before = this_period_events(120, seed=7, prefix="old_")
    for e in before:
        await settle(gate, e)
    await rollup.run_once()
    copy = await _copy(redis)  # the snapshot the older copy is made of
    # Rolled up after the snapshot and trimmed from the journals since (settled without one).
    middle = this_period_events(40, seed=8, prefix="mid_")
    for e in middle:
        await settle(gate, e)
    await rollup.run_once()
    late = this_period_events(30, seed=9, prefix="new_")
    for e in late[:20]:  # rolled up, still journalled
        await settle(proxy, e)
    await rollup.run_once()
    for e in late[20:]:  # journalled only
        await settle(proxy, e)
    everything = before + middle + late
    org = KS.counter("org", "", "monthly", NOW)
    assert int(await redis.hget(org, "spent")) == expected_counters(everything)[org]["spent"]

    await _back_as(redis, copy)
    assert int(await redis.hget(org, "spent")) == expected_counters(before)[org]["spent"]
    replayed: list[int] = []

    async def replay_racing_the_admin(entry: dict[str, Any]) -> int:
        replayed.append(await proxy.apply(entry))
        if len(replayed) == 15:
            await rollup.run_once()  # finds Redis behind the ledger: zeroes, rebuilds
        return replayed[-1]

    if order == "journal-first":
        assert await journal.replay(proxy.apply) == 30  # all lost by the copy
    if order == "admin-during-replay":
        assert await journal.replay(replay_racing_the_admin) == 30
    else:
        await rollup.run_once()
    assert await journal.watch(redis, KS.epoch, KS.rolled_until, proxy.apply)  # new epoch
    await rollup.run_once()  # takes back the replays DuckDB already had

    keys = current_counter_keys(everything)
    assert await read_counters(redis, keys) == expected_counters(everything)
    assert_rolled_up_once(conn, everything)
    assert not await rewind_if_behind(redis, KS, rewind.watermark(conn), NOW)  # caught up
    journal.close()
