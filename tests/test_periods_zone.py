"""Budget periods on the organization's local calendar (America/New_York here), across both
DST changes of 2027: spring forward on Sunday 14 March (a day of 23 hours) and fall back on
Sunday 7 November (a day of 25 hours). Admission runs on a frozen clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ledger import periods
from ledger.gate import BudgetExceeded, Gate
from ledger.periods import period_end, period_start, period_tag
from ledger.policy import Cap, Principal
from meterd.settings import Settings, SettingsError
from tests.settlements import settlement
from tests.test_gate import EST, gate

__all__ = ["gate"]  # the fixture, used by name


@pytest.fixture(autouse=True)
def new_york() -> Iterator[None]:
    periods.set_zone("America/New_York")
    yield
    periods.set_zone("UTC")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# (period, a moment, its period's start and end in UTC, hours between them)
CASES = [
    # Spring forward: 00:00 EST is 05:00 UTC, the next midnight (EDT) 04:00 UTC.
    ("daily", utc(2027, 3, 14, 16), utc(2027, 3, 14, 5), utc(2027, 3, 15, 4), 23),
    # Fall back: 00:00 EDT is 04:00 UTC, the next midnight (EST) 05:00 UTC.
    ("daily", utc(2027, 11, 7, 16), utc(2027, 11, 7, 4), utc(2027, 11, 8, 5), 25),
    # The week of Monday 8 March holds the 23-hour Sunday.
    ("weekly", utc(2027, 3, 14, 16), utc(2027, 3, 8, 5), utc(2027, 3, 15, 4), 7 * 24 - 1),
    ("monthly", utc(2027, 3, 31, 12), utc(2027, 3, 1, 5), utc(2027, 4, 1, 4), 31 * 24 - 1),
    ("monthly", utc(2027, 11, 30, 12), utc(2027, 11, 1, 4), utc(2027, 12, 1, 5), 30 * 24 + 1),
    # 23:30 on 31 December in New York is already 2028 in UTC: still December's month.
    ("monthly", utc(2028, 1, 1, 4, 30), utc(2027, 12, 1, 5), utc(2028, 1, 1, 5), 31 * 24),
]


@pytest.mark.parametrize(("period", "at", "start", "end", "hours"), CASES)
def test_periods_start_and_end_at_local_midnight(period: str, at: datetime, start: datetime,
                                                 end: datetime, hours: int) -> None:
    assert period_start(period, at) == start
    assert period_end(period, at) == end
    assert end - start == timedelta(hours=hours)


def test_counter_keys_name_the_local_day() -> None:
    # 23:59:59 EDT on 14 March is 03:59:59 UTC on the 15th: still the 14th's counter.
    assert period_tag("daily", utc(2027, 3, 15, 3, 59, 59)) == "d:2027-03-14"
    assert period_tag("daily", utc(2027, 3, 15, 4)) == "d:2027-03-15"
    assert period_tag("weekly", utc(2027, 3, 15, 3, 59, 59)) == "w:2027-03-08"
    assert period_tag("monthly", utc(2028, 1, 1, 4, 59, 59)) == "m:2027-12-01"


@pytest.mark.parametrize(("spent_at", "last_second"), [
    (utc(2027, 3, 14, 19), utc(2027, 3, 15, 3, 59, 59)),  # spring forward: 23 h day
    (utc(2027, 11, 7, 19), utc(2027, 11, 8, 4, 59, 59)),  # fall back: 25 h day
])
async def test_a_daily_cap_resets_at_local_midnight(gate: Gate, spent_at: datetime,
                                                    last_second: datetime) -> None:
    p = Principal("k1", "d1", "Ada", "t1", "platform",
                  (Cap("b1", "developer", "d1", "Ada", "daily", 10_000, "estimate"),), ())
    ticket = await gate.admit(p, "r1", EST, spent_at)
    await gate.settle(ticket, settlement(ticket, 9_500))  # 9500 + 1000 reserved > 10000
    with pytest.raises(BudgetExceeded) as refused:
        await gate.admit(p, "r2", EST, last_second)
    assert refused.value.resets_at == last_second + timedelta(seconds=1)
    assert refused.value.retry_after == 1
    ticket = await gate.admit(p, "r3", EST, last_second + timedelta(seconds=1))  # a new day
    assert ticket.holds[0].reserved == 1000
    day = await gate.redis.hgetall(gate.keyspace.counter("developer", "d1", "daily",
                                                         last_second))
    assert int(day[b"spent"]) == 9_500


def test_an_unknown_time_zone_is_a_clear_settings_error() -> None:
    with pytest.raises(SettingsError, match="setting timezone: unknown time zone 'Mars/Base'"):
        Settings.load(environ={"MTD_TIMEZONE": "Mars/Base"})
