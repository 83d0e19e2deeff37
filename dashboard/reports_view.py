"""Reports: spend and tokens per period × dimension, on screen and as CSV or Parquet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

from dashboard import charts
from dashboard.activity import REQUEST_FILTERS, scoped_filters
from dashboard.auth import READERS, TEAM_READERS, allow, require_team
from dashboard.params import MAX_OFFSET, Query, choice, day, query, text, whole
from dashboard.render import admin_state, identity, render, report, today, url
from ledger import exports, pivot, reports

GRAIN_WORDS = {"day": "Day", "week": "Week", "month": "Month"}
DIMENSION_WORDS = {"team": "Team", "developer": "Developer", "model": "Model",
                   "session": "Claude Code session", "project": "Project"}
MAX_DAYS = 3 * 366
DAYS = (day("start"), day("end"))
PRESETS = {"7d": "Last 7 days", "last-month": "Last month", "qtd": "Quarter to date"}
TOP = 20  # rows of a pivot page; the rest is one "others" row
REPORT = (*DAYS, choice("grain", reports.GRAINS, "day"),
          choice("dimension", reports.DIMENSIONS, "team"), text("team"), text("developer"),
          choice("preset", tuple(PRESETS)), whole("offset", 0, 0, MAX_OFFSET))


def preset_days(preset: str, on: date) -> tuple[date, date]:
    """The first and last day (both included) of a preset range, as of the day `on`."""
    if preset == "7d":
        return on - timedelta(days=6), on
    if preset == "last-month":
        last = on.replace(day=1) - timedelta(days=1)
        return last.replace(day=1), last
    return on.replace(month=(on.month - 1) // 3 * 3 + 1, day=1), on  # quarter to date


def days(q: Query) -> tuple[date, date]:
    """The first and the last day (both included) of a report or export: this month so far
    unless the query says otherwise."""
    if q.get("preset"):
        return preset_days(q["preset"], today())
    start, last = q["start"] or today().replace(day=1), q["end"] or today()
    if last < start:
        raise ValueError("the report ends before it starts")
    if (last - start).days > MAX_DAYS:
        raise ValueError(f"a report covers at most {MAX_DAYS} days")
    return start, last


@dataclass(frozen=True)
class ReportQuery:
    start: date
    last: date  # inclusive, as people say "to the 30th"
    grain: str
    dimension: str
    team_id: str | None
    developer_id: str | None
    preset: str | None = None
    offset: int = 0

    @property
    def end(self) -> date:
        return self.last + timedelta(days=1)

    @classmethod
    def from_query(cls, q: Query) -> ReportQuery:
        """From the REPORT parameters."""
        start, last = days(q)
        return cls(start, last, q["grain"], q["dimension"], q["team"], q["developer"],
                   q.get("preset"), q.get("offset") or 0)

    def args(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "grain": self.grain,
                "dimension": self.dimension, "team_id": self.team_id,
                "developer_id": self.developer_id}

    def params(self) -> dict[str, str]:
        out = {"start": self.start.isoformat(), "end": self.last.isoformat(),
               "grain": self.grain, "dimension": self.dimension,
               "team": self.team_id or "", "developer": self.developer_id or "",
               "preset": self.preset or ""}
        return {k: v for k, v in out.items() if v}

    def filename(self, ext: str) -> str:
        """Named after the view: what per what, the filters, the days."""
        scope = "".join(f"-{word}-{_safe(value)}" for word, value in (
            ("team", self.team_id), ("developer", self.developer_id)) if value)
        return (f"meterd-spend-by-{self.dimension}-per-{self.grain}{scope}"
                f"-{self.start}-to-{self.last}.{ext}")


def _safe(text: str) -> str:
    """An id as a piece of a file name (no quotes, slashes or spaces reach the header)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60]


SESSIONS_SHOWN = 100


def scoped(request: web.Request, params: Query) -> ReportQuery:
    """The report asked for; a team lead's is always of its own team."""
    q = ReportQuery.from_query(params)
    who = identity(request)
    if who.role != "team_lead":
        return q
    require_team(request, q.team_id or who.team_id)
    return replace(q, team_id=who.team_id)


@allow(*TEAM_READERS)
@query(*REPORT)
async def reports_page(request: web.Request, params: Query) -> web.StreamResponse:
    state = admin_state(request)
    q = scoped(request, params)
    teams = await state.db(state.catalog.teams)
    developers = await state.db(state.catalog.developers)
    if identity(request).role == "team_lead":  # the filters offer its own team only
        teams = [t for t in teams if t["id"] == q.team_id]
        developers = [d for d in developers if d["team_id"] == q.team_id]
    # The pivot keeps its size at any number of developers or sessions: TOP rows a page and
    # one "others" row; the CSV has every key.
    found = await report(request, pivot.pivot, **q.args(), top=TOP, offset=q.offset)
    totals = await report(request, reports.totals, start=q.start, end=q.end,
                          developer_id=q.developer_id, team_id=q.team_id)
    savings = await report(request, reports.cache_savings, start=q.start, end=q.end,
                           developer_id=q.developer_id, team_id=q.team_id)
    series = [(r["label"], r["cells"]) for r in found["rows"][:charts.SERIES_CLASSES]]
    rest = [r["cells"] for r in found["rows"][charts.SERIES_CLASSES:]]
    if found["others"]:
        rest.append(found["others"]["cells"])
    if rest:
        series.append((pivot.OTHERS, [sum(c) for c in zip(*rest, strict=True)]))
    legend = [(label, "s-others" if label == pivot.OTHERS else f"s{i}")
              for i, (label, _) in enumerate(series)]
    base = q.params()
    return await render(request, "reports.html", {
        "q": q, "pivot": found, "totals": totals, "savings": savings, "legend": legend,
        "chart": charts.stacked_bars(found["periods"], series, [
            requests_link(request, q, p) for p in found["periods"]],
            f"Spend per {q.grain} by {DIMENSION_WORDS[q.dimension].lower()}")
        if found["rows"] else None,
        "grains": GRAIN_WORDS, "dimensions": DIMENSION_WORDS, "presets": PRESETS,
        "preset_urls": {k: url(request, "reports", {**base, "preset": k})
                        for k in PRESETS},
        "teams": teams, "developers": developers,
        "prev_url": url(request, "reports", {**base, "offset": str(max(0, q.offset - TOP))})
        if q.offset else None,
        "next_url": url(request, "reports", {**base, "offset": str(q.offset + TOP)})
        if q.offset + TOP < found["keys"] else None,
        "csv_url": url(request, "reports_csv", base),
        "statement_url": url(request, "statement",
                             {"month": q.start.replace(day=1).isoformat()}),
        "parquet_url": url(request, "reports_parquet", {
            "start": q.start.isoformat(), "end": q.last.isoformat()}),
    })


def requests_link(request: web.Request, q: ReportQuery, period: date) -> str:
    """The request log of one period of the chart (a day: that day's requests), with the
    report's team and developer, and within the report's days."""
    after = {"day": period + timedelta(days=1), "week": period + timedelta(days=7)}.get(
        q.grain) or (period.replace(day=28) + timedelta(days=4)).replace(day=1)
    first, end = max(period, q.start), min(after, q.end)
    filters = {"start": first.isoformat(), "end": end.isoformat(),
               "team": q.team_id or "", "developer": q.developer_id or ""}
    return str(url(request, "requests", {k: v for k, v in filters.items() if v}))


@allow(*TEAM_READERS)
@query(*REPORT)
async def reports_csv(request: web.Request, params: Query) -> web.StreamResponse:
    """Every period × key of the report with names, emails and teams, streamed."""
    q = scoped(request, params)
    return await stream_csv(request, q.filename("csv"), exports.pivot_csv, **q.args())


async def stream_csv(request: web.Request, filename: str,
                     fn: Callable[..., Iterator[str]], **kwargs: Any) -> web.StreamResponse:
    """Write the CSV chunks `fn` yields as they come. The export reads its own cursor (a
    connection of its own on the same database), so the dashboard's other queries may run
    on the DuckDB thread between two chunks without disturbing it."""
    state = admin_state(request)

    def start() -> tuple[duckdb.DuckDBPyConnection, Iterator[str]]:
        with state.catalog.lock:
            cur = state.catalog.conn.cursor()
        return cur, fn(cur, **kwargs)

    cur, chunks = await state.db(start)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{filename}"'})
    try:
        await response.prepare(request)
        while (chunk := await state.db(next, chunks, None)) is not None:
            await response.write(chunk.encode())
        await response.write_eof()
    finally:
        await state.db(cur.close)
    return response


@allow(*TEAM_READERS)
@query(*REQUEST_FILTERS)
async def requests_csv(request: web.Request, q: Query) -> web.StreamResponse:
    """The request log's rows matching its filters (as on screen), with names and teams."""
    shown = [f"{k}-{_safe(str(v))}" for k, v in q.items() if v not in (None, "")]
    name = "-".join(["meterd-requests", *shown])[:180]
    return await stream_csv(request, f"{name}.csv", exports.requests_csv,
                            **scoped_filters(request, q))


STATEMENT = (day("month"),)


def statement_month(q: Query) -> date:
    return (q["month"] or today().replace(day=1)).replace(day=1)


@allow(*READERS)
@query(*STATEMENT)
async def statement_page(request: web.Request, q: Query) -> web.StreamResponse:
    """The chargeback statement of a month: team × model with subtotals and a total."""
    month = statement_month(q)
    found = await report(request, pivot.statement, month=month)
    previous = (month - timedelta(days=1)).replace(day=1)
    return await render(request, "statement.html", {
        "s": found, "csv_url": url(request, "statement_csv", {"month": month.isoformat()}),
        "prev_url": url(request, "statement", {"month": previous.isoformat()}),
        "next_url": url(request, "statement", {"month": found["end"].isoformat()}),
    })


@allow(*READERS)
@query(*STATEMENT)
async def statement_csv(request: web.Request, q: Query) -> web.StreamResponse:
    month = statement_month(q)
    found = await report(request, pivot.statement, month=month)
    return await stream_csv_of(request, f"meterd-statement-{month:%Y-%m}.csv",
                               exports.statement_csv(found))


async def stream_csv_of(request: web.Request, filename: str,
                        chunks: Iterator[str]) -> web.StreamResponse:
    """Write CSV chunks made in memory (a statement is one line per team × model)."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{filename}"'})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk.encode())
    await response.write_eof()
    return response


@allow(*READERS)
@query(*DAYS)
async def reports_parquet(request: web.Request, params: Query) -> web.StreamResponse:
    """Every raw request from the first to the last day, both included, as Parquet."""
    start, last = days(params)
    return await send_parquet(request, start, last + timedelta(days=1))


async def send_parquet(request: web.Request, start: date, end: date) -> web.StreamResponse:
    """Every raw request of [start, end) as Parquet (zstd), streamed from a temporary file."""
    loop = asyncio.get_running_loop()
    fd, name = tempfile.mkstemp(prefix="meterd-export-", suffix=".parquet")
    os.close(fd)
    path = Path(name)
    last = end - timedelta(days=1)
    try:
        await report(request, reports.export_parquet, start=start, end=end, path=path)
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.apache.parquet",
            "Content-Disposition":
                f'attachment; filename="meterd-requests-{start}-{last}.parquet"',
            "Content-Length": str(path.stat().st_size), "Cache-Control": "no-store"})
        await response.prepare(request)
        with path.open("rb") as f:
            while chunk := await loop.run_in_executor(None, f.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
