"""What the spend bought, on the dashboard (/bought, /bought.csv) and the admin API
(/api/v1/bought, /api/v1/bought/reconciliation): metered cost next to Claude Code's work per
developer, team or session, and Claude Code's cost of each request against meterd's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from dashboard.api_reports import RANGE, SCOPE
from dashboard.auth import READERS, allow
from dashboard.jsonio import json_response
from dashboard.params import Query, choice, query, whole
from dashboard.render import admin_state, render, report, today, url
from dashboard.reports_view import DAYS, days
from ledger import bought, reports

DIMENSION_WORDS = {"developer": "Developer", "team": "Team", "session": "Claude Code session"}
DIMENSION = choice("dimension", bought.DIMENSIONS, "developer")
ROWS_SHOWN = 100  # sessions number in the thousands a month: the CSV has them all


def _args(q: Query, start: Any, end: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "developer_id": q["developer"], "team_id": q["team"]}


@allow(*READERS)
@query(*DAYS, DIMENSION, *SCOPE)
async def bought_page(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    start, last = days(q)
    args = _args(q, start, last + timedelta(days=1))
    params = {"start": start.isoformat(), "end": last.isoformat(), "dimension": q["dimension"],
              "team": q["team"] or "", "developer": q["developer"] or ""}
    return await render(request, "bought.html", {
        "start": start, "last": last, "dimension": q["dimension"], "q": q,
        "dimensions": DIMENSION_WORDS,
        "rows": await report(request, bought.outcomes, **args, dimension=q["dimension"],
                             limit=ROWS_SHOWN),
        "check": await report(request, bought.reconcile, **args, limit=ROWS_SHOWN),
        "teams": await state.db(state.catalog.teams),
        "developers": await state.db(state.catalog.developers),
        "csv_url": url(request, "bought_csv", {k: v for k, v in params.items() if v}),
    })


@allow(*READERS)
@query(*DAYS, DIMENSION, *SCOPE)
async def bought_csv(request: web.Request, q: Query) -> web.StreamResponse:
    """The page's first table, every row, as CSV."""
    start, last = days(q)
    rows = await report(request, bought.outcomes, **_args(q, start, last + timedelta(days=1)),
                        dimension=q["dimension"])
    name = f"meterd-bought-{q['dimension']}-{start}-{last}.csv"
    return web.Response(text=reports.export_csv(rows, bought.OUTCOME_COLUMNS),
                        content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _api_range(q: Query) -> dict[str, Any]:
    start = q["start"] or today().replace(day=1)
    end = q["end"] or today() + timedelta(days=1)
    if end <= start:
        raise ValueError("end must be after start (end is exclusive)")
    return _args(q, start, end)


@allow(*READERS)
@query(*RANGE, *SCOPE, DIMENSION, choice("format", ("json", "csv"), "json"))
async def api_bought(request: web.Request, q: Query) -> web.StreamResponse:
    """Cost next to Claude Code's work per ?dimension=developer|team|session, with cost per
    pull request and per accepted edit (µ$, null when there were none); `format=csv`."""
    args = _api_range(q)
    rows = await report(request, bought.outcomes, **args, dimension=q["dimension"])
    if q["format"] == "csv":
        return web.Response(text=reports.export_csv(rows, bought.OUTCOME_COLUMNS),
                            content_type="text/csv")
    return json_response({"data": rows, "start": args["start"], "end": args["end"]})


@allow(*READERS)
@query(*RANGE, *SCOPE, whole("limit", 1000, 1, 10_000))
async def api_reconciliation(request: web.Request, q: Query) -> web.StreamResponse:
    """Claude Code's cost against meterd's by request id: totals, drift (µ$ and %), and the
    requests that differ or that one side alone has."""
    args = _api_range(q)
    found = await report(request, bought.reconcile, **args, limit=q["limit"])
    return json_response({**found, "start": args["start"], "end": args["end"]})
