"""What the spend bought: meterd's metered cost next to what Claude Code's telemetry says was
done with it (lines changed, commits, pull requests, edit decisions, active time), per
developer, team or Claude Code session; and the reconciliation of Claude Code's own cost of
each request against meterd's, matched by the provider's request id.

Cost comes from the rollups (`usage_daily`, `usage_sessions`), the work from `telemetry`
(ledger/telemetry.sql), the reconciliation from `requests` (its `upstream_request_id`) and the
`claude_code.api_request` events. Dates are the organization's days (its `timezone`: the
rollups' days, and raw times cut at local midnight), `end` exclusive; amounts integer µ$.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import duckdb

from ledger.periods import day_start
from ledger.reports import NO_SESSION

DIMENSIONS = ("developer", "team", "session")
# Output column → (Claude Code metric, attribute, its value): what the work columns count.
WORK = {
    "lines_added": ("claude_code.lines_of_code.count", "type", "added"),
    "lines_removed": ("claude_code.lines_of_code.count", "type", "removed"),
    "commits": ("claude_code.commit.count", "", ""),
    "pull_requests": ("claude_code.pull_request.count", "", ""),
    "edits_accepted": ("claude_code.code_edit_tool.decision", "decision", "accept"),
    "edits_rejected": ("claude_code.code_edit_tool.decision", "decision", "reject"),
    "active_seconds": ("claude_code.active_time.total", "", ""),
}
OUTCOME_COLUMNS = ("key", "label", "requests", "cost_micros", *WORK, "cost_per_pr_micros",
                   "cost_per_accepted_edit_micros")
DIFFERENCE_COLUMNS = ("request_id", "ts", "developer_id", "session_id", "claude_code_micros",
                      "metered_micros", "difference_micros")
# dimension → (rollup table, key column, label expression over `key`, join)
_DIMENSION_SQL = {
    "developer": ("usage_daily", "developer_id", "coalesce(d.name, key)",
                  "LEFT JOIN developers d ON d.id = key"),
    "team": ("usage_daily", "team_id", "coalesce(t.name, key)",
             "LEFT JOIN teams t ON t.id = key"),
    "session": ("usage_sessions", "session_id",
                f"CASE WHEN key = '' THEN '{NO_SESSION}' ELSE key END", ""),
}
_NAMES = ", ".join(sorted({f"'{name}'" for name, _, _ in WORK.values()}))


def _where(column: str, start: date, end: date, developer_id: str | None,
           team_id: str | None) -> tuple[str, list[Any]]:
    """Rows in the days [start, end): `day` compares as is, a raw time (`ts`, naive UTC)
    against the days' first instants."""
    where = [f"{column} >= ?", f"{column} < ?"]
    params: list[Any] = [start, end] if column == "day" else [
        day_start(d).replace(tzinfo=None) for d in (start, end)]
    for sql, value in (("developer_id = ?", developer_id), ("team_id = ?", team_id)):
        if value is not None:
            where.append(sql)
            params.append(value)
    return " AND ".join(where), params


def _per(cost: int, count: int) -> int | None:
    """Cost per unit in whole µ$ (rounded down); None when there were no units."""
    return cost // count if count > 0 else None


def outcomes(conn: duckdb.DuckDBPyConnection, *, start: date, end: date,
             dimension: str = "developer", developer_id: str | None = None,
             team_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Per dimension value, highest cost first: requests and metered cost (µ$), the work
    columns of WORK, and the cost per pull request and per accepted edit (None when there
    were none). A key with telemetry but no metered request appears with cost 0.

    Claude Code sends delta sums by default; a cumulative series (same session, metric and
    attributes) counts its largest value once, so re-sent totals are not added up."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; expected one of "
                         f"{', '.join(DIMENSIONS)}")
    table, key, label, join = _DIMENSION_SQL[dimension]
    cost_where, cost_params = _where("day", start, end, developer_id, team_id)
    work_where, work_params = _where("ts", start, end, developer_id, team_id)
    sums = ", ".join(
        f"CAST(round(coalesce(sum(value) FILTER (WHERE name = '{name}'"
        + (f" AND json_extract_string(attrs, '$.{attr}') = '{value}'" if attr else "")
        + f"), 0)) AS BIGINT) AS {column}"
        for column, (name, attr, value) in WORK.items())
    sql = (
        f"WITH cost AS (SELECT {key} AS key, CAST(sum(requests) AS BIGINT) AS requests, "
        f"CAST(sum(cost_micros) AS BIGINT) AS cost_micros FROM {table} WHERE {cost_where} "
        "GROUP BY ALL), "
        f"series AS (SELECT {key} AS key, name, CAST(attrs AS VARCHAR) AS attrs, "
        "CASE WHEN cumulative THEN max(value) ELSE sum(value) END AS value FROM telemetry "
        f"WHERE signal = 'metric' AND name IN ({_NAMES}) AND {work_where} "
        f"GROUP BY {key}, session_id, name, CAST(attrs AS VARCHAR), cumulative), "
        f"work AS (SELECT key, {sums} FROM series GROUP BY key), "
        "g AS (SELECT key, coalesce(requests, 0) AS requests, "
        "coalesce(cost_micros, 0) AS cost_micros, "
        f"{', '.join(f'coalesce({c}, 0) AS {c}' for c in WORK)} "
        "FROM cost FULL OUTER JOIN work USING (key)) "
        f"SELECT g.key, {label} AS label, g.* EXCLUDE (key) FROM g {join} "
        "ORDER BY g.cost_micros DESC, g.key" + (" LIMIT ?" if limit is not None else ""))
    params = cost_params + work_params + ([limit] if limit is not None else [])
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description or ()]
    rows = []
    for values in cur.fetchall():
        row = dict(zip(names, values, strict=True))
        row["cost_per_pr_micros"] = _per(row["cost_micros"], row["pull_requests"])
        row["cost_per_accepted_edit_micros"] = _per(row["cost_micros"], row["edits_accepted"])
        rows.append(row)
    return rows


def reconcile(conn: duckdb.DuckDBPyConnection, *, start: date, end: date,
              developer_id: str | None = None, team_id: str | None = None,
              limit: int = 1000) -> dict[str, Any]:
    """Claude Code's own cost of each request (`api_request` events) against meterd's
    metered cost, matched by the provider's request id, over requests that started in
    [start, end).

    Returns the totals of each side (µ$), the drift (Claude Code's minus meterd's, µ$, and
    as a percentage of meterd's, None when meterd metered nothing), how many requests
    matched, how many differ, and up to `limit` requests that differ or that one side alone
    has (the missing side's cost None), largest difference first.

    meterd's side leaves out requests the provider refused (status 400 and above): they cost
    nothing, and Claude Code reports them as `api_error`, not `api_request`."""
    tel_where, tel_params = _where("ts", start, end, developer_id, team_id)
    req_where, req_params = _where("ts", start, end, developer_id, team_id)
    sql = (
        # An export Claude Code sent twice is one request.
        "WITH cc AS (SELECT request_id, min(ts) AS ts, any_value(developer_id) AS developer_id, "
        "any_value(session_id) AS session_id, max(cost_micros) AS micros FROM telemetry "
        "WHERE signal = 'log' AND name = 'claude_code.api_request' AND request_id <> '' "
        f"AND cost_micros IS NOT NULL AND {tel_where} GROUP BY request_id), "
        "m AS (SELECT upstream_request_id AS request_id, min(ts) AS ts, "
        "any_value(developer_id) AS developer_id, any_value(session_id) AS session_id, "
        "CAST(sum(cost_micros) AS BIGINT) AS micros FROM requests "
        f"WHERE upstream_request_id <> '' AND status < 400 AND {req_where} "
        "GROUP BY upstream_request_id), "
        "j AS (SELECT request_id, coalesce(m.ts, cc.ts) AS ts, "
        "coalesce(m.developer_id, cc.developer_id) AS developer_id, "
        "coalesce(m.session_id, cc.session_id) AS session_id, "
        "cc.micros AS claude_code_micros, m.micros AS metered_micros, "
        "coalesce(cc.micros, 0) - coalesce(m.micros, 0) AS difference_micros "
        "FROM cc FULL OUTER JOIN m USING (request_id)) ")
    params = tel_params + req_params
    totals = conn.execute(
        sql + "SELECT CAST(coalesce(sum(claude_code_micros), 0) AS BIGINT), "
        "CAST(coalesce(sum(metered_micros), 0) AS BIGINT), "
        "count(*) FILTER (WHERE claude_code_micros IS NOT NULL AND metered_micros IS NOT NULL), "
        "count(*) FILTER (WHERE claude_code_micros IS DISTINCT FROM metered_micros) FROM j",
        params).fetchone()
    claude_code, metered, matched, differing = totals if totals else (0, 0, 0, 0)
    cur = conn.execute(
        sql + f"SELECT {', '.join(DIFFERENCE_COLUMNS)} FROM j "
        "WHERE claude_code_micros IS DISTINCT FROM metered_micros "
        "ORDER BY abs(difference_micros) DESC, request_id LIMIT ?", [*params, limit])
    differences = [dict(zip(DIFFERENCE_COLUMNS, r, strict=True)) for r in cur.fetchall()]
    drift = int(claude_code) - int(metered)
    return {"claude_code_micros": int(claude_code), "metered_micros": int(metered),
            "drift_micros": drift,
            "drift_percent": round(drift * 100 / metered, 2) if metered else None,
            "matched": int(matched), "differing": int(differing),
            "differences": differences}
