"""Report queries for the dashboard, `meterd report` and exports: plain functions on a DuckDB
connection, every amount an integer (µ$ or tokens).

Spend, totals, top spenders, cache savings and forecasts read the rollups: `usage_daily` (one
row per day × developer × team × model) and, for the session and project dimensions,
`usage_sessions` and `usage_projects` (day × session or project × developer × team). They
stay small at any number of requests and complete after raw rows are purged. Only the request
log and the raw export read `requests`.

Dates are days of the organization's calendar (its `timezone`, ledger.periods); `end` is
exclusive. Weeks start on Monday (ISO), months on the 1st.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from ledger import caps, forecasts
from ledger.periods import PERIODS, day_start, local_day, period_end, start_day
from ledger.rollup import ERROR_SQL

DIMENSIONS = ("developer", "team", "model", "session", "project")
GRAINS = ("day", "week", "month")
MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cache_write_5m",
            "cache_write_1h", "cache_read", "web_search", "cost_micros")
STATUSES = ("ok", "error", "refused")  # refused: by the gateway (a cap, a limit, the key)
SPEND_COLUMNS = ("period", "key", "label", *MEASURES)  # of a spend() row
NO_SESSION = "(no session)"
NO_PROJECT = "(no project)"
# Projections divide by the time elapsed in the period; not less than this, so the first
# minutes of a day do not project absurd amounts.

_SUMS = ", ".join(f"CAST(coalesce(sum({m}), 0) AS BIGINT) AS {m}" for m in MEASURES)
# dimension → (rollup table, key column, label expression over the grouped row `g`, join)
_DIMENSION_SQL = {
    "developer": ("usage_daily", "developer_id", "coalesce(d.name, g.key)",
                  "LEFT JOIN developers d ON d.id = g.key"),
    "team": ("usage_daily", "team_id", "coalesce(t.name, g.key)",
             "LEFT JOIN teams t ON t.id = g.key"),
    "model": ("usage_daily", "model", "g.key", ""),
    "session": ("usage_sessions", "session_id",
                f"CASE WHEN g.key = '' THEN '{NO_SESSION}' ELSE g.key END", ""),
    "project": ("usage_projects", "project",
                f"CASE WHEN g.key = '' THEN '{NO_PROJECT}' ELSE g.key END", ""),
}


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _filters(start: date | None, end: date | None, developer_id: str | None,
             team_id: str | None, column: str = "day") -> tuple[str, list[Any]]:
    where, params = ["TRUE"], []
    for sql, value in ((f"{column} >= ?", start), (f"{column} < ?", end),
                       ("developer_id = ?", developer_id), ("team_id = ?", team_id)):
        if value is not None:
            where.append(sql)
            params.append(value)
    return " AND ".join(where), params


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def spend(conn: duckdb.DuckDBPyConnection, *, start: date, end: date, grain: str = "day",
          dimension: str = "team", developer_id: str | None = None,
          team_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Requests, errors, tokens per category and cost per period × dimension value, ordered by
    period, then cost (highest first). `period` is the first day of the day/week/month.

    `limit` keeps the highest-cost keys of each period only: pass one for sessions, which
    number in the tens of thousands a month in a large organization.
    """
    _check(grain, GRAINS, "grain")
    _check(dimension, DIMENSIONS, "dimension")
    table, key, label, join = _DIMENSION_SQL[dimension]
    where, params = _filters(start, end, developer_id, team_id)
    top = "g AS (SELECT * FROM a)"
    if limit is not None:
        # Only keys at or above each period's limit-th highest cost reach the (costly)
        # window; it then breaks ties by key.
        top = ("cut AS (SELECT period, list_min(max(cost_micros, ?)) AS floor FROM a "
               "GROUP BY period), g AS (SELECT a.* FROM a JOIN cut USING (period) "
               "WHERE a.cost_micros >= cut.floor QUALIFY row_number() OVER (PARTITION BY "
               "a.period ORDER BY a.cost_micros DESC, a.key) <= ?)")
        params += [max(0, limit)] * 2
    sql = (
        f"WITH a AS (SELECT CAST(date_trunc('{grain}', day) AS DATE) AS period, {key} AS key, "
        f"{_SUMS} FROM {table} WHERE {where} GROUP BY ALL), {top} "
        f"SELECT g.period, g.key, {label} AS label, "
        f"{', '.join('g.' + m for m in MEASURES)} FROM g {join} "
        "ORDER BY g.period, g.cost_micros DESC, g.key"
    )
    return _dicts(conn.execute(sql, params))


def totals(conn: duckdb.DuckDBPyConnection, *, start: date, end: date,
           developer_id: str | None = None, team_id: str | None = None) -> dict[str, int]:
    """The spend() measures summed over the range."""
    where, params = _filters(start, end, developer_id, team_id)
    rows = _dicts(conn.execute(f"SELECT {_SUMS} FROM usage_daily WHERE {where}", params))
    return {m: int(rows[0][m]) for m in MEASURES}


def top_spenders(conn: duckdb.DuckDBPyConnection, *, start: date, end: date,
                 dimension: str = "developer", limit: int = 10) -> list[dict[str, Any]]:
    """The `limit` highest-cost developers (teams, models, sessions, projects) in the range."""
    _check(dimension, DIMENSIONS, "dimension")
    table, key, label, join = _DIMENSION_SQL[dimension]
    sql = (
        f"WITH g AS (SELECT {key} AS key, CAST(sum(cost_micros) AS BIGINT) AS cost_micros, "
        f"CAST(sum(requests) AS BIGINT) AS requests FROM {table} WHERE day >= ? AND day < ? "
        "GROUP BY ALL ORDER BY cost_micros DESC, key LIMIT ?) "
        f"SELECT g.key, {label} AS label, g.cost_micros, g.requests FROM g {join} "
        "ORDER BY g.cost_micros DESC, g.key"
    )
    return _dicts(conn.execute(sql, [start, end, max(0, limit)]))


def cache_savings(conn: duckdb.DuckDBPyConnection, *, start: date, end: date,
                  developer_id: str | None = None, team_id: str | None = None) -> dict[str, int]:
    """How much of the prompt came from the cache, and the money that saved.

    `prompt_tokens` counts every input-side token (input, cache writes, cache reads);
    `hit_permille` = cache reads per thousand prompt tokens. `saved_micros` = what the cache
    reads would have cost at the input rate minus what they cost, priced per request when it
    was rolled up (see `requests.cache_saved_micros`).
    """
    where, params = _filters(start, end, developer_id, team_id)
    row = conn.execute(
        "SELECT CAST(coalesce(sum(cache_read), 0) AS BIGINT), CAST(coalesce(sum(input_tokens"
        " + cache_write_5m + cache_write_1h + cache_read), 0) AS BIGINT), "
        f"CAST(coalesce(sum(cache_saved_micros), 0) AS BIGINT) FROM usage_daily WHERE {where}",
        params).fetchone()
    cache_read, prompt, saved = (int(v) for v in row) if row else (0, 0, 0)
    return {"cache_read": cache_read, "prompt_tokens": prompt,
            "hit_permille": cache_read * 1000 // prompt if prompt else 0,
            "saved_micros": saved}


def forecast(conn: duckdb.DuckDBPyConnection, *, now: datetime,
             rates: dict[forecasts.Counter, int] | None = None) -> list[dict[str, Any]]:
    """Per budget: spent in the current period and the amount projected at its end.

    Projected as ledger.forecasts projects (spent plus the run rate over what is left, held at
    the cap); a per-member cap shows its highest-spending member and the highest projection.
    `percent` is spent as a percentage of the cap, `projected_percent` the same for the
    projection. Spend comes from the rollups, so it trails live counters by one rollup interval.
    `rates`: forecasts.run_rates at `now`, when the caller has them already.
    """
    at = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    ends = {p: period_end(p, at) for p in PERIODS}
    rates = forecasts.run_rates(conn, now=at) if rates is None else rates
    spent_by = _period_spend(conn, {p: start_day(p, at) for p in PERIODS}, local_day(at))
    budgets = _dicts(conn.execute(
        "SELECT b.id, b.scope, b.scope_id, b.period, b.amount_micros, b.mode, "
        "d.name AS dev_name, t.name AS team_name FROM budgets b "
        "LEFT JOIN developers d ON b.scope = 'developer' AND d.id = b.scope_id "
        "LEFT JOIN teams t ON b.scope IN ('team', 'team_member') AND t.id = b.scope_id "
        "ORDER BY b.scope, b.scope_id, b.period"))
    members: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for dev_id, name, team_id in conn.execute(
            "SELECT id, name, team_id FROM developers").fetchall():
        members.setdefault(team_id, []).append(dev_id)
        names[dev_id] = name
    out = []
    for b in budgets:
        period, scope, scope_id = b["period"], b["scope"], b["scope_id"]
        sums = spent_by[period]
        compared = caps.counters(scope, scope_id, members.get(scope_id, []))
        spent, top = max(((sums.get(c, 0), names.get(c[1], "")) for c in compared),
                         default=(0, ""))
        if scope == "team_member":
            label = caps.describe(scope, b["team_name"] or scope_id) + (
                f" (highest: {top})" if top else "")
        else:  # a developer's or team's budget by name alone
            label = {"developer": b["dev_name"], "team": b["team_name"]}.get(
                scope) or (caps.describe(scope, "") if scope == "org" else scope_id)
        amount = int(b["amount_micros"])
        left = int((ends[period] - at).total_seconds())
        projected = max((forecasts.project(sums.get(c, 0), rates.get(c, 0), left, amount)[0]
                         for c in compared), default=0)
        out.append({
            "budget_id": b["id"], "scope": scope, "scope_id": scope_id, "label": label,
            "period": period, "amount_micros": amount, "spent_micros": spent,
            "projected_micros": projected, "percent": _percent(spent, amount),
            "projected_percent": _percent(projected, amount), "mode": b["mode"],
            "period_end": ends[period],
        })
    return out


def _percent(value: int, amount: int) -> int:
    if amount <= 0:
        return 100 if value > 0 else 0
    return value * 100 // amount


def _period_spend(conn: duckdb.DuckDBPyConnection, days: dict[str, date],
                  today: date) -> dict[str, dict[tuple[str, str], int]]:
    """Spend so far in each current period (from its first day), per ("developer"|"team"|"org",
    id)."""
    cols = ", ".join("CAST(coalesce(sum(cost_micros) FILTER (WHERE day >= ?), 0) AS BIGINT)"
                     for _ in PERIODS)
    rows = conn.execute(
        f"SELECT developer_id, team_id, {cols} FROM usage_daily WHERE day >= ? AND day <= ? "
        "GROUP BY ALL", [*(days[p] for p in PERIODS), min(days.values()), today]).fetchall()
    out: dict[str, dict[tuple[str, str], int]] = {p: {} for p in PERIODS}
    for dev_id, team_id, *amounts in rows:
        for period, amount in zip(PERIODS, amounts, strict=True):
            sums = out[period]
            for key in (("developer", dev_id), ("team", team_id), ("org", "")):
                sums[key] = sums.get(key, 0) + int(amount)
    return out


def _utc(value: datetime) -> datetime:
    """A naive UTC timestamp, as `requests.ts` holds them."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def requests_page(conn: duckdb.DuckDBPyConnection, *, start: datetime | None = None,
                  end: datetime | None = None, developer_id: str | None = None,
                  team_id: str | None = None, model: str | None = None,
                  status: str | None = None, session_id: str | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """One page of the request log, newest first, and how many requests match in total.
    `status` is "ok", "error" (failed after the gateway let it through), "refused" (by the
    gateway) or None (all); naive times are UTC, as stored (dashboard.params turns what a
    person typed into UTC instants)."""
    where, params = request_where(start=start, end=end, developer_id=developer_id,
                                  team_id=team_id, model=model, status=status,
                                  session_id=session_id)
    rows = _dicts(conn.execute(
        f"SELECT * FROM requests WHERE {where} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
        [*params, max(0, limit), max(0, offset)]))
    row = conn.execute(f"SELECT count(*) FROM requests WHERE {where}", params).fetchone()
    return rows, int(row[0]) if row else 0


def request_where(*, start: datetime | None = None, end: datetime | None = None,
                  developer_id: str | None = None, team_id: str | None = None,
                  model: str | None = None, status: str | None = None,
                  session_id: str | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause (over `requests`) and parameters of the request log's filters, shared
    by its page and its CSV export so the export holds what the screen shows."""
    where, params = _filters(_utc(start) if start else None, _utc(end) if end else None,
                             developer_id, team_id, column="ts")
    clauses = [where]
    for sql, value in (("model = ?", model), ("session_id = ?", session_id)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    if status is not None:
        _check(status, STATUSES, "status")
        clauses.append({"error": f"{ERROR_SQL} AND refusal = ''", "refused": "refusal <> ''",
                        "ok": f"NOT {ERROR_SQL}"}[status])
    return " AND ".join(clauses), params


def export_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] = ()) -> str:
    """CSV of report rows (e.g. a spend() result): a header, then one line per row. Amounts
    stay exact: integer µ$, plus a `cost_usd` column with all six decimals. With no rows,
    the header of `columns` alone (or nothing).

    Every CSV meterd hands out is made here: the dashboard's download, the admin API's
    `format=csv` and `meterd report --csv` (which prints the API's). Text that a developer
    chose (a model name, a session id) must not become a spreadsheet formula: see safe_cell.
    """
    names = list(rows[0]) if rows else list(columns)
    if not names:
        return ""
    out = io.StringIO()
    extra = "cost_micros" in names and "cost_usd" not in names
    # RFC 4180: lines end in CRLF, and a cell holding the separator, a quote, a CR or an LF is
    # quoted, so no value can start a cell or a line of its own. (The csv module quotes only
    # the characters of its line terminator: with "\n" alone, a bare CR went out unquoted and
    # a spreadsheet started a new row, and a formula, there.)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*names, "cost_usd"] if extra else names)
    for row in rows:
        values = [_cell(row.get(n)) for n in names]
        if extra:
            values.append(Decimal(int(row["cost_micros"])).scaleb(-6))
        writer.writerow(values)
    return out.getvalue()


# What makes a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading
    single quote (OWASP's advice; spreadsheets hide the quote).

    Only text is escaped. Numbers are written by meterd's own arithmetic (int µ$, tokens,
    Decimal dollars) and cannot hold a formula; a minus sign there is a negative number, and
    escaping it would turn the column into text a spreadsheet no longer sums.
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _cell(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return safe_cell(value)
    return "" if value is None else value


def export_parquet(conn: duckdb.DuckDBPyConnection, *, start: date, end: date,
                   path: str | Path) -> int:
    """Write the raw request rows of the days [start, end) (the organization's, as the rollups
    cut them) to a Parquet file, oldest first (for archiving before the retention purge);
    returns how many rows were written."""
    target = str(path).replace("'", "''")
    row = conn.execute(
        "COPY (SELECT * FROM requests WHERE ts >= ? AND ts < ? ORDER BY ts, id) "
        f"TO '{target}' (FORMAT parquet, COMPRESSION zstd)",
        [_utc(day_start(start)), _utc(day_start(end))]).fetchone()
    return int(row[0]) if row else 0
