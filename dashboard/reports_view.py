"""Reports: spend and tokens per period × dimension, on screen and as CSV or Parquet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from dashboard import charts
from dashboard.auth import READERS, TEAM_READERS, allow, require_team
from dashboard.params import Query, choice, day, query, text
from dashboard.render import admin_state, identity, render, report, today, url
from ledger import reports

GRAIN_WORDS = {"day": "Day", "week": "Week", "month": "Month"}
DIMENSION_WORDS = {"team": "Team", "developer": "Developer", "model": "Model",
                   "session": "Claude Code session", "project": "Project"}
MAX_DAYS = 3 * 366
DAYS = (day("start"), day("end"))
REPORT = (*DAYS, choice("grain", reports.GRAINS, "day"),
          choice("dimension", reports.DIMENSIONS, "team"), text("team"), text("developer"))


def days(q: Query) -> tuple[date, date]:
    """The first and the last day (both included) of a report or export: this month so far
    unless the query says otherwise."""
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

    @property
    def end(self) -> date:
        return self.last + timedelta(days=1)

    @classmethod
    def from_query(cls, q: Query) -> ReportQuery:
        """From the REPORT parameters."""
        start, last = days(q)
        return cls(start, last, q["grain"], q["dimension"], q["team"], q["developer"])

    def args(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "grain": self.grain,
                "dimension": self.dimension, "team_id": self.team_id,
                "developer_id": self.developer_id}

    def params(self) -> dict[str, str]:
        out = {"start": self.start.isoformat(), "end": self.last.isoformat(),
               "grain": self.grain, "dimension": self.dimension,
               "team": self.team_id or "", "developer": self.developer_id or ""}
        return {k: v for k, v in out.items() if v}

    def filename(self, ext: str) -> str:
        return f"meterd-{self.dimension}-{self.grain}-{self.start}-{self.last}.{ext}"


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
    # Sessions number in the tens of thousands: show the top ones per period on screen (the
    # CSV has them all), and take the totals from the rollup, not from the rows shown.
    limit = SESSIONS_SHOWN if q.dimension == "session" else None
    rows = await report(request, reports.spend, **q.args(), limit=limit)
    totals = await report(request, reports.totals, start=q.start, end=q.end,
                          developer_id=q.developer_id, team_id=q.team_id)
    per_period: dict[date, int] = {}
    for r in rows:
        per_period[r["period"]] = per_period.get(r["period"], 0) + int(r["cost_micros"])
    savings = await report(request, reports.cache_savings, start=q.start, end=q.end,
                           developer_id=q.developer_id, team_id=q.team_id)
    return await render(request, "reports.html", {
        "q": q, "rows": rows, "totals": totals, "savings": savings,
        "chart": charts.daily_bars(sorted(per_period.items()),
                                   f"Spend per {q.grain}") if per_period else None,
        "grains": GRAIN_WORDS, "dimensions": DIMENSION_WORDS,
        "teams": teams, "developers": developers,
        "csv_url": url(request, "reports_csv", q.params()),
        "parquet_url": url(request, "reports_parquet", {
            "start": q.start.isoformat(), "end": q.last.isoformat()}),
    })


@allow(*TEAM_READERS)
@query(*REPORT)
async def reports_csv(request: web.Request, params: Query) -> web.StreamResponse:
    q = scoped(request, params)
    rows = await report(request, reports.spend, **q.args())
    body = reports.export_csv(rows, reports.SPEND_COLUMNS)
    return web.Response(text=body, content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{q.filename("csv")}"'})


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
