"""Month-end forecasts (ledger.forecasts): the organization and every team, on their own page;
the overview shows the first TOP_ON_OVERVIEW and links here for the rest."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from dashboard.auth import READERS, allow
from dashboard.render import render, report
from ledger import forecasts

TOP_ON_OVERVIEW = 10


@allow(*READERS)
async def forecasts_page(request: web.Request) -> web.StreamResponse:
    rows = await report(request, forecasts.month_end, now=datetime.now(UTC))
    return await render(request, "forecasts.html", {"org": rows[0], "teams": rows[1:]})
