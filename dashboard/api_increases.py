"""Increase requests in the admin JSON API: the list, a developer asking (with their own
gateway key as the credential: the request is always theirs), and approving or denying.

POST /increases takes `{"amount_usd", "days", "reason", "period"?}`; approve takes
`{"amount_usd" | "amount_micros", "days"}`, deny `{"reason"}`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard.auth import TEAM_ADMINS, TEAM_READERS, allow
from dashboard.increases import announce, decide, tell
from dashboard.jsonio import Body, json_response, read_body
from dashboard.params import Query, choice, query
from dashboard.render import admin_state, change, identity
from ledger.increases import Increases
from ledger.money import parse_usd


def _row(row: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601 in UTC (the catalog keeps naive UTC)."""
    return {k: v.replace(tzinfo=UTC).isoformat() if isinstance(v, datetime) else v
            for k, v in row.items()}


def _amount(body: Body) -> int:
    if not body.absent("amount_micros"):
        return body.whole("amount_micros")
    try:
        return parse_usd(body.figure("amount_usd"))
    except ValueError as exc:
        raise ValueError(f"amount_usd: {exc}") from None


@allow(*TEAM_READERS)
@query(choice("status", ("pending", "approved", "denied")))
async def list_increases(request: web.Request, q: Query) -> web.Response:
    """Pending first, then decided, newest first; `status` filters (pending, approved,
    denied)."""
    status = q["status"]
    who = identity(request)
    team = who.team_id if who.role == "team_lead" else None
    rows = await admin_state(request).db(Increases(admin_state(request).catalog).listing, team)
    return json_response({"data": [_row(r) for r in rows
                                   if status is None or r["status"] == status]})


@allow("developer")
async def ask_increase(request: web.Request) -> web.Response:
    """File a request for the developer whose gateway key calls (never one named in the
    body); the `increase` destinations hear of it."""
    who, body = identity(request), await read_body(request)
    days = body.whole("days")
    state = admin_state(request)
    asked = await state.db(Increases(state.catalog).ask, who.developer_id,
                           body.text("period", "monthly"), _amount(body), days,
                           body.text("reason"), actor=who.actor)
    await announce(request, asked, who.name)
    return json_response(_row(asked), 201)


@allow(*TEAM_ADMINS)
async def approve_increase(request: web.Request) -> web.Response:
    """Approve with an amount and a number of days: a grant on the request's period cap."""
    increases, found = await decide(request)
    body = await read_body(request)
    decided = await change(request, increases.approve, found["id"], _amount(body),
                           body.whole("days"))
    await tell(request, decided)
    return json_response(_row(decided))


@allow(*TEAM_ADMINS)
async def deny_increase(request: web.Request) -> web.Response:
    increases, found = await decide(request)
    body = await read_body(request)
    decided = await change(request, increases.deny, found["id"], body.text("reason"))
    await tell(request, decided)
    return json_response(_row(decided))
