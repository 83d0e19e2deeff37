"""Admission and settlement scripts, driven directly (no HTTP), on both Redis backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import status
from ledger.gate import BudgetExceeded, Estimate, Gate, RateLimited
from ledger.keyspace import KeySpace
from ledger.periods import period_end, period_tag
from ledger.policy import Cap, Limits, Principal
from ledger.redis_client import FastScript
from ledger.spool import Spool
from tests.settlements import settlement

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
EST = Estimate(prompt_tokens=100, output_tokens=50, default_micros=1000, strict_micros=5000)


def principal(cap: int = 10_000, mode: str = "estimate", rpm: int = 0,
              concurrency: int = 0) -> Principal:
    caps = (Cap("b1", "developer", "d1", "Ada", "monthly", cap, mode),)
    limits = (Limits("developer", "d1", "Ada", rpm=rpm, concurrency=concurrency),) if (
        rpm or concurrency) else ()
    return Principal("k1", "d1", "Ada", "t1", "platform", caps, limits)


@pytest.fixture
async def gate(redis: Any, tmp_path: Path) -> AsyncIterator[Gate]:
    ks = KeySpace("test")
    await redis.set(ks.ready, 1)
    spool = Spool(tmp_path / "spool")
    yield Gate(redis, ks, spool, reservation_ttl=60)
    spool.close()


async def state(gate: Gate, scope: str = "developer", scope_id: str = "d1",
                at: datetime = NOW) -> dict[str, int]:
    raw = await gate.redis.hgetall(gate.keyspace.counter(scope, scope_id, "monthly", at))
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_admission_reserves_and_settlement_replaces_the_reservation(gate: Gate) -> None:
    ticket = await gate.admit(principal(), "r1", EST, NOW)
    assert (await state(gate))["held"] == 1000
    await gate.settle(ticket, settlement(ticket, 1234))
    assert await state(gate) == {"held": 0, "spent": 1234}
    daily = await gate.redis.hgetall(gate.keyspace.counter("developer", "d1", "daily", NOW))
    assert int(daily[b"in"]) == 100 and int(daily[b"out"]) == 50
    for scope, scope_id in (("team", "t1"), ("org", "")):
        assert (await state(gate, scope, scope_id))["spent"] == 1234


async def test_balances_read_what_admission_holds_and_settlement_spends(gate: Gate) -> None:
    """The Python readers (ledger.status) and the scripts name the counter fields alike."""
    p = principal()
    ticket = await gate.admit(p, "r1", EST, NOW)
    (held,) = await status.cap_balances(gate.redis, gate.keyspace, p, NOW)
    assert (held["spent_micros"], held["held_micros"], held["remaining_micros"]) == (0, 1000, 9000)
    await gate.settle(ticket, settlement(ticket, 1234))
    (spent,) = await status.cap_balances(gate.redis, gate.keyspace, p, NOW)
    assert (spent["spent_micros"], spent["held_micros"], spent["remaining_micros"]) == \
        (1234, 0, 8766)
    assert await status.developer_spend(gate.redis, gate.keyspace, p, NOW) == {
        "daily": 1234, "weekly": 1234, "monthly": 1234}


async def test_settling_the_same_request_twice_counts_it_once(gate: Gate) -> None:
    ticket = await gate.admit(principal(), "r1", EST, NOW)
    await gate.settle(ticket, settlement(ticket, 700))
    await gate.settle(ticket, settlement(ticket, 700))
    assert (await state(gate))["spent"] == 700
    assert await gate.redis.xlen(gate.keyspace.events) == 1


async def test_requests_of_one_minute_share_a_settled_set_that_expires(gate: Gate) -> None:
    for request_id in ("r1", "r2"):
        ticket = await gate.admit(principal(), request_id, EST, NOW)
        await gate.settle(ticket, settlement(ticket, 700))
    settled = gate.keyspace.settled(int(NOW.timestamp()) // 60)
    assert sorted(await gate.redis.hkeys(settled)) == [b"r1", b"r2"]
    assert 13 * 86400 < await gate.redis.ttl(settled) <= 14 * 86400


async def test_a_settlement_spooled_with_a_key_per_request_still_lands_once(gate: Gate) -> None:
    """Spooled by the meterd before the sets per minute, and replayed after an upgrade:
    whether or not that meterd had settled it already (it then left its own marker)."""
    def spooled_before(entry: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {**entry, "keys": [f"{gate.keyspace.base}:done:{request_id}", *entry["keys"][1:]]}

    ticket = await gate.admit(principal(), "r1", EST, NOW)
    first = spooled_before(gate._settlement(ticket, settlement(ticket, 700)), "r1")
    assert [await gate.apply(first), await gate.apply(first)] == [1, 0]
    assert 13 * 86400 < await gate.redis.ttl(first["keys"][0]) <= 14 * 86400
    ticket = await gate.admit(principal(), "r2", EST, NOW)
    second = spooled_before(gate._settlement(ticket, settlement(ticket, 700)), "r2")
    await gate.redis.set(second["keys"][0], 1, ex=14 * 86400)  # that meterd's marker
    assert await gate.apply(second) == 0
    assert (await state(gate))["spent"] == 700
    assert await gate.redis.xlen(gate.keyspace.events) == 1


async def test_rate_headers_show_the_tightest_window_of_each_kind(gate: Gate) -> None:
    """Developer and team windows both apply; each header family reports the one with the
    least left after this request's reservation (estimate: 100 in, 50 out), and budget use
    counts the request's own reservation (1,000 of 10,000 µ$ per request)."""
    limits = (Limits("developer", "d1", "Ada", rpm=10, itpm=1000),
              Limits("team", "t1", "platform", rpm=5, itpm=5000, otpm=300))
    p = Principal("k1", "d1", "Ada", "t1", "platform",
                  (Cap("b1", "developer", "d1", "Ada", "monthly", 10_000, "estimate"),), limits)
    expected = [  # per request: requests, input tokens, output tokens (limit, left); budget %
        (("5", "4"), ("1000", "900"), ("300", "250"), "0.10"),
        (("5", "3"), ("1000", "800"), ("300", "200"), "0.20"),
    ]
    for n, (requests, input_tokens, output_tokens, used) in enumerate(expected):
        headers = (await gate.admit(p, f"r{n}", EST, NOW)).headers
        for family, (limit, left) in (("requests", requests), ("input-tokens", input_tokens),
                                      ("output-tokens", output_tokens)):
            assert headers[f"anthropic-ratelimit-{family}-limit"] == limit
            assert headers[f"anthropic-ratelimit-{family}-remaining"] == left
            assert headers[f"anthropic-ratelimit-{family}-reset"] == "2026-11-28T12:01:00Z"
        assert headers["anthropic-ratelimit-unified-overage-utilization"] == used
        assert headers["anthropic-ratelimit-unified-status"] == "allowed"


async def test_a_rejection_reserves_nothing(gate: Gate) -> None:
    await gate.admit(principal(cap=1500), "r1", EST, NOW)
    before = await state(gate)
    with pytest.raises(BudgetExceeded):
        await gate.admit(principal(cap=1500), "r2", EST, NOW)
    assert await state(gate) == before


# NOW is Saturday 2026-11-28 12:00 UTC: the day resets Nov 29, the week Monday Nov 30, the
# month Dec 1. Each cap is (scope, period, amount in µ$); each request reserves 1,000 µ$.
BLOCKED_BY = [
    ("all three block: the month resets last",
     [("developer", "daily", 1500), ("team", "weekly", 1500), ("org", "monthly", 1500)],
     ("org", "monthly"), datetime(2026, 12, 1, tzinfo=UTC)),
    ("the month has room: the week",
     [("developer", "daily", 1500), ("team", "weekly", 1500), ("org", "monthly", 90_000)],
     ("team", "weekly"), datetime(2026, 11, 30, tzinfo=UTC)),
    ("the day alone blocks",
     [("developer", "daily", 1500), ("team", "monthly", 90_000)],
     ("developer", "daily"), datetime(2026, 11, 29, tzinfo=UTC)),
    ("two months tie: the first in admission order (developer, team, org)",
     [("org", "monthly", 1500), ("developer", "monthly", 1500), ("team", "daily", 1500)],
     ("developer", "monthly"), datetime(2026, 12, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(("caps", "named", "resets"),
                         [row[1:] for row in BLOCKED_BY], ids=[row[0] for row in BLOCKED_BY])
async def test_a_refusal_names_the_blocking_cap_that_resets_last(
        gate: Gate, caps: list[tuple[str, str, int]], named: tuple[str, str],
        resets: datetime) -> None:
    """The protocol: once blocked, describe the cap that resets last — the real wait."""
    ids = {"developer": "d1", "team": "t1", "org": ""}
    p = Principal("k1", "d1", "Ada", "t1", "platform", tuple(
        Cap(f"b{n}", scope, ids[scope], scope, period, amount, "estimate")
        for n, (scope, period, amount) in enumerate(caps)), ())
    await gate.admit(p, "r1", EST, NOW)
    with pytest.raises(BudgetExceeded) as err:
        await gate.admit(p, "r2", EST, NOW)
    assert (err.value.cap.scope, err.value.cap.period) == named
    assert err.value.resets_at == resets
    assert err.value.retry_after == int((resets - NOW).total_seconds())


async def test_a_refusal_before_the_cap_is_spent_says_what_is_left_and_what_was_asked(
        gate: Gate) -> None:
    """A request is refused when its reservation does not fit, though the cap is not spent:
    the message says so (what /usage shows as room), and that a smaller request may fit."""
    big = Estimate(prompt_tokens=100, output_tokens=50, default_micros=300_000,
                   strict_micros=900_000)
    p = principal(cap=1_000_000)
    for n in range(3):
        await gate.admit(p, f"r{n}", big, NOW)  # 900,000 µ$ held
    with pytest.raises(BudgetExceeded) as err:
        await gate.admit(p, "r3", big, NOW)
    assert str(err.value) == ("spend limit reached (developer Ada, monthly): $0.10 left, less "
                              "than this request may cost ($0.30) · resets 2026-12-01 00:00 UTC")
    await gate.admit(p, "small", EST, NOW)  # 1,000 µ$ fits in what is left


async def test_strict_mode_reserves_the_worst_case(gate: Gate) -> None:
    await gate.admit(principal(cap=9_999, mode="strict"), "r1", EST, NOW)
    assert (await state(gate))["held"] == 5000
    with pytest.raises(BudgetExceeded) as err:
        await gate.admit(principal(cap=9_999, mode="strict"), "r2", EST, NOW)
    assert err.value.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert err.value.retry_after == 3 * 86400 - 12 * 3600  # to Dec 1 00:00 UTC


async def test_unsettled_reservations_expire(gate: Gate) -> None:
    gate.reservation_ttl = 30
    await gate.admit(principal(cap=1500), "crashed", EST, NOW)  # never settled
    with pytest.raises(BudgetExceeded):
        await gate.admit(principal(cap=1500), "r2", EST, NOW)
    later = datetime.fromtimestamp(NOW.timestamp() + 31, UTC)
    await gate.admit(principal(cap=1500), "r3", EST, later)  # the dead hold is gone
    assert (await state(gate))["held"] == 1000


async def test_expired_concurrency_slots_are_freed(gate: Gate) -> None:
    gate.reservation_ttl = 30
    p = principal(concurrency=1)
    # The slot set expires at the last slot's expiry on Redis's clock: a time in the past
    # would drop it at once, so this test runs at the real time.
    now = datetime.now(UTC)
    await gate.admit(p, "crashed", EST, now)
    with pytest.raises(RateLimited):
        await gate.admit(p, "r2", EST, now)
    await gate.admit(p, "r3", EST, datetime.fromtimestamp(now.timestamp() + 31, UTC))


async def test_a_caller_that_leaves_during_admission_keeps_nothing_reserved(gate: Gate) -> None:
    p = principal(cap=1500, concurrency=1)
    now = datetime.now(UTC)  # the slot set expires on Redis's clock, as above
    warm = await gate.admit(p, "warm", EST, now)
    await gate.settle(warm, settlement(warm, 0))
    # Cancelled (a client that disconnects) once the script is on its way: Redis still runs
    # it, so without a release the hold and the only slot would stay for reservation_ttl.
    admission = asyncio.create_task(gate.admit(p, "left", EST, now))
    await asyncio.sleep(0)
    admission.cancel()
    try:
        ticket = await admission
    except asyncio.CancelledError:
        pass
    else:  # redis-py (embedded) may finish a command it was cancelled in: settled as usual
        assert not isinstance(gate._admit, FastScript)
        await gate.settle(ticket, settlement(ticket, 0))
    await gate.drain()  # the release, sent after the admission
    assert (await state(gate, at=now))["held"] == 0
    assert await gate.redis.zcard(gate.keyspace.in_flight("developer", "d1")) == 0
    ticket = await gate.admit(p, "next", EST, now)  # neither the cap nor the slot is taken
    assert (await state(gate, at=now))["held"] == 1000
    await gate.settle(ticket, settlement(ticket, 0))


async def test_every_key_the_scripts_make_expires(gate: Gate) -> None:
    """Scripts set a key's TTL only when they make the key, so check each way one is made:
    admission, settlement, a correction to a rate window its request outlived, and a
    settlement whose admission never reached Redis."""
    p = principal(cap=10**9, rpm=100, concurrency=5)
    now = datetime.now(UTC)  # the slot set expires on Redis's clock
    first = await gate.admit(p, "r1", EST, now)
    second = await gate.admit(p, "r2", EST, now)  # not the first hold: its call sets no TTL
    assert await gate.redis.ttl(second.holds[0].key) > 0  # holds are settled, so check now
    await gate.settle(first, settlement(first, 700))
    await gate.redis.delete(*(key for key, _, _ in second.windows))
    await gate.settle(second, settlement(second, 700, output_tokens=70))  # corrects by 20
    await gate.redis.delete(gate.keyspace.ready)  # admitted unmetered, as in an outage
    other = Principal("k2", "d2", "Bo", "t2", "infra", (Cap(
        "b2", "developer", "d2", "Bo", "monthly", 10**9, "estimate"),),
        (Limits("developer", "d2", "Bo", rpm=100),))
    unmetered = await gate.admit(other, "r3", EST, now)
    assert not unmetered.admitted
    await gate.settle(unmetered, settlement(unmetered, 700))
    streams = {gate.keyspace.events, gate.keyspace.alerts}
    keys = [k.decode() for k in await gate.redis.keys("*")]
    made = {*gate.counters(p, now), *gate.counters(other, now),
            *(key for key, _, _ in second.windows)}
    assert made <= set(keys)
    assert {k: await gate.redis.ttl(k) for k in keys if k not in streams
            and await gate.redis.ttl(k) < 1} == {}


async def test_counters_are_not_enforced_before_they_are_rebuilt(gate: Gate) -> None:
    await gate.redis.delete(gate.keyspace.ready)
    ticket = await gate.admit(principal(cap=0), "r1", EST, NOW)  # cap 0, yet admitted
    assert not ticket.admitted  # as if Redis were down: fail_open


@pytest.mark.parametrize(("period", "tag", "end"), [
    ("daily", "d:2026-11-28", datetime(2026, 11, 29, tzinfo=UTC)),
    ("weekly", "w:2026-11-23", datetime(2026, 11, 30, tzinfo=UTC)),  # Monday to Monday
    ("monthly", "m:2026-11-01", datetime(2026, 12, 1, tzinfo=UTC)),
])
def test_periods_follow_utc_calendar_boundaries(period: str, tag: str, end: datetime) -> None:
    assert period_tag(period, NOW) == tag
    assert period_end(period, NOW) == end
    assert period_end("monthly", datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC)
