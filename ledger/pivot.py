"""The pivot report (dimension rows × period columns) and the monthly chargeback statement:
what finance reads for a year of a large organization (their CSV: ledger/exports.py).

A pivot shows the `top` costliest keys of the range (after `offset`, for paging) and folds
every other key into one "others" row, so the page stays the same size at any number of
developers or sessions. All amounts are integer µ$ from the rollups (see ledger/reports.py).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import duckdb

from ledger.reports import _DIMENSION_SQL, DIMENSIONS, GRAINS, _check, _filters

OTHERS = "(others)"
# Names, emails and teams exported with a developer key; team names with a team key.
_PEOPLE = {
    "developer": ("LEFT JOIN developers d ON d.id = g.key LEFT JOIN teams t ON t.id = d.team_id",
                  "coalesce(d.name, g.key)", "coalesce(d.email, '')", "coalesce(t.name, '')"),
    "team": ("LEFT JOIN teams t ON t.id = g.key", "coalesce(t.name, g.key)", "''",
             "coalesce(t.name, g.key)"),
}


def periods(start: date, end: date, grain: str) -> list[date]:
    """The first day of every day/week/month touching [start, end)."""
    _check(grain, GRAINS, "grain")
    if grain == "day":
        first = start
    elif grain == "week":
        first = start - timedelta(days=start.weekday())
    else:
        first = start.replace(day=1)
    out = []
    while first < end:
        out.append(first)
        if grain == "day":
            first += timedelta(days=1)
        elif grain == "week":
            first += timedelta(days=7)
        else:
            first = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return out


def keyed(dimension: str, start: date, end: date, grain: str, developer_id: str | None,
           team_id: str | None) -> tuple[str, list[Any]]:
    """SQL of (period, key, cost_micros, requests) per period × key over the range."""
    table, key, _, _ = _DIMENSION_SQL[dimension]
    where, params = _filters(start, end, developer_id, team_id)
    return (f"SELECT CAST(date_trunc('{grain}', day) AS DATE) AS period, {key} AS key, "
            "CAST(sum(cost_micros) AS BIGINT) AS cost_micros, "
            f"CAST(sum(requests) AS BIGINT) AS requests FROM {table} WHERE {where} "
            "GROUP BY ALL"), params


def labels(dimension: str) -> tuple[str, str, str, str]:
    """(join, name, email, team) SQL over a grouped row `g` with a `key` column."""
    if dimension in _PEOPLE:
        return _PEOPLE[dimension]
    _, _, label, join = _DIMENSION_SQL[dimension]
    return join, label, "''", "''"


def pivot(conn: duckdb.DuckDBPyConnection, *, start: date, end: date, grain: str = "day",
          dimension: str = "team", developer_id: str | None = None,
          team_id: str | None = None, top: int = 20, offset: int = 0) -> dict[str, Any]:
    """Rows × periods of cost: keys ranked by their cost over the whole range (ties by key),
    `top` of them from `offset`, then an "others" row with every key before and after the
    page, and a total row. Each row: key, label, email, team, `cells` (µ$ per period, in
    `periods` order), cost_micros and requests. `keys` is how many keys had usage."""
    _check(dimension, DIMENSIONS, "dimension")
    cols = periods(start, end, grain)
    table, key, _, _ = _DIMENSION_SQL[dimension]
    where, params = _filters(start, end, developer_id, team_id)
    join, name, email, team = labels(dimension)
    # Rank only the page's keys (a top-k over one aggregation per key, not a window over
    # period × key: sessions number in the hundreds of thousands a quarter); then read the
    # page's keys per period, and "others" is each period's total minus the page's, so no
    # key outside the page is ever labelled or joined.
    period = f"CAST(date_trunc('{grain}', day) AS DATE)"
    sql = (
        "WITH r AS (SELECT key, keys, row_number() OVER (ORDER BY cost DESC, key) AS rank "
        f"FROM (SELECT {key} AS key, sum(cost_micros) AS cost, count(*) OVER () AS keys "
        f"FROM {table} WHERE {where} GROUP BY key ORDER BY cost DESC, key LIMIT ? OFFSET ?)), "
        f"g AS (SELECT r.rank, r.key, {period} AS period, "
        "CAST(sum(cost_micros) AS BIGINT) AS cost_micros, "
        f"CAST(sum(requests) AS BIGINT) AS requests FROM {table} JOIN r ON {key} = r.key "
        f"WHERE {where} GROUP BY ALL) "
        f"SELECT g.rank, g.key, {name} AS label, {email} AS email, {team} AS team, g.period, "
        f"g.cost_micros, g.requests FROM g {join} "
        f"UNION ALL SELECT 0, NULL, NULL, NULL, NULL, {period}, "
        "CAST(sum(cost_micros) AS BIGINT), CAST(sum(requests) AS BIGINT) "
        f"FROM {table} WHERE {where} GROUP BY ALL "
        "UNION ALL SELECT -1, NULL, NULL, NULL, NULL, NULL, coalesce(max(keys), 0), 0 FROM r "
        "ORDER BY 1, 6")
    params = [*params, max(0, top), max(0, offset), *params, *params]
    index = {p: i for i, p in enumerate(cols)}
    rows: dict[int, dict[str, Any]] = {}
    total: dict[str, Any] = {"cells": [0] * len(cols), "cost_micros": 0, "requests": 0}
    keys = 0
    for rank, key, label, mail, team_name, period, cost, requests in conn.execute(
            sql, params).fetchall():
        if rank == -1:
            keys = int(cost)
            continue
        row = total if rank == 0 else rows.setdefault(rank, {
            "key": key, "label": label, "email": mail, "team": team_name,
            "cells": [0] * len(cols), "cost_micros": 0, "requests": 0})
        row["cells"][index[period]] += int(cost)
        row["cost_micros"] += int(cost)
        row["requests"] += int(requests)
    shown = [rows[r] for r in sorted(rows)]
    others = None
    if keys > len(shown):
        others = {"key": "", "label": OTHERS, "email": "", "team": "",
                  "cells": [t - sum(r["cells"][i] for r in shown)
                            for i, t in enumerate(total["cells"])],
                  "cost_micros": total["cost_micros"] - sum(r["cost_micros"] for r in shown),
                  "requests": total["requests"] - sum(r["requests"] for r in shown)}
    return {"periods": cols, "rows": shown, "others": others, "keys": keys,
            "offset": max(0, offset), "top": top, "total": total}


def statement(conn: duckdb.DuckDBPyConnection, *, month: date) -> dict[str, Any]:
    """The chargeback statement of a calendar month: cost, requests and tokens per team ×
    model, each team's subtotal and the grand total (integer µ$ and tokens)."""
    start = month.replace(day=1)
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    lines = conn.execute(
        "SELECT u.team_id, coalesce(t.name, u.team_id) AS team, u.model, "
        "CAST(sum(u.requests) AS BIGINT), CAST(sum(u.input_tokens + u.cache_write_5m + "
        "u.cache_write_1h + u.cache_read) AS BIGINT), CAST(sum(u.output_tokens) AS BIGINT), "
        "CAST(sum(u.cost_micros) AS BIGINT) FROM usage_daily u "
        "LEFT JOIN teams t ON t.id = u.team_id WHERE u.day >= ? AND u.day < ? "
        "GROUP BY ALL ORDER BY team, u.team_id, u.model", [start, end]).fetchall()
    teams: list[dict[str, Any]] = []
    for team_id, team, model, requests, prompt, output, cost in lines:
        if not teams or teams[-1]["team_id"] != team_id:
            teams.append({"team_id": team_id, "team": team, "models": [], "requests": 0,
                          "prompt_tokens": 0, "output_tokens": 0, "cost_micros": 0})
        entry = teams[-1]
        entry["models"].append({"model": model, "requests": int(requests),
                                "prompt_tokens": int(prompt), "output_tokens": int(output),
                                "cost_micros": int(cost)})
        for k, v in (("requests", requests), ("prompt_tokens", prompt),
                     ("output_tokens", output), ("cost_micros", cost)):
            entry[k] += int(v)
    return {"month": start, "end": end, "teams": teams,
            "cost_micros": sum(t["cost_micros"] for t in teams),
            "requests": sum(t["requests"] for t in teams)}
