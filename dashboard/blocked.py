"""Who is blocked right now, by which cap, until when, and how many requests the gateway
refused: what the overview and a team's page show above their charts. The rule for "blocked"
and "near" is ledger/status.py's, read live from the spend counters."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from aiohttp import web

from dashboard.appkeys import CONFIG
from dashboard.render import admin_state, report, url
from ledger import caps, grants, reports, status
from ledger.model_caps import ModelCaps
from ledger.periods import day_start
from ledger.policy import Cap

BADGE_ORDER = {status.BLOCKED: 0, status.NEAR: 1, "": 2}


def near_percent(request: web.Request) -> int:
    """A cap is "near" from the lowest alert threshold (75% without one), as the overview's
    watch list."""
    thresholds = request.app[CONFIG].thresholds
    return min(thresholds) if thresholds else 75


async def cap_use(request: web.Request, now: datetime,
                  team_id: str | None = None) -> list[dict[str, Any]]:
    """ledger.status.cap_use for the whole organization or one team (its members' caps, its
    pool and the organization's, per-model caps among them), each row named: `who` (the
    developer, the team or the organization), `who_url` (its page, on blocked rows) and
    `cap` (the cap in words, as the proxy's refusal names it)."""
    state = admin_state(request)
    devs = await state.db(state.catalog.developers)
    teams = {t["id"]: t["name"] for t in await state.db(state.catalog.teams)}
    budgets = (await state.db(state.catalog.budgets)
               + await state.db(ModelCaps(state.catalog).all))
    if team_id is not None:
        devs = [d for d in devs if d["team_id"] == team_id]
        mine = {d["id"] for d in devs}
        budgets = [b for b in budgets if b["scope"] == "org"
                   or (b["scope"] == "developer" and b["scope_id"] in mine)
                   or (b["scope"] in ("team", "team_member") and b["scope_id"] == team_id)]
    running = await state.db(grants.active, state.catalog, now)
    rows = await status.cap_use(state.redis, state.keyspace, devs, budgets, running, now,
                                near_percent(request))
    for row in rows:
        dev, scope, scope_id = row["developer"], row["scope"], row["scope_id"]
        name = dev["name"] if scope == "developer" else teams.get(scope_id, scope_id)
        row["cap"] = Cap(row["budget_id"], scope, scope_id, name, row["period"],
                         row["amount_micros"], "", models=tuple(row["models"])).describe()
        row["who"] = dev["name"] if dev is not None else (
            f"all of {teams.get(scope_id, scope_id)}" if scope == "team" else "everyone")
        row["who_url"] = None
        if row["state"] == status.BLOCKED:  # linked where listed (1,000s of rows are not)
            row["who_url"] = (url(request, "developer", developer_id=dev["id"]) if dev
                              else url(request, "team", team_id=scope_id)
                              if scope == "team" else None)
    return rows


def counters_read(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], int]:
    """The spend counters `cap_use` read, as dashboard.live.spent keys them, so the page does
    not read them again (a per-model cap's counter is not one of them)."""
    return {(*caps.counter(r["scope"], r["scope_id"], (r["developer"] or {}).get("id", "")),
             r["period"]): r["spent_micros"] for r in rows if not r["models"]}


def blocked_now(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `cap_use` whose cap refuses now, the soonest to lift first."""
    return sorted((r for r in rows if r["state"] == status.BLOCKED),
                  key=lambda r: (r["resets_at"], r["who"], r["cap"]))


def member_badges(rows: list[dict[str, Any]],
                  members: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per member id: the row of the cap that applies to them and is fullest (blocked before
    near before the highest share), so a member blocked by the team's pool shows it too. Of
    several blocking caps, the one that resets last: the one the proxy's refusal names."""
    out: dict[str, dict[str, Any]] = {}
    for m in members:
        applying = [r for r in rows if (r["developer"] or {}).get("id") == m["id"]
                    or (r["developer"] is None and not m.get("disabled"))]
        if applying:
            out[m["id"]] = min(applying, key=lambda r: (
                BADGE_ORDER[r["state"]],
                -r["resets_at"].timestamp() if r["state"] == status.BLOCKED else 0,
                -r["spent_micros"] * 10_000 // max(1, r["amount_micros"])))
    return out


async def refused_since(request: web.Request, since: date,
                        team_id: str | None = None) -> int:
    """How many requests the gateway refused from the start of the org's day `since` on."""
    _, count = await report(request, reports.requests_page, status="refused",
                            start=day_start(since), team_id=team_id,
                            limit=0)
    return count
