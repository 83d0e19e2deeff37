"""Reports and the dashboard on the organization's calendar (America/New_York here), across
both DST changes of 2026: spring forward on Sunday 8 March at 07:00 UTC (02:00 EST becomes
03:00 EDT) and fall back on Sunday 1 November at 06:00 UTC (02:00 EDT becomes 01:00 EST).
Every expectation is worked out by hand in the comments."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from dashboard.params import parse_time
from dashboard.render import today
from dashboard.reports_view import preset_days
from ledger import forecasts, periods, reports
from ledger.periods import day_start
from ledger.rollup import Rollup
from ledger.settlement import Settlement
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, attr, one
from tests.test_rollup import KS, fresh_db, inline_db, make_events, send

NY = "America/New_York"


@pytest.fixture(autouse=True)
def new_york() -> Iterator[None]:
    periods.set_zone(NY)
    yield
    periods.set_zone("UTC")  # the process-wide default every other test expects


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def event_at(at: datetime, seed: int, cost: int = 1_000) -> dict[str, Any]:
    (e,) = make_events(1, seed=seed, developers=(("dev_a", "team_x"),))
    e.update(ts_ms=int(at.timestamp() * 1000), cost_micros=cost, status=200, error_type="",
             session_id=f"sess-{seed}", project="apollo")
    return e


# (request start in UTC, the New York day it belongs to)
DAYS = [
    (utc(2026, 3, 8, 4, 30), date(2026, 3, 7)),  # 23:30 EST on the 7th
    (utc(2026, 3, 8, 5, 0), date(2026, 3, 8)),  # 00:00 EST
    (utc(2026, 3, 8, 7, 30), date(2026, 3, 8)),  # 03:30 EDT, just after the change
    (utc(2026, 3, 9, 3, 59, 59), date(2026, 3, 8)),  # 23:59:59 EDT: the 23-hour day's end
    (utc(2026, 3, 9, 4, 0), date(2026, 3, 9)),  # 00:00 EDT
    (utc(2026, 11, 1, 3, 30), date(2026, 10, 31)),  # 23:30 EDT on the 31st
    (utc(2026, 11, 1, 5, 30), date(2026, 11, 1)),  # 01:30 EDT, the first 01:30
    (utc(2026, 11, 1, 6, 30), date(2026, 11, 1)),  # 01:30 EST, the second 01:30
    (utc(2026, 11, 2, 4, 30), date(2026, 11, 1)),  # 23:30 EST: the 25-hour day's last hour
    (utc(2026, 11, 2, 5, 0), date(2026, 11, 2)),  # 00:00 EST
]


async def test_the_rollup_files_each_request_under_its_new_york_day(redis: Any) -> None:
    await send(redis, [event_at(at, seed) for seed, (at, _) in enumerate(DAYS)])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    expected: dict[date, int] = {}
    for _, day in DAYS:
        expected[day] = expected.get(day, 0) + 1
    for table in ("usage_daily", "usage_sessions", "usage_projects"):
        found = conn.execute(f"SELECT day, CAST(sum(requests) AS INT) FROM {table} "
                             "GROUP BY day ORDER BY day").fetchall()
        assert found == sorted(expected.items()), table


async def test_days_rolled_up_before_a_zone_change_keep_their_old_boundaries(
        redis: Any) -> None:
    # Rolled up while the organization was on UTC: 04:30 UTC on 8 March is the 8th there.
    periods.set_zone("UTC")
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db)
    await send(redis, [event_at(utc(2026, 3, 8, 4, 30), 1)])
    assert await rollup.run_once() == 1
    # Then New York: 04:45 UTC on the 8th is 23:45 EST on the 7th. Nothing is re-filed.
    periods.set_zone(NY)
    await send(redis, [event_at(utc(2026, 3, 8, 4, 45), 2)])
    assert await rollup.run_once() == 1
    found = conn.execute("SELECT day, CAST(sum(requests) AS INT) FROM usage_daily "
                         "GROUP BY day ORDER BY day").fetchall()
    assert found == [(date(2026, 3, 7), 1), (date(2026, 3, 8), 1)]


async def test_a_date_filter_over_raw_requests_cuts_where_the_rollup_does(redis: Any) -> None:
    await send(redis, [event_at(at, seed) for seed, (at, _) in enumerate(DAYS)])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    rolled = dict(conn.execute("SELECT day, CAST(sum(requests) AS INT) FROM usage_daily "
                               "GROUP BY day").fetchall())
    for day in sorted({d for _, d in DAYS}):
        # What a person types in the request log's boxes: the two days, no time, no offset.
        _, total = reports.requests_page(conn, start=parse_time(day.isoformat()),
                                         end=parse_time((day + timedelta(days=1)).isoformat()))
        assert total == rolled[day], day


# (what a person typed, the UTC instant it means in New York)
TYPED = [
    ("2026-03-08", utc(2026, 3, 8, 5)),  # midnight EST
    ("2026-03-09", utc(2026, 3, 9, 4)),  # midnight EDT
    ("2026-11-01T01:30", utc(2026, 11, 1, 5, 30)),  # ambiguous: the first (EDT) one
    ("2026-11-02", utc(2026, 11, 2, 5)),  # midnight EST
    ("2026-11-01T12:00:00+00:00", utc(2026, 11, 1, 12)),  # an offset says which clock
]


@pytest.mark.parametrize(("typed", "instant"), TYPED)
def test_dates_and_times_without_an_offset_are_new_york_wall_clock(typed: str,
                                                                    instant: datetime) -> None:
    assert parse_time(typed) == instant


@pytest.mark.parametrize(("day", "instant"), [
    (date(2026, 3, 8), utc(2026, 3, 8, 5)), (date(2026, 11, 1), utc(2026, 11, 1, 4))])
def test_a_day_starts_at_new_york_midnight(day: date, instant: datetime) -> None:
    assert day_start(day) == instant


async def test_month_end_forecast_counts_new_york_days_after_the_spring_change(
        redis: Any) -> None:
    # Frozen at 23:00 EDT on Tuesday 10 March (03:00 UTC on the 11th): today is the 10th,
    # the month began at 00:00 EST on 1 March (05:00 UTC) and ends at 00:00 EDT on 1 April
    # (04:00 UTC), so 21 days and 1 hour are left: 1,818,000 s. The rate window is the seven
    # whole days before today, 3 to 9 March.
    now = utc(2026, 3, 11, 3)
    await send(redis, [
        event_at(utc(2026, 3, 1, 4, 30), 1, 1_000_000),  # 23:30 EST 28 Feb: February's
        event_at(utc(2026, 3, 1, 5, 30), 2, 2_000_000),  # 00:30 EST 1 Mar: month, not rate
        event_at(utc(2026, 3, 3, 12), 3, 7_000_000),  # 3 Mar: month and rate window
        event_at(utc(2026, 3, 11, 2), 4, 5_000_000),  # 22:00 EDT 10 Mar: today, not rate
    ])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    org = forecasts.month_end(conn, now=now)[0]
    assert org["scope"] == "org"
    assert org["spent_micros"] == 2_000_000 + 7_000_000 + 5_000_000
    assert org["rate_micros"] == 7_000_000 // 7  # 1,000,000 a day
    # 14,000,000 + 1,000,000 × 1,818,000 // 86,400 = 14,000,000 + 21,041,666
    assert org["projected_micros"] == 35_041_666
    assert org["month_end"] == utc(2026, 4, 1, 4)


async def test_budget_forecast_projects_over_march_in_new_york_743_hours(redis: Any) -> None:
    # A monthly org cap. March in New York runs from 05:00 UTC on the 1st to 04:00 UTC on
    # 1 April: 743 hours (2,674,800 s). Frozen at 03:00 UTC on 11 March (23:00 EDT on the
    # 10th), 238 hours (856,800 s) have passed. The request at 04:30 UTC on 1 March is
    # 23:30 EST on 28 February: not March's.
    now = utc(2026, 3, 11, 3)
    await send(redis, [event_at(utc(2026, 3, 1, 4, 30), 1, 9_000_000),
                       event_at(utc(2026, 3, 5, 12), 2, 2_380_000),
                       event_at(utc(2026, 3, 11, 2), 3, 1_000_000)])
    conn = fresh_db()
    await Rollup(redis, KS, conn, inline_db).run_once()
    conn.execute("INSERT INTO budgets VALUES ('b1', 'org', '', 'monthly', 100000000, "
                 "'estimate', now())")
    (row,) = reports.forecast(conn, now=now)
    assert row["spent_micros"] == 3_380_000
    # 3,380,000 × 2,674,800 // 856,800 = 10,551,848
    assert row["projected_micros"] == 10_551_848
    assert row["period_end"] == utc(2026, 4, 1, 4)


async def test_request_log_shows_new_york_times_with_the_zone_abbreviation(
        start_dashboard: Any) -> None:
    dash: Dashboard = await start_dashboard(timezone=NY)
    rollup = dash.gateway.admin.rollup
    assert rollup is not None
    events = [event_at(utc(2026, 3, 8, 4, 30), 1), event_at(utc(2026, 11, 1, 5, 30), 2),
              event_at(utc(2026, 11, 1, 6, 30), 3)]
    for e in events:
        await rollup.redis.xadd(rollup.keyspace.events, {"e": Settlement(**e).packed()})
    await rollup.run_once()
    finance = await dash.signed_in("finance")
    page = await finance.page("/admin/requests")
    times = [td.get_text() for td in page.select("#requests tbody tr td:first-child")]
    assert times == ["2026-11-01 01:30:00 EST", "2026-11-01 01:30:00 EDT",
                     "2026-03-07 23:30:00 EST"]
    assert "Times are America/New_York." in one(page, ".page-head").get_text()
    assert "times in America/New_York" in one(page, "footer").get_text()
    # The 7th in New York holds the request at 04:30 UTC on the 8th; the 8th does not.
    page = await finance.page("/admin/requests?start=2026-03-07&end=2026-03-08")
    assert "(1 match)" in one(page, ".page-head").get_text()
    # The boxes keep what was typed: New York's midnight, not 05:00 (its UTC instant).
    assert attr(one(page, "input[name=start]"), "value") == "2026-03-07T00:00:00"
    page = await finance.page("/admin/requests?start=2026-03-08&end=2026-03-09")
    assert "(0 match)" in one(page, ".page-head").get_text()


# (preset, its first and last day) frozen at 03:00 UTC on 1 April 2026: 23:00 EDT on Tuesday
# 31 March in New York, so "today" is still in March and in the first quarter.
PRESETS = [
    ("7d", date(2026, 3, 25), date(2026, 3, 31)),
    ("last-month", date(2026, 2, 1), date(2026, 2, 28)),
    ("qtd", date(2026, 1, 1), date(2026, 3, 31)),
]


@pytest.mark.parametrize(("preset", "first", "last"), PRESETS)
def test_report_presets_count_new_york_days(preset: str, first: date, last: date) -> None:
    on = today(utc(2026, 4, 1, 3))
    assert on == date(2026, 3, 31)
    assert preset_days(preset, on) == (first, last)
