"""Budget and rate-limit forms, and the caps that apply to one developer, with live spend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from dashboard import live
from dashboard.auth import ADMINS, allow
from dashboard.render import admin_state, change, field, form, redirect_back
from ledger import caps
from ledger.catalog import LIMIT_FIELDS
from ledger.money import parse_usd
from ledger.periods import PERIODS, period_end

LIMIT_WORDS = {"rpm": "Requests per minute", "itpm": "Input tokens per minute",
               "otpm": "Output tokens per minute", "concurrency": "Concurrent requests"}


def budget_values(data: Any) -> tuple[str, int, str]:
    """(period, amount µ$, mode) from a budget form."""
    period = field(data, "period", "monthly")
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    try:
        amount = parse_usd(field(data, "amount", limit=20))
    except ValueError:
        raise ValueError("the amount is in dollars, e.g. 500 or 99.50") from None
    mode = field(data, "mode", "estimate")
    return period, amount, mode


def limit_values(data: Any) -> dict[str, int]:
    """Rate limits from a form; an empty box means no limit (0)."""
    out = {}
    for name in LIMIT_FIELDS:
        raw = field(data, name, "0", 15).replace(",", "").replace("_", "")
        if not raw.isdigit():
            raise ValueError(f"{LIMIT_WORDS[name].lower()} must be a whole number (0 = none)")
        out[name] = int(raw)
    return out


def limits_of(rows: list[dict[str, Any]], scope: str, scope_id: str) -> dict[str, int]:
    for row in rows:
        if row["scope"] == scope and row["scope_id"] == scope_id:
            return {f: int(row[f]) for f in LIMIT_FIELDS}
    return dict.fromkeys(LIMIT_FIELDS, 0)


async def caps_for_developer(request: web.Request, developer_id: str, team_id: str,
                             team_name: str, now: datetime) -> list[dict[str, Any]]:
    """Every cap that applies to a developer, with what counts against it right now: their
    own spend for developer and per-member caps, the team's for the pool, the org's."""
    state = admin_state(request)
    rows = [b for b in await state.db(state.catalog.budgets)
            if caps.applies(b["scope"], b["scope_id"], developer_id, team_id)]
    counters = {b["id"]: caps.counter(b["scope"], b["scope_id"], developer_id) for b in rows}
    found = await live.spent(state.redis, state.keyspace,
                             [(*counters[b["id"]], b["period"]) for b in rows], now) or {}
    out = []
    for b in rows:
        spent = found.get((*counters[b["id"]], b["period"]), 0)
        label = {"developer": "Personal cap", "team": f"Team pool ({team_name})",
                 "team_member": f"Per-member cap of {team_name}",
                 "org": "Organization"}[b["scope"]]
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
    state = admin_state(request)
    period, amount, mode = budget_values(await form(request))
    await change(request, state.catalog.set_budget, "org", "", period, amount, mode)
    return redirect_back(request, "Organization budget saved.", "ok")
