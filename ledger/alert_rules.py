"""The ledger's questions behind the alerts that are not about one cap: a developer's day far
above their own usual day, and the provider failing. Plain queries on the rollups, run by the
admin's alert job (meterd/alert_jobs.py) on the catalog's connection."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import duckdb

from ledger import forecasts
from ledger.periods import local_day

HISTORY_DAYS = 28
MIN_DAYS = 5  # fewer days of history than this says nothing about "usual"
UNUSUAL_TIMES = 3  # a day this many times the median…
UNUSUAL_FLOOR_MICROS = 5_000_000  # …and at least $5: cents are never news
UPSTREAM_ERRORS = 10  # provider failures (5xx) in one UTC hour


def unusual_spend(conn: duckdb.DuckDBPyConnection, day: date) -> list[dict[str, Any]]:
    """Developers whose spend on `day` is over UNUSUAL_TIMES their median day of the
    HISTORY_DAYS before (days they used it), and over the floor."""
    rows = conn.execute("""
        WITH days AS (
            SELECT developer_id, day, sum(cost_micros) AS spent FROM usage_daily
            WHERE day BETWEEN ? AND ? GROUP BY ALL),
        usual AS (
            SELECT developer_id, median(spent) AS median_micros, count(*) AS n FROM days
            WHERE day < ? GROUP BY ALL)
        SELECT d.developer_id, d.spent AS spent_micros,
               CAST(u.median_micros AS BIGINT) AS median_micros
        FROM days d JOIN usual u USING (developer_id)
        WHERE d.day = ? AND u.n >= ? AND d.spent >= ?
          AND d.spent > ? * u.median_micros
        ORDER BY d.developer_id""",
        [day - timedelta(days=HISTORY_DAYS), day, day, day, MIN_DAYS,
         UNUSUAL_FLOOR_MICROS, UNUSUAL_TIMES]).fetchall()
    return [{"developer_id": r[0], "spent_micros": int(r[1]), "median_micros": int(r[2])}
            for r in rows]


def upstream_errors(conn: duckdb.DuckDBPyConnection, hour: datetime) -> int:
    """Requests the provider (or meterd, on its behalf: 502/504) failed with a 5xx in the UTC
    hour starting at `hour` (naive UTC)."""
    found = conn.execute("SELECT count(*) FROM requests WHERE ts >= ? AND ts < ? "
                         "AND status >= 500", [hour, hour + timedelta(hours=1)]).fetchone()
    return int(found[0]) if found else 0


def digest(conn: duckdb.DuckDBPyConnection, now: datetime, days: int) -> dict[str, Any]:
    """Finance's digest at `now` of the `days` before today (the org's days): spend, the same
    span before it, the month so far and its month-end forecast (ledger.forecasts, as the
    dashboard shows it), and the developers whose spend moved most."""
    end = local_day(now)
    start, before = end - timedelta(days=days), end - timedelta(days=2 * days)
    per_dev = conn.execute("""
        SELECT u.developer_id, coalesce(d.name, u.developer_id),
               sum(cost_micros) FILTER (WHERE day >= ?) AS now_micros,
               sum(cost_micros) FILTER (WHERE day < ?) AS before_micros
        FROM usage_daily u LEFT JOIN developers d ON d.id = u.developer_id
        WHERE day >= ? AND day < ? GROUP BY ALL""", [start, start, before, end]).fetchall()
    movers = sorted(((name, int(n or 0) - int(b or 0)) for _, name, n, b in per_dev),
                    key=lambda m: (-abs(m[1]), m[0]))[:5]
    org = forecasts.month_end(conn, now=now)[0]
    return {
        "spent_micros": sum(int(n or 0) for _, _, n, _ in per_dev),
        "before_micros": sum(int(b or 0) for _, _, _, b in per_dev),
        "month_micros": org["spent_micros"],
        "forecast_micros": org["projected_micros"],
        "movers": movers,
    }
