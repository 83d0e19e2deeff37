"""Usage reports on the admin JSON API (all amounts integer µ$ or tokens; dates are UTC days,
`end` exclusive; `developer` and `team` filter by id; `format=csv` on /usage returns CSV)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from dashboard.activity import request_filters
from dashboard.auth import READERS, allow
from dashboard.jsonio import json_response
from dashboard.render import parse_day, report, today
from ledger import reports


def _range(query: Any) -> tuple[date, date]:
    start = parse_day(query.get("start"), today().replace(day=1))
    end = parse_day(query.get("end"), today() + timedelta(days=1))
    if end <= start:
        raise ValueError("end must be after start (end is exclusive)")
    return start, end


def _scope(query: Any) -> dict[str, str | None]:
    return {"developer_id": query.get("developer") or None,
            "team_id": query.get("team") or None}


@allow(*READERS)
async def usage(request: web.Request) -> web.StreamResponse:
    """Spend and tokens per period × dimension: ?grain=day|week|month&dimension=..."""
    q = request.query
    start, end = _range(q)
    rows = await report(request, reports.spend, start=start, end=end,
                        grain=q.get("grain", "day"), dimension=q.get("dimension", "team"),
                        **_scope(q))
    if q.get("format") == "csv":
        return web.Response(text=reports.export_csv(rows, reports.SPEND_COLUMNS),
                            content_type="text/csv")
    return json_response({"data": rows, "start": start, "end": end})


@allow(*READERS)
async def usage_totals(request: web.Request) -> web.StreamResponse:
    start, end = _range(request.query)
    totals = await report(request, reports.totals, start=start, end=end, **_scope(request.query))
    return json_response({**totals, "start": start, "end": end})


@allow(*READERS)
async def top(request: web.Request) -> web.StreamResponse:
    q = request.query
    start, end = _range(q)
    rows = await report(request, reports.top_spenders, start=start, end=end,
                        dimension=q.get("dimension", "developer"),
                        limit=min(int(q.get("limit", "10")), 1000))
    return json_response({"data": rows, "start": start, "end": end})


@allow(*READERS)
async def cache(request: web.Request) -> web.StreamResponse:
    start, end = _range(request.query)
    found = await report(request, reports.cache_savings, start=start, end=end,
                         **_scope(request.query))
    return json_response({**found, "start": start, "end": end})


@allow(*READERS)
async def forecast(request: web.Request) -> web.StreamResponse:
    rows = await report(request, reports.forecast, now=datetime.now(UTC))
    return json_response({"data": rows})


@allow(*READERS)
async def requests_log(request: web.Request) -> web.StreamResponse:
    """The request log, newest first: the filters of the Requests page, plus limit/offset."""
    q = request.query
    limit, offset = min(int(q.get("limit", "100")), 1000), max(int(q.get("offset", "0")), 0)
    rows, total = await report(request, reports.requests_page, limit=limit, offset=offset,
                               **request_filters(q))
    return json_response({"data": rows, "total": total, "limit": limit, "offset": offset})
