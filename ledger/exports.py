"""CSV exports, streamed: a pivot's cells with names, emails and teams, the chargeback
statement, and the filtered request log. Each yields text in chunks of up to 1,000 lines,
reading DuckDB in batches, so a year of a large organization never sits in memory at once.
Cells pass through ledger.reports' formula escaping (safe_cell).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb

from ledger.pivot import keyed, labels
from ledger.reports import DIMENSIONS, GRAINS, _cell, _check, request_where

BATCH = 5000


def _usd(micros: int) -> Decimal:
    return Decimal(int(micros)).scaleb(-6)


def _lines(rows: Iterator[list[Any]]) -> Iterator[str]:
    """CSV text (RFC 4180, CRLF) of rows, formula-escaped, in chunks of up to 1,000 lines."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for n, row in enumerate(rows, start=1):
        writer.writerow([_cell(v) for v in row])
        if n % 1000 == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue()


def pivot_csv(conn: duckdb.DuckDBPyConnection, *, start: date, end: date, grain: str = "day",
              dimension: str = "team", developer_id: str | None = None,
              team_id: str | None = None) -> Iterator[str]:
    """Every period × key of the pivot as CSV lines with the key's name, email and team,
    read from DuckDB in batches (so a year of sessions never sits in memory at once)."""
    _check(dimension, DIMENSIONS, "dimension")
    _check(grain, GRAINS, "grain")
    inner, params = keyed(dimension, start, end, grain, developer_id, team_id)
    join, name, email, team = labels(dimension)
    cur = conn.execute(
        f"WITH g AS ({inner}) SELECT g.period, g.key, {name}, {email}, {team}, g.requests, "
        f"g.cost_micros FROM g {join} ORDER BY g.period, g.cost_micros DESC, g.key", params)

    def rows() -> Iterator[list[Any]]:
        yield ["period", dimension, "name", "email", "team", "requests", "cost_micros",
               "cost_usd"]
        while batch := cur.fetchmany(BATCH):
            for period, key, label, mail, team_name, requests, cost in batch:
                yield [period, key, label, mail, team_name, requests, cost, _usd(cost)]

    return _lines(rows())


def statement_csv(found: dict[str, Any]) -> Iterator[str]:
    """A statement() as CSV: one line per team × model, a subtotal per team, a grand total."""
    def rows() -> Iterator[list[Any]]:
        yield ["month", "team", "model", "requests", "prompt_tokens", "output_tokens",
               "cost_micros", "cost_usd"]
        month = found["month"]
        for t in found["teams"]:
            for m in t["models"]:
                yield [month, t["team"], m["model"], m["requests"], m["prompt_tokens"],
                       m["output_tokens"], m["cost_micros"], _usd(m["cost_micros"])]
            yield [month, t["team"], "(team total)", t["requests"], t["prompt_tokens"],
                   t["output_tokens"], t["cost_micros"], _usd(t["cost_micros"])]
        yield [month, "(all teams)", "", found["requests"], "", "", found["cost_micros"],
               _usd(found["cost_micros"])]

    return _lines(rows())


REQUEST_COLUMNS = ("ts", "id", "developer_id", "developer", "email", "team_id", "team",
                   "model", "status", "error_type", "input_tokens", "output_tokens",
                   "cache_write_5m", "cache_write_1h", "cache_read", "web_search",
                   "cost_micros", "session_id", "project", "latency_ms")


def requests_csv(conn: duckdb.DuckDBPyConnection, *, start: datetime | None = None,
                 end: datetime | None = None, developer_id: str | None = None,
                 team_id: str | None = None, model: str | None = None,
                 status: str | None = None, session_id: str | None = None) -> Iterator[str]:
    """The request log's rows that match its filters (as on screen), newest first, with the
    developer's name and email and the team's name."""
    where, params = request_where(start=start, end=end, developer_id=developer_id,
                                  team_id=team_id, model=model, status=status,
                                  session_id=session_id)
    cols = ", ".join(
        {"developer": "coalesce(d.name, '')", "email": "coalesce(d.email, '')",
         "team": "coalesce(t.name, '')"}.get(c, f"r.{c}") for c in REQUEST_COLUMNS)
    cur = conn.execute(
        f"SELECT {cols} FROM (SELECT * FROM requests WHERE {where}) r "
        "LEFT JOIN developers d ON d.id = r.developer_id LEFT JOIN teams t ON t.id = r.team_id "
        "ORDER BY r.ts DESC, r.id DESC", params)
    cost = REQUEST_COLUMNS.index("cost_micros")

    def rows() -> Iterator[list[Any]]:
        yield [*REQUEST_COLUMNS, "cost_usd"]
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                yield [*row, _usd(row[cost])]

    return _lines(rows())
