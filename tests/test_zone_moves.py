"""Team moves, "What it bought" and the messages that name a time, on the organization's
calendar (America/New_York here; EST is UTC-5, EDT from 8 March 2026 UTC-4). Every
expectation is worked out by hand in the comments."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import duckdb
import pytest

from dashboard.increases import _decision_text
from ledger import bought, periods, reports
from ledger.gate import BudgetExceeded
from ledger.lifecycle import Lifecycle
from ledger.periods import clock
from ledger.policy import Cap
from ledger.rollup import Rollup
from ledger.settlement import Settlement
from proxy.handlers import refusal
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, one
from tests.test_lifecycle import _events, _ledger_with_ada
from tests.test_rollup import KS, fresh_db, inline_db, send
from tests.test_zone_days import NY, new_york, utc  # noqa: F401 (new_york: autouse)


async def test_a_request_at_three_utc_on_the_move_day_stays_with_the_old_team(
        redis: Any) -> None:
    # A move from 10 February starts at 00:00 EST on the 10th, 05:00 UTC.
    catalog, ids = _ledger_with_ada()
    await send(redis, _events(ids, ("2026-02-10T03:00:00", 1_000_000),  # 22:00 EST, the 9th
                              ("2026-02-10T05:00:00", 2_000_000)))  # 00:00 EST, the 10th
    rollup = Rollup(redis, KS, catalog.conn, inline_db, rebuild=False)
    assert await rollup.run_once() == 2
    moved = Lifecycle(catalog).move("Ada", "research", date(2026, 2, 10),
                                    today=date(2026, 2, 15))
    assert not moved["scheduled"]
    # Admitted under platform at 23:59:59 EST on the 9th, settled after the move.
    await send(redis, _events(ids, ("2026-02-10T04:59:59", 300_000)))
    assert await rollup.run_once() == 1
    await rollup.close()

    raw = catalog.conn.execute("SELECT ts::VARCHAR, team_id FROM requests ORDER BY ts").fetchall()
    assert raw == [("2026-02-10 03:00:00", ids["platform"]),
                   ("2026-02-10 04:59:59", ids["platform"]),
                   ("2026-02-10 05:00:00", ids["research"])]
    per_day = catalog.conn.execute(
        "SELECT day::VARCHAR, team_id, cost_micros FROM usage_daily ORDER BY day").fetchall()
    # platform on the 9th: 1.00 + 0.30 dollars; research on the 10th: 2.00.
    assert per_day == [("2026-02-09", ids["platform"], 1_300_000),
                       ("2026-02-10", ids["research"], 2_000_000)]
    by_team = {r["label"]: r["cost_micros"] for r in reports.spend(
        catalog.conn, start=date(2026, 2, 1), end=date(2026, 3, 1), grain="month")}
    assert by_team == {"platform": 1_300_000, "research": 2_000_000}


def test_a_scheduled_move_starts_at_new_york_midnight(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, ids = _ledger_with_ada()
    lifecycle = Lifecycle(catalog)
    # 03:00 UTC on 10 February is 22:00 EST on the 9th: a move from the 10th is scheduled.
    monkeypatch.setattr("ledger.lifecycle._now", lambda: datetime(2026, 2, 10, 3))
    assert lifecycle.move("Ada", "research", date(2026, 2, 10))["scheduled"]
    assert [m["pending"] for m in lifecycle.memberships("Ada")] == [True, False]
    assert lifecycle.start_due_moves() == 0
    # 05:00 UTC is 00:00 EST on the 10th: its day has come.
    monkeypatch.setattr("ledger.lifecycle._now", lambda: datetime(2026, 2, 10, 5))
    assert lifecycle.start_due_moves() == 1
    assert catalog.developers()[0]["team_id"] == ids["research"]


def _bought_ledger(conn: duckdb.DuckDBPyConnection, at: datetime) -> None:
    """One telemetry pull request and one `api_request` event (req_1, 900 µ$) at `at`."""
    for seq, (signal, name, value, rid, cost) in enumerate((
            ("metric", "claude_code.pull_request.count", 1.0, "", None),
            ("log", "claude_code.api_request", None, "req_1", 900))):
        naive = at.replace(tzinfo=None)
        conn.execute("INSERT INTO telemetry VALUES ('1-0', ?, ?, ?, 'dev_a', 'team_x', ?, ?, "
                     "?, false, 's1', ?, ?, '{}')", [seq, naive, naive, signal, name, value,
                                                     rid, cost])


async def test_what_it_bought_counts_new_york_days(redis: Any) -> None:
    # 03:00 UTC on 10 March is 23:00 EDT on the 9th: the 9th's, cost and work alike.
    at = utc(2026, 3, 10, 3)
    conn = fresh_db()
    await send(redis, [Settlement(id="m1", ts_ms=int(at.timestamp() * 1000), developer_id="dev_a",
                                  team_id="team_x", status=200, cost_micros=1_000,
                                  session_id="s1", upstream_request_id="req_1")._asdict()])
    await Rollup(redis, KS, conn, inline_db).run_once()
    _bought_ledger(conn, at)
    nine, ten, eleven = date(2026, 3, 9), date(2026, 3, 10), date(2026, 3, 11)
    [row] = bought.outcomes(conn, start=nine, end=ten)
    assert (row["cost_micros"], row["pull_requests"], row["cost_per_pr_micros"]) == (
        1_000, 1, 1_000)
    assert bought.outcomes(conn, start=ten, end=eleven) == []
    found = bought.reconcile(conn, start=nine, end=ten)
    # Claude Code 900 µ$, meterd 1,000: drift -100, -10 %.
    assert (found["claude_code_micros"], found["metered_micros"], found["matched"],
            found["drift_percent"]) == (900, 1_000, 1, -10.0)
    empty = bought.reconcile(conn, start=ten, end=eleven)
    assert (empty["claude_code_micros"], empty["metered_micros"]) == (0, 0)


# (instant, on New York's clock with the abbreviation of that moment)
CLOCK = [
    (utc(2026, 3, 8, 5), "2026-03-08 00:00 EST"),
    (utc(2026, 3, 9, 4), "2026-03-09 00:00 EDT"),  # the day after spring forward
    (datetime(2026, 11, 1, 6, 30, 15), "2026-11-01 01:30 EST"),  # naive: UTC, as stored
]


@pytest.mark.parametrize(("when", "shown"), CLOCK)
def test_clock_shows_new_york_time_with_its_abbreviation(when: datetime, shown: str) -> None:
    assert clock(when) == shown


def test_clock_with_seconds_and_on_utc() -> None:
    assert clock(utc(2026, 11, 1, 5, 30, 15), with_seconds=True) == "2026-11-01 01:30:15 EDT"
    periods.set_zone("UTC")
    assert clock(utc(2026, 11, 1, 5, 30, 15)) == "2026-11-01 05:30 UTC"


def test_a_refusal_says_when_the_cap_resets_on_new_york_s_clock() -> None:
    cap = Cap("b1", "developer", "dev_a", "Ada", "daily", 5_000_000, "estimate")
    # A daily cap hit at 22:00 EDT on 10 March resets at 00:00 EDT on the 11th, 04:00 UTC.
    exc = BudgetExceeded(cap, utc(2026, 3, 11, 4), 7_200)
    assert str(exc) == "spend limit reached (developer Ada, daily) · resets 2026-03-11 00:00 EDT"
    assert refusal(exc) == "budget: developer Ada, daily $5.00 · until 2026-03-11 00:00 EDT"


def test_a_granted_increase_says_until_when_on_new_york_s_clock() -> None:
    # Until the end of 9 March UTC (23:59:59), which is 19:59 EDT that day.
    row = {"status": "approved", "period": "daily", "granted_micros": 5_250_000,
           "expires_at": datetime(2026, 3, 9, 23, 59, 59)}
    assert _decision_text(row) == "Your daily cap was raised by $5.25 until 2026-03-09 19:59 EDT."


async def test_the_move_form_schedules_from_new_york_midnight(start_dashboard: Any) -> None:
    dash: Dashboard = await start_dashboard(timezone=NY)
    await dash.gateway.developer("Ada", "platform")
    admin_state = dash.gateway.admin
    await admin_state.db(admin_state.catalog.create_team, "research")
    dev = (await admin_state.db(admin_state.catalog.developers))[0]["id"]
    admin = await dash.signed_in("admin")
    page = await admin.page(f"/admin/developers/{dev}")
    assert "From (a day in America/New_York" in one(page, "#move-developer").get_text()
    status, _, headers = await admin.post(f"/admin/developers/{dev}/move",
                                          {"team": "research", "since": "2027-01-15"})
    assert status == 303
    flash = one(await admin.page(headers["Location"]), ".flash").get_text()
    # 15 January is in winter: New York's midnight is 00:00 EST (05:00 UTC).
    assert "Moves to team research on 2027-01-15 00:00 EST; until then nothing changes." in flash
    finance = await dash.signed_in("finance")
    page = await finance.page("/admin/bought")
    assert "(days in America/New_York, both included)" in page.get_text()
