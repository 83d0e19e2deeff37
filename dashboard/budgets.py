"""The caps that apply to one developer, with live spend; the organization's budget form and
removing a budget."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard import live
from dashboard.auth import ADMINS, TEAM_ADMINS, allow, require_team
from dashboard.cap_forms import save_budget
from dashboard.render import admin_state, change, identity, redirect_back, report, url
from ledger import caps, forecasts, grants
from ledger.catalog import NotFound
from ledger.model_caps import ModelCaps
from ledger.periods import PERIODS, period_end
from ledger.settlement import SPENT


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
    running = await state.db(grants.active, state.catalog, now)
    rates = await report(request, forecasts.run_rates, now=now)
    out = []
    for b in rows:
        spent = found.get((*counters[b["id"]], b["period"]), 0)
        name = dev["name"] if b["scope"] == "developer" else dev["team_name"] or team_id
        label = caps.describe(b["scope"], name, capital=True)
        # The cap as admission applies it: its amount plus the grants running now.
        granted, until = grants.running(running, b["scope"], b["scope_id"], b["period"])
        out.append({**b, "label": label, "spent_micros": spent,
                    "amount_micros": b["amount_micros"] + granted, "granted_micros": granted,
                    "base_micros": b["amount_micros"],  # what the edit form fills in
                    "models": [],
                    "grant_until": until and until.replace(tzinfo=UTC),
                    "projected_micros": live.project(
                        spent, counters[b["id"]], b["period"], b["amount_micros"] + granted,
                        rates, now),
                    "resets": period_end(b["period"], now)})
    out += await _model_caps(request, dev, now, rates, running)
    out.sort(key=lambda r: (PERIODS.index(r["period"]), r["label"]))
    return out


async def _model_caps(request: web.Request, dev: dict[str, Any], now: datetime,
                      rates: dict[forecasts.Counter, int],
                      running: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-model caps that apply to a developer, with their own counters' spend and the
    scope's running grants (as admission applies them). There is no run rate per model: one
    is projected at its scope's whole rate, held at the cap."""
    state = admin_state(request)
    rows = [b for b in await state.db(ModelCaps(state.catalog).all)
            if caps.applies(b["scope"], b["scope_id"], dev["id"], dev["team_id"])]
    if not rows:
        return []
    async with state.redis.pipeline(transaction=False) as pipe:
        for b in rows:
            pipe.hget(state.keyspace.model_counter(
                *caps.counter(b["scope"], b["scope_id"], dev["id"]), b["period"], now,
                tuple(b["models"])), SPENT)
        values = await pipe.execute()
    out = []
    for b, raw in zip(rows, values, strict=True):
        name = dev["name"] if b["scope"] == "developer" else dev["team_name"] or dev["team_id"]
        spent = int(raw or 0)
        granted, until = grants.running(running, b["scope"], b["scope_id"], b["period"])
        out.append({**b, "label": f"{caps.describe(b['scope'], name, capital=True)} on "
                                  f"{', '.join(b['models'])}",
                    "spent_micros": spent, "amount_micros": b["amount_micros"] + granted,
                    "granted_micros": granted, "base_micros": b["amount_micros"],
                    "grant_until": until and until.replace(tzinfo=UTC),
                    "projected_micros": live.project(
                        spent, caps.counter(b["scope"], b["scope_id"], dev["id"]),
                        b["period"], b["amount_micros"] + granted, rates, now),
                    "resets": period_end(b["period"], now)})
    return out


@allow(*TEAM_ADMINS)
async def delete_budget(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    budget_id = request.match_info["budget_id"]
    if not identity(request).can_change:  # a team lead: only its members' caps
        found = next((b for b in await state.db(state.catalog.budgets)
                      if b["id"] == budget_id), None)
        if found is None:
            raise NotFound(f"no budget {budget_id!r}")
        team_id = {"team_member": found["scope_id"]}.get(found["scope"], "")
        if found["scope"] == "developer":
            developers = await state.db(state.catalog.developers)
            team_id = next((d["team_id"] for d in developers if d["id"] == found["scope_id"]),
                           "")
        require_team(request, team_id, change=True)
    await change(request, state.catalog.delete_budget, budget_id)
    return redirect_back(request, "Budget removed.", "ok")


@allow(*ADMINS)
async def set_org_budget(request: web.Request) -> web.StreamResponse:
    return await save_budget(request, "org", "", url(request, "teams"),
                             "Organization budget saved.")
