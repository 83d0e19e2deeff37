"""The overview: what is being spent today and this month, where, and which budgets are close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from dashboard import blocked, charts, live
from dashboard.appkeys import CONFIG
from dashboard.auth import READERS, allow
from dashboard.forecasts_view import TOP_ON_OVERVIEW
from dashboard.render import admin_state, fill_days, render, report, today, url
from ledger import forecasts, grants, reports


async def members_by_team(request: web.Request) -> dict[str, list[str]]:
    state = admin_state(request)
    out: dict[str, list[str]] = {}
    for dev in await state.db(state.catalog.developers):
        out.setdefault(dev["team_id"], []).append(dev["id"])
    return out


async def budgets_now(request: web.Request, now: datetime,
                      known: dict[tuple[str, str, str], int]) -> list[dict[str, Any]]:
    """Every budget with live spend, the grants running on it, and its projection by the
    month-end forecast's rule (run rate of complete days, held at the cap), fullest first."""
    state = admin_state(request)
    rates = await report(request, forecasts.run_rates, now=now)
    forecast = await report(request, reports.forecast, now=now, rates=rates)
    return await live.forecast_with_live_spend(
        state.redis, state.keyspace, forecast, await members_by_team(request), now,
        rates=rates,
        running=await state.db(grants.active, state.catalog, now), known=known)


@allow(*READERS)
async def overview(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    now = datetime.now(UTC)
    day = today()
    tomorrow, month_start = day + timedelta(days=1), day.replace(day=1)
    trend_start = day - timedelta(days=29)
    live_org = await live.spent(state.redis, state.keyspace,
                                [("org", "", "daily"), ("org", "", "monthly")], now)
    month = await report(request, reports.totals, start=month_start, end=tomorrow)
    today_totals = await report(request, reports.totals, start=day, end=tomorrow)
    by_team = await report(request, reports.top_spenders, start=month_start, end=tomorrow,
                           dimension="team", limit=50)
    by_model = await report(request, reports.top_spenders, start=month_start, end=tomorrow,
                            dimension="model", limit=20)
    top_devs = await report(request, reports.top_spenders, start=month_start, end=tomorrow,
                            dimension="developer", limit=10)
    trend = await report(request, reports.spend, start=trend_start, end=tomorrow, grain="day",
                         dimension="team")
    savings = await report(request, reports.cache_savings, start=month_start, end=tomorrow)
    use = await blocked.cap_use(request, now)
    budgets = await budgets_now(request, now, blocked.counters_read(use))
    thresholds = request.app[CONFIG].thresholds
    watch = min(thresholds) if thresholds else 75
    teams = await state.db(state.catalog.teams)
    latest, _ = await report(request, reports.requests_page, limit=1)
    month_end = await report(request, forecasts.month_end, now=now)
    return await render(request, "overview.html", {
        "spent_today": live_org[("org", "", "daily")] if live_org else
        today_totals["cost_micros"],
        "spent_month": live_org[("org", "", "monthly")] if live_org else month["cost_micros"],
        "live": live_org is not None, "month": month, "today_totals": today_totals,
        "by_team": by_team, "by_model": by_model, "top_devs": top_devs,
        "team_peak": max((r["cost_micros"] for r in by_team), default=0),
        "model_peak": max((r["cost_micros"] for r in by_model), default=0),
        "trend": charts.daily_bars(fill_days(trend, trend_start, tomorrow),
                                   "Spend per day, last 30 days"),
        "savings": savings, "budgets": budgets,
        "watch": [b for b in budgets if b["percent"] >= watch or b["projected_percent"] >= 100],
        "watch_from": watch, "thresholds": thresholds, "has_teams": bool(teams),
        "last_rollup": latest[0]["ts"] if latest else None,
        "month_start": month_start, "day": day,
        "month_end": month_end[:TOP_ON_OVERVIEW + 1],  # the organization and the top teams
        "month_end_teams": len(month_end) - 1,
        "blocked": blocked.blocked_now(use),
        "refused_today": await blocked.refused_since(request, day),
        "refused_since": month_start,
        "refused_since_count": await blocked.refused_since(request, month_start),
        "refused_url": url(request, "requests", {"status": "refused",
                                                 "start": day.isoformat()}),
    })
