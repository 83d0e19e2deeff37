"""The overview's budget table projects each cap by the month-end forecast's rule: spent so
far plus the run rate of the last 7 complete days over what is left of the period, held at the
cap. A daily cap at 09:00 is not projected from the morning as if linear (issue 17.5)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from dashboard import live
from ledger import forecasts
from ledger.catalog import connect
from ledger.keyspace import KeySpace

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # a Tuesday, 09:00: 15 h left of the day
M = 1_000_000  # µ$ per dollar

# (scope, scope_id, period, cap µ$, live spent per counter, rate µ$/day per counter,
#  grant µ$, expected spent, projected, percent, projected percent)
TABLE: list[tuple[Any, ...]] = [
    # $40 by 09:00 at a $20/day rate: 40 + 20 × 15/24 = $52.50 (linear would say $106.67).
    ("developer", "ada", "daily", 100 * M, {("developer", "ada"): 40 * M},
     {("developer", "ada"): 20 * M}, 0, 40 * M, 52_500_000, 40, 52),
    # Refused (spent reached the cap): projected at the cap, not 30 + 12.50.
    ("developer", "bo", "daily", 30 * M, {("developer", "bo"): 30 * M},
     {("developer", "bo"): 20 * M}, 0, 30 * M, 30 * M, 100, 100),
    # Monthly: 21 days 15 h left (to April 1); $200 + $10/day × 1,868,400 s / 86,400 = $416.25.
    ("team", "platform", "monthly", 1_000 * M, {("team", "platform"): 200 * M},
     {("team", "platform"): 10 * M}, 0, 200 * M, 416_250_000, 20, 41),
    # Per member (of web): the fullest now (Dee $6, no rate → $6) is not the one projected
    # highest (Eve $2 + $8 × 15/24 = $7).
    ("team_member", "web", "daily", 10 * M,
     {("developer", "dee"): 6 * M, ("developer", "eve"): 2 * M},
     {("developer", "eve"): 8 * M}, 0, 6 * M, 7 * M, 60, 70),
    # A running $3 grant raises a $5 weekly cap to $8: $4 spent is 50%.
    ("developer", "cy", "weekly", 5 * M, {("developer", "cy"): 4 * M}, {}, 3 * M,
     4 * M, 4 * M, 50, 50),
]
MEMBERS = {"platform": ["ada", "bo"], "web": ["dee", "eve"]}


async def test_budget_rows_are_projected_by_the_forecast_rule(redis: Any) -> None:
    keyspace = KeySpace()
    rates: dict[tuple[str, str], int] = {}
    forecast, running = [], []
    for scope, scope_id, period, cap, spent, rate, grant, *_ in TABLE:
        for counter, value in spent.items():
            await redis.hset(keyspace.counter(*counter, period, NOW), "spent", value)
        rates.update(rate)
        forecast.append({"scope": scope, "scope_id": scope_id, "period": period,
                         "label": scope_id, "amount_micros": cap, "spent_micros": 0,
                         "percent": 0})
        if grant:
            running.append({"scope": scope, "scope_id": scope_id, "period": None,
                            "amount_micros": grant,
                            "expires_at": (NOW + timedelta(days=1)).replace(tzinfo=None)})
    rows = await live.forecast_with_live_spend(redis, keyspace, forecast, MEMBERS, NOW,
                                               rates=rates, running=running)
    got = {(r["scope"], r["scope_id"], r["period"]): (
        r["spent_micros"], r["projected_micros"], r["percent"], r["projected_percent"])
        for r in rows}
    assert got == {row[:3]: tuple(row[7:]) for row in TABLE}
    (cy,) = [r for r in rows if r["scope_id"] == "cy"]
    assert (cy["amount_micros"], cy["granted_micros"]) == (8 * M, 3 * M)


@pytest.mark.parametrize(("spent", "rate", "left", "cap", "expected"), [
    (40 * M, 20 * M, 54_000, None, (52_500_000, False)),
    (40 * M, 20 * M, 54_000, 50 * M, (50 * M, True)),
    (60 * M, 20 * M, 54_000, 50 * M, (60 * M, True)),  # already past (estimate mode)
    (40 * M, 0, 54_000, 50 * M, (40 * M, False)),
    (40 * M, 20 * M, -5, None, (40 * M, False)),  # never projected backwards
])
def test_project_adds_the_run_rate_over_what_is_left_and_holds_at_the_cap(
        spent: int, rate: int, left: int, cap: int | None, expected: tuple[int, bool]) -> None:
    assert forecasts.project(spent, rate, left, cap) == expected


def test_run_rates_average_the_last_seven_complete_days(tmp_path: Any) -> None:
    conn = connect(tmp_path / "ledger.duckdb")
    today = NOW.date()

    def spend(day: date, dev: str, team: str, cost: int) -> None:
        conn.execute("INSERT INTO usage_daily VALUES (?, ?, ?, 'm', 1, 0, 0, 0, 0, 0, 0, 0, 0,"
                     " ?, 0)", [day, dev, team, cost])
    for back in range(1, 8):  # the 7 complete days: $7 a day for Ada, $1 for Bo
        spend(today - timedelta(days=back), "ada", "platform", 7 * M)
        spend(today - timedelta(days=back), "bo", "web", 1 * M)
    spend(today, "ada", "platform", 500 * M)  # today's partial day is not a rate
    spend(today - timedelta(days=8), "bo", "web", 700 * M)  # before the window
    spend(today - timedelta(days=3), "cy", "web", 10 * M)  # one day: $10 / 7 days
    assert forecasts.run_rates(conn, now=NOW) == {
        ("developer", "ada"): 7 * M, ("developer", "bo"): 1 * M,
        ("developer", "cy"): 1_428_571,
        ("team", "platform"): 7 * M, ("team", "web"): 2_428_571,
        ("org", ""): 9_428_571}
