"""Month-end projections for the organization and every team, with or without a budget.

Spent so far this month plus a run rate times the time left. The run rate is the average of
the last RATE_DAYS complete days, not today's partial spend stretched over 24 hours: at 9:00
a team that spent $40 since midnight has not shown a $106/day rate. A scope's daily cap bounds
its rate, and its monthly cap bounds the projection: the gateway refuses beyond a cap, so
nothing past it will be spent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from ledger.periods import local_day, period_end, start_day

RATE_DAYS = 7
DAY_SECONDS = 86_400


def month_end(conn: duckdb.DuckDBPyConnection, *, now: datetime) -> list[dict[str, Any]]:
    """One row for the organization (scope "org", first) and one per team with usage or a
    budget, costliest projection first: spent_micros this month, rate_micros (per day),
    projected_micros, monthly and daily cap (None without one), capped (the projection was
    held at a cap) and projected_percent (of the monthly cap, None without one)."""
    at = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    today = local_day(at)  # the organization's days, as the rollups file spend
    month_start = start_day("monthly", at)
    end = period_end("monthly", at)
    left = int((end - at).total_seconds())
    rate_start = today - timedelta(days=RATE_DAYS)
    sums = conn.execute(
        "SELECT team_id, CAST(coalesce(sum(cost_micros) FILTER (WHERE day >= ?), 0) AS BIGINT),"
        " CAST(coalesce(sum(cost_micros) FILTER (WHERE day >= ? AND day < ?), 0) AS BIGINT) "
        "FROM usage_daily WHERE day >= ? AND day <= ? GROUP BY team_id",
        [month_start, rate_start, today, min(month_start, rate_start), today]).fetchall()
    spent = {"": (0, 0)}
    for team_id, month, recent in sums:
        spent[team_id] = (int(month), int(recent))
        spent[""] = (spent[""][0] + int(month), spent[""][1] + int(recent))
    caps: dict[tuple[str, str], int] = {}
    for scope, scope_id, period, amount in conn.execute(
            "SELECT scope, scope_id, period, amount_micros FROM budgets "
            "WHERE scope IN ('org', 'team') AND period IN ('daily', 'monthly')").fetchall():
        caps[("" if scope == "org" else scope_id, period)] = int(amount)
    names = dict(conn.execute("SELECT id, name FROM teams").fetchall())
    ids = ["", *sorted(set(spent) - {""} | {i for i, _ in caps} - {""} | set(names))]
    out: list[dict[str, Any]] = []
    for scope_id in ids:
        month_spent, recent = spent.get(scope_id, (0, 0))
        rate = recent // RATE_DAYS
        daily, monthly = caps.get((scope_id, "daily")), caps.get((scope_id, "monthly"))
        capped = False
        if daily is not None and rate > daily:
            rate, capped = daily, True
        projected = month_spent + rate * left // DAY_SECONDS
        if monthly is not None and projected > monthly:
            projected, capped = max(monthly, month_spent), True
        out.append({
            "scope": "org" if scope_id == "" else "team", "scope_id": scope_id,
            "label": "organization" if scope_id == "" else names.get(scope_id, scope_id),
            "spent_micros": month_spent, "rate_micros": rate, "projected_micros": projected,
            "monthly_cap_micros": monthly, "daily_cap_micros": daily, "capped": capped,
            "projected_percent": None if not monthly else projected * 100 // monthly,
            "month_end": end,
        })
    org, teams = out[0], out[1:]
    teams.sort(key=lambda r: (-r["projected_micros"], r["label"]))
    return [org, *teams]
