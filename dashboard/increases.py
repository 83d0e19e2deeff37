"""Asking for more: a developer's request from /me (the 429 message links there), and the
pending list where a team lead (its own team) or an admin approves or denies it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dashboard.alerts_view import alerter
from dashboard.auth import TEAM_ADMINS, TEAM_READERS, allow, require_team
from dashboard.render import admin_state, change, field, form, identity, render, see_other, url
from ledger.alerts import notify_developer
from ledger.increases import Increases
from ledger.money import format_usd, parse_usd
from ledger.periods import clock


def _increases(request: web.Request) -> Increases:
    return Increases(admin_state(request).catalog)


def _amount(data: Any) -> int:
    try:
        return parse_usd(field(data, "amount", limit=20))
    except ValueError:
        raise ValueError("the amount is in dollars, e.g. 50 or 12.50") from None


def _days(data: Any) -> int:
    raw = field(data, "days", limit=4)
    if not raw.isdigit():
        raise ValueError("how long is a whole number of days")
    return int(raw)


@allow("developer")
async def ask_increase(request: web.Request) -> web.StreamResponse:
    """File a request for the signed-in developer (never one named in the form)."""
    who = identity(request)
    data = await form(request)
    state = admin_state(request)
    asked = await state.db(_increases(request).ask, who.developer_id,
                           field(data, "period", "monthly"), _amount(data), _days(data),
                           field(data, "reason", limit=1000), actor=who.actor)
    await announce(request, asked, who.name)
    return see_other(request, url(request, "me").with_fragment("increase"),
                     "Request sent: your team lead or an admin will decide on it.")


async def announce(request: web.Request, asked: dict[str, Any], name: str) -> None:
    """Tell the `increase` destinations (the org's, the developer's team's) of a request."""
    title = f"{name} asks for {format_usd(asked['amount_micros'])} more ({asked['period']})"
    await alerter(request).fire("increase", f"increase:{asked['id']}", 3600, title,
                                f"{title} for {asked['days']} days: {asked['reason']}. "
                                f"Decide at {url(request, 'increases')}.", asked["team_id"])


@allow(*TEAM_READERS)
async def increases_page(request: web.Request) -> web.StreamResponse:
    """Pending requests first; a team lead sees its own team's only."""
    who = identity(request)
    state = admin_state(request)
    team = who.team_id if who.role == "team_lead" else None
    rows = await state.db(_increases(request).listing, team)
    return await render(request, "increases.html", {"requests": rows})


async def decide(request: web.Request) -> tuple[Increases, dict[str, Any]]:
    increases = _increases(request)
    found = await admin_state(request).db(increases.get, request.match_info["request_id"])
    require_team(request, found["team_id"], change=True)
    return increases, found


async def tell(request: web.Request, decided: dict[str, Any]) -> str:
    """Email the developer the decision (their page shows it too); returns their name."""
    state = admin_state(request)
    dev = next(d for d in await state.db(state.catalog.developers)
               if d["id"] == decided["developer_id"])
    await notify_developer(state.catalog, state.db, dev, f"Budget increase {decided['status']}",
                           _decision_text(decided))
    return str(dev["name"])


def _decision_text(row: dict[str, Any]) -> str:
    if row["status"] == "approved":
        return (f"Your {row['period']} cap was raised by {format_usd(row['granted_micros'])} "
                f"until {clock(row['expires_at'])}.")
    return f"Your request for more budget was denied: {row['decision_reason']}"


@allow(*TEAM_ADMINS)
async def approve_increase(request: web.Request) -> web.StreamResponse:
    increases, found = await decide(request)
    data = await form(request)
    decided = await change(request, increases.approve, found["id"], _amount(data), _days(data))
    name = await tell(request, decided)
    return see_other(request, url(request, "increases"), f"Approved: {name}'s cap is raised.")


@allow(*TEAM_ADMINS)
async def deny_increase(request: web.Request) -> web.StreamResponse:
    increases, found = await decide(request)
    data = await form(request)
    decided = await change(request, increases.deny, found["id"],
                           field(data, "reason", limit=1000))
    await tell(request, decided)
    return see_other(request, url(request, "increases"), "Denied; the developer is told why.")
