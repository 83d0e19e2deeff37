"""The pivot, the chargeback statement, their CSV and the month-end forecasts, on a handful of
rollup rows whose sums are worked out by hand in the comments."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

import duckdb
import pytest

from ledger import exports, forecasts, pivot
from ledger.catalog import connect

ROWS = [  # day, developer, team, model, requests, cost µ$
    (date(2026, 3, 2), "d1", "t1", "opus", 2, 1_000_000),
    (date(2026, 3, 3), "d1", "t1", "sonnet", 1, 250_000),
    (date(2026, 3, 2), "d2", "t1", "opus", 1, 400_000),
    (date(2026, 3, 9), "d2", "t1", "opus", 1, 600_000),
    (date(2026, 3, 3), "d3", "t2", "haiku", 4, 30_000),
    (date(2026, 3, 10), "d4", "t2", "=cmd()", 1, 5_000),
    (date(2026, 2, 27), "d3", "t2", "haiku", 9, 70_000),
]


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    c = connect(":memory:")
    c.execute("INSERT INTO teams (id, name, created_at) "
              "VALUES ('t1', 'Platform', now()), ('t2', 'Research', now())")
    for i, (name, team) in enumerate((("Ada", "t1"), ("Bo", "t1"), ("Cy", "t2"),
                                      ("=HYPERLINK()", "t2")), start=1):
        c.execute("INSERT INTO developers (id, name, email, team_id, created_at) "
                  "VALUES (?, ?, ?, ?, now())", [f"d{i}", name, f"{name[:3].lower()}@x.io", team])
    for day, dev, team, model, requests, cost in ROWS:
        c.execute("INSERT INTO usage_daily VALUES (?, ?, ?, ?, ?, 0, 0, 10, 5, 0, 0, 0, 0, ?, 0)",
                  [day, dev, team, model, requests, cost])
    return c


def test_pivot_keeps_the_top_keys_and_folds_the_rest_into_others(
        conn: duckdb.DuckDBPyConnection) -> None:
    # 2–15 March by week: weeks of 2 and 9 March. Developer totals: d1 1,250,000;
    # d2 1,000,000; d3 30,000 (27 Feb is outside); d4 5,000.
    got = pivot.pivot(conn, start=date(2026, 3, 2), end=date(2026, 3, 16), grain="week",
                      dimension="developer", top=2)
    assert got["periods"] == [date(2026, 3, 2), date(2026, 3, 9)]
    assert [(r["label"], r["email"], r["team"], r["cells"], r["cost_micros"])
            for r in got["rows"]] == [
        ("Ada", "ada@x.io", "Platform", [1_250_000, 0], 1_250_000),
        ("Bo", "bo@x.io", "Platform", [400_000, 600_000], 1_000_000),
    ]
    assert got["others"]["cells"] == [30_000, 5_000]
    assert got["others"]["requests"] == 5
    assert got["total"]["cells"] == [1_680_000, 605_000]
    assert got["total"]["cost_micros"] == 2_285_000
    assert got["keys"] == 4


def test_pivot_pages_and_others_holds_the_keys_before_and_after_the_page(
        conn: duckdb.DuckDBPyConnection) -> None:
    got = pivot.pivot(conn, start=date(2026, 3, 2), end=date(2026, 3, 16), grain="month",
                      dimension="developer", top=1, offset=1)
    assert [(r["key"], r["cells"]) for r in got["rows"]] == [("d2", [1_000_000])]
    assert got["others"]["cells"] == [1_250_000 + 30_000 + 5_000]
    assert got["total"]["cost_micros"] == 2_285_000


def test_pivot_follows_the_team_filter(conn: duckdb.DuckDBPyConnection) -> None:
    got = pivot.pivot(conn, start=date(2026, 2, 1), end=date(2026, 4, 1), grain="month",
                      dimension="model", team_id="t2", top=10)
    # Research: haiku 70,000 in Feb and 30,000 in March; "=cmd()" 5,000 in March.
    assert [(r["label"], r["cells"]) for r in got["rows"]] == [
        ("haiku", [70_000, 30_000]), ("=cmd()", [0, 5_000])]
    assert got["others"] is None


def test_pivot_csv_carries_names_emails_teams_and_escapes_formulas(
        conn: duckdb.DuckDBPyConnection) -> None:
    text = "".join(exports.pivot_csv(conn, start=date(2026, 3, 9), end=date(2026, 3, 16),
                                   grain="day", dimension="developer"))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["period", "developer", "name", "email", "team", "requests", "cost_micros",
         "cost_usd"],
        ["2026-03-09", "d2", "Bo", "bo@x.io", "Platform", "1", "600000", "0.600000"],
        ["2026-03-10", "d4", "'=HYPERLINK()", "=hy@x.io".replace("=", "'="), "Research", "1",
         "5000", "0.005000"],
    ]


def test_statement_totals_team_by_model_for_the_month(conn: duckdb.DuckDBPyConnection) -> None:
    got = pivot.statement(conn, month=date(2026, 3, 17))
    assert [(t["team"], [(m["model"], m["cost_micros"]) for m in t["models"]], t["cost_micros"])
            for t in got["teams"]] == [
        ("Platform", [("opus", 2_000_000), ("sonnet", 250_000)], 2_250_000),
        ("Research", [("=cmd()", 5_000), ("haiku", 30_000)], 35_000),
    ]
    assert got["cost_micros"] == 2_285_000
    assert got["requests"] == 2 + 1 + 1 + 1 + 4 + 1
    lines = list(csv.reader(io.StringIO("".join(exports.statement_csv(got)))))
    # Platform: 4 rollup rows of 10 prompt and 5 output tokens each.
    assert lines[3] == ["2026-03-01", "Platform", "(team total)", "5", "40", "20",
                        "2250000", "2.250000"]
    assert lines[4][2] == "'=cmd()"
    assert lines[-1] == ["2026-03-01", "(all teams)", "", "10", "", "", "2285000", "2.285000"]


def test_month_end_projects_every_team_from_complete_days_and_stops_at_caps(
        conn: duckdb.DuckDBPyConnection) -> None:
    # Now: 11 March 06:00, so 20 days and 18 hours (20.75 days) are left in March.
    # The 7 complete days before today are 4–10 March.
    now = datetime(2026, 3, 11, 6, 0, tzinfo=UTC)
    conn.execute("INSERT INTO usage_daily VALUES "
                 "('2026-03-11', 'd3', 't2', 'haiku', 1, 0, 0, 0, 0, 0, 0, 0, 0, 700000, 0)")
    conn.execute("INSERT INTO budgets VALUES ('b1', 'team', 't1', 'monthly', 3000000, "
                 "'estimate', now()), ('b2', 'team', 't2', 'daily', 700, 'strict', now())")
    got = {r["scope_id"]: r for r in forecasts.month_end(conn, now=now)}
    # Platform: spent 2,250,000; 4–10 March holds 600,000 → 85,714 a day;
    # 2,250,000 + 85,714 × 20.75 = 4,028,565 > the 3,000,000 cap: held at the cap.
    assert (got["t1"]["spent_micros"], got["t1"]["rate_micros"]) == (2_250_000, 85_714)
    assert (got["t1"]["projected_micros"], got["t1"]["capped"]) == (3_000_000, True)
    assert got["t1"]["projected_percent"] == 100
    # Research: this morning's 700,000 is not stretched over the day; 4–10 March holds
    # 5,000 → 714 a day, above its 700 daily cap: 735,000 + 700 × 20.75 = 749,525.
    assert got["t2"]["spent_micros"] == 35_000 + 700_000
    assert got["t2"]["rate_micros"] == 700
    assert got["t2"]["projected_micros"] == 749_525
    assert got["t2"]["projected_percent"] is None
    # The organization, no budget: (600,000 + 5,000) // 7 = 86,428 a day.
    org = forecasts.month_end(conn, now=now)[0]
    assert org["scope"] == "org"
    assert (org["spent_micros"], org["rate_micros"]) == (2_985_000, 86_428)
    assert org["projected_micros"] == 4_778_381  # 2,985,000 + 86,428 × 20.75 = 1,793,381
    assert org["capped"] is False
