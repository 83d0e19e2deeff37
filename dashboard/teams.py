"""Teams: the list, one team's members and pool, and the forms that set its budgets, limits
and models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from yarl import URL

from dashboard import blocked, charts, live
from dashboard.auth import ADMINS, READERS, TEAM_ADMINS, TEAM_READERS, allow, require_team
from dashboard.cap_forms import LIMIT_WORDS, limits_of, save_budget, save_limits
from dashboard.model_caps_view import limits_context
from dashboard.render import (
    admin_state,
    change,
    field,
    fill_days,
    form,
    identity,
    last_days,
    render,
    report,
    see_other,
    today,
    url,
)
from ledger import caps, forecasts, grants, reports
from ledger.catalog import NotFound
from ledger.models_allowed import ORG, AllowedModels, split
from ledger.periods import PERIODS, period_end


async def find_team(request: web.Request, team_id: str) -> dict[str, Any]:
    state = admin_state(request)
    for team in await state.db(state.catalog.teams, True):  # an archived team's page too
        if team["id"] == team_id:
            return team
    raise NotFound(f"no team {team_id!r}")


@allow(*READERS)
async def teams(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    now = datetime.now(UTC)
    rows = await state.db(state.catalog.teams)
    budgets = await state.db(state.catalog.budgets)
    found = await live.spent(state.redis, state.keyspace,
                             [("team", t["id"], p) for t in rows for p in PERIODS]
                             + [("org", "", p) for p in PERIODS], now) or {}
    pools = {(b["scope_id"], b["period"]): b for b in budgets if b["scope"] == "team"}
    rates = await report(request, forecasts.run_rates, now=now)
    for team in rows:
        team["today"] = found.get(("team", team["id"], "daily"), 0)
        team["month"] = found.get(("team", team["id"], "monthly"), 0)
        # The pool bar shows the monthly pool if there is one, else the shortest period's.
        team["pool"] = next((dict(pools[(team["id"], p)], spent=found.get(
            ("team", team["id"], p), 0)) for p in ("monthly", "weekly", "daily")
            if (team["id"], p) in pools), None)
    org = []
    for b in budgets:
        if b["scope"] == "org":
            spent = found.get(("org", "", b["period"]), 0)
            org.append(dict(b, spent=spent, projected=live.project(
                spent, ("org", ""), b["period"], b["amount_micros"], rates, now)))
    models = await state.db(AllowedModels(state.catalog).get, ORG)
    return await render(request, "teams.html", {
        "teams": rows, "org_budgets": org, "periods": PERIODS,
        "archived": [t for t in await state.db(state.catalog.teams, True) if t["archived_at"]],
        "models_from": "org" if models else "any", "models": models["models"] if models else [],
        **await limits_context(request, [("org", "")])})


@allow(*ADMINS)
async def create_team(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    name = field(await form(request), "name", limit=200)
    team = await change(request, state.catalog.create_team, name)
    return see_other(request, url(request, "team", team_id=team["id"]),
                     f"Team {team['name']} created. Add its developers below.")


@allow(*TEAM_READERS)
async def team(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    require_team(request, request.match_info["team_id"])
    row = await find_team(request, request.match_info["team_id"])
    now = datetime.now(UTC)
    members = await state.db(state.catalog.developers, row["id"])
    budgets = [b for b in await state.db(state.catalog.budgets)
               if b["scope"] in ("team", "team_member") and b["scope_id"] == row["id"]]
    scopes = [("team", row["id"], p) for p in PERIODS]
    scopes += [("developer", m["id"], p) for m in members for p in PERIODS]
    found = await live.spent(state.redis, state.keyspace, scopes, now) or {}
    for m in members:
        m["today"] = found.get(("developer", m["id"], "daily"), 0)
        m["month"] = found.get(("developer", m["id"], "monthly"), 0)
    running = await state.db(grants.active, state.catalog, now)
    rates = await report(request, forecasts.run_rates, now=now)
    for b in budgets:
        # The cap as admission applies it: its amount plus the grants running now.
        b["granted_micros"], until = grants.running(running, b["scope"], b["scope_id"],
                                                    b["period"])
        b["grant_until"] = until and until.replace(tzinfo=UTC)
        b["base_micros"] = b["amount_micros"]  # what the edit form fills in
        b["amount_micros"] += b["granted_micros"]
        compared = caps.counters(b["scope"], b["scope_id"], [m["id"] for m in members])
        b["spent"] = max((found.get((*c, b["period"]), 0) for c in compared), default=0)
        b["projected"] = max((live.project(found.get((*c, b["period"]), 0), c, b["period"],
                                           b["amount_micros"], rates, now)
                              for c in compared), default=0)
        b["resets"] = period_end(b["period"], now)
    start, end = last_days(30)
    trend = await report(request, reports.spend, start=start, end=end, grain="day",
                         dimension="team", team_id=row["id"])
    by_model = await report(request, reports.spend, start=today().replace(day=1),
                            end=end, grain="month", dimension="model", team_id=row["id"])
    limits = await state.db(state.catalog.rate_limits)
    models_from, models = await state.db(AllowedModels(state.catalog).effective, row["id"])
    use = await blocked.cap_use(request, now, row["id"])
    return await render(request, "team.html", {
        "models_from": models_from, "models": models,
        "team": row, "members": members, "budgets": budgets, "periods": PERIODS,
        "pool": [b for b in budgets if b["scope"] == "team"],
        "member_caps": [b for b in budgets if b["scope"] == "team_member"],
        "limits": limits_of(limits, "team", row["id"]), "limit_words": LIMIT_WORDS,
        "trend": charts.daily_bars(fill_days(trend, start, end), "Team spend per day"),
        "by_model": by_model,
        "model_peak": max((r["cost_micros"] for r in by_model), default=0),
        "spent_today": found.get(("team", row["id"], "daily"), 0),
        "spent_month": found.get(("team", row["id"], "monthly"), 0),
        "since": start,
        "blocked": blocked.blocked_now(use), "badges": blocked.member_badges(use, members),
        "refused_today": await blocked.refused_since(request, today(), row["id"]),
        "refused_since": start,
        "refused_since_count": await blocked.refused_since(request, start, row["id"]),
        "refused_url": url(request, "requests", {"status": "refused", "team": row["id"],
                                                 "start": today().isoformat()}),
        **await limits_context(request, [("team", row["id"]), ("team_member", row["id"])]),
    })


@allow(*TEAM_ADMINS)
async def set_team_budget(request: web.Request) -> web.StreamResponse:
    """The team pool (`scope=team`, admins) or the per-member default cap
    (`scope=team_member`, admins and the team's lead)."""
    team_id = request.match_info["team_id"]
    require_team(request, team_id, change=True)
    scope = field(await form(request), "scope", "team")
    if scope not in ("team", "team_member"):
        raise ValueError("scope must be team or team_member")
    if scope == "team" and not identity(request).can_change:
        raise web.HTTPForbidden(text="A team's pool is set by an admin.")
    what = "Team budget" if scope == "team" else "Per-member cap"
    return await save_budget(request, scope, team_id, url(request, "team", team_id=team_id),
                             f"{what} saved.")


@allow(*ADMINS)
async def set_team_limits(request: web.Request) -> web.StreamResponse:
    team_id = request.match_info["team_id"]
    return await save_limits(request, "team", team_id, url(request, "team", team_id=team_id))


async def _set_models(request: web.Request, ref: str, back: URL) -> web.StreamResponse:
    models = split(field(await form(request), "models", limit=10_000))
    await change(request, AllowedModels(admin_state(request).catalog).set, ref, models)
    return see_other(request, back.with_fragment("models"), "Model list saved.")


async def _clear_models(request: web.Request, ref: str, back: URL,
                        message: str) -> web.StreamResponse:
    await change(request, AllowedModels(admin_state(request).catalog).clear, ref)
    return see_other(request, back.with_fragment("models"), message)


@allow(*ADMINS)
async def set_team_models(request: web.Request) -> web.StreamResponse:
    """The team's own model list (replaces the organization's default for it)."""
    team_id = request.match_info["team_id"]
    return await _set_models(request, team_id, url(request, "team", team_id=team_id))


@allow(*ADMINS)
async def clear_team_models(request: web.Request) -> web.StreamResponse:
    """Back to the organization's default list (or any model, without one)."""
    team = await find_team(request, request.match_info["team_id"])
    return await _clear_models(request, team["id"], url(request, "team", team_id=team["id"]),
                               "The team now follows the organization's model list.")


@allow(*ADMINS)
async def set_org_models(request: web.Request) -> web.StreamResponse:
    """The default list of every team without its own."""
    return await _set_models(request, ORG, url(request, "teams"))


@allow(*ADMINS)
async def clear_org_models(request: web.Request) -> web.StreamResponse:
    return await _clear_models(request, ORG, url(request, "teams"),
                               "Teams without a list of their own may call any model.")
