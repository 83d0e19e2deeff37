"""Usage reports on the admin JSON API (all amounts integer µ$ or tokens; dates are days of the
organization's calendar (its `timezone`), `end` exclusive; `developer` and `team` filter by
id; `format=csv` on /usage returns CSV)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from aiohttp import web

from dashboard.activity import REQUEST_FILTERS, request_filters
from dashboard.auth import READERS, allow
from dashboard.jsonio import json_response
from dashboard.params import MAX_OFFSET, Query, choice, day, query, text, whole
from dashboard.render import report, today
from dashboard.reports_view import send_parquet
from ledger import reports

RANGE = (day("start"), day("end"))
SCOPE = (text("team"), text("developer"))


def _range(q: Query) -> tuple[date, date]:
    start = q["start"] or today().replace(day=1)
    end = q["end"] or today() + timedelta(days=1)
    if end <= start:
        raise ValueError("end must be after start (end is exclusive)")
    return start, end


def _scope(q: Query) -> dict[str, str | None]:
    return {"developer_id": q["developer"], "team_id": q["team"]}


@allow(*READERS)
@query(*RANGE, *SCOPE, choice("grain", reports.GRAINS, "day"),
       choice("dimension", reports.DIMENSIONS, "team"), choice("format", ("json", "csv"), "json"))
async def usage(request: web.Request, q: Query) -> web.StreamResponse:
    """Spend and tokens per period × dimension: ?grain=day|week|month&dimension=..."""
    start, end = _range(q)
    rows = await report(request, reports.spend, start=start, end=end, grain=q["grain"],
                        dimension=q["dimension"], **_scope(q))
    if q["format"] == "csv":
        return web.Response(text=reports.export_csv(rows, reports.SPEND_COLUMNS),
                            content_type="text/csv")
    return json_response({"data": rows, "start": start, "end": end})


@allow(*READERS)
@query(*RANGE, *SCOPE)
async def usage_totals(request: web.Request, q: Query) -> web.StreamResponse:
    start, end = _range(q)
    totals = await report(request, reports.totals, start=start, end=end, **_scope(q))
    return json_response({**totals, "start": start, "end": end})


@allow(*READERS)
@query(*RANGE, choice("dimension", reports.DIMENSIONS, "developer"),
       whole("limit", 10, 1, 1000))
async def top(request: web.Request, q: Query) -> web.StreamResponse:
    start, end = _range(q)
    rows = await report(request, reports.top_spenders, start=start, end=end,
                        dimension=q["dimension"], limit=q["limit"])
    return json_response({"data": rows, "start": start, "end": end})


@allow(*READERS)
@query(*RANGE, *SCOPE)
async def cache(request: web.Request, q: Query) -> web.StreamResponse:
    start, end = _range(q)
    found = await report(request, reports.cache_savings, start=start, end=end, **_scope(q))
    return json_response({**found, "start": start, "end": end})


@allow(*READERS)
async def forecast(request: web.Request) -> web.StreamResponse:
    rows = await report(request, reports.forecast, now=datetime.now(UTC))
    return json_response({"data": rows})


@allow(*READERS)
@query(*RANGE)
async def requests_parquet(request: web.Request, q: Query) -> web.StreamResponse:
    """The raw requests of [start, end) as Parquet: `meterd export`, for archiving."""
    start, end = _range(q)
    return await send_parquet(request, start, end)


@allow(*READERS)
@query(*REQUEST_FILTERS, whole("limit", 100, 1, 1000), whole("offset", 0, 0, MAX_OFFSET))
async def requests_log(request: web.Request, q: Query) -> web.StreamResponse:
    """The request log, newest first: the filters of the Requests page, plus limit/offset."""
    rows, total = await report(request, reports.requests_page, limit=q["limit"],
                               offset=q["offset"], **request_filters(q))
    return json_response({"data": rows, "total": total, "limit": q["limit"],
                          "offset": q["offset"]})
