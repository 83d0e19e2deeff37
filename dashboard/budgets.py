"""The caps that apply to one developer, with live spend; the organization's budget form and
removing a budget."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from dashboard import live
from dashboard.auth import ADMINS, allow
from dashboard.cap_forms import save_budget
from dashboard.render import admin_state, change, redirect_back, url
from ledger import caps
from ledger.periods import PERIODS, period_end


async def caps_for_developer(request: web.Request, dev: dict[str, Any],
                             now: datetime) -> list[dict[str, Any]]:
    """Every cap that applies to a developer, with what counts against it right now: their
    own spend for developer and per-member caps, the team's for the pool, the org's."""
    state = admin_state(request)
    developer_id, team_id = dev["id"], dev["team_id"]
    rows = [b for b in await state.db(state.catalog.budgets)
            if caps.applies(b["scope"], b["scope_id"], developer_id, team_id)]
    counters = {b["id"]: caps.counter(b["scope"], b["scope_id"], developer_id) for b in rows}
    found = await live.spent(state.redis, state.keyspace,
                             [(*counters[b["id"]], b["period"]) for b in rows], now) or {}
    out = []
    for b in rows:
        spent = found.get((*counters[b["id"]], b["period"]), 0)
        name = dev["name"] if b["scope"] == "developer" else dev["team_name"] or team_id
        label = caps.describe(b["scope"], name, capital=True)
        out.append({**b, "label": label, "spent_micros": spent,
                    "projected_micros": live.project(spent, b["period"], now),
                    "resets": period_end(b["period"], now)})
    out.sort(key=lambda r: (PERIODS.index(r["period"]), r["label"]))
    return out


@allow(*ADMINS)
async def delete_budget(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    await change(request, state.catalog.delete_budget, request.match_info["budget_id"])
    return redirect_back(request, "Budget removed.", "ok")


@allow(*ADMINS)
async def set_org_budget(request: web.Request) -> web.StreamResponse:
    return await save_budget(request, "org", "", url(request, "teams"),
                             "Organization budget saved.")
