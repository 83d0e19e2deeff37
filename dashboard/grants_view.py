"""Grants from the dashboard and the admin API: raise a developer's caps until a date (the
developer page's form), and list, create and revoke grants of any scope (/api/v1/grants).
The grant itself, and how a proxy adds it to a cap, is ledger/grants.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_response, read_body
from dashboard.params import parse_expiry
from dashboard.render import (
    admin_state,
    change,
    field,
    form,
    redirect_back,
    see_other,
    url,
)
from ledger import grants
from ledger.money import parse_usd
from ledger.periods import PERIODS


def _period(value: str) -> str | None:
    """A grant's period: one of PERIODS, or '' / 'all' for every cap of the scope."""
    if value in ("", "all"):
        return None
    if value not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)} or all")
    return value


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "expires_at": row["expires_at"].replace(tzinfo=UTC).isoformat(),
            "created_at": row["created_at"].replace(tzinfo=UTC).isoformat(),
            "revoked_at": row["revoked_at"] and row["revoked_at"].replace(tzinfo=UTC).isoformat()}


@allow(*ADMINS)
async def grant_to_developer(request: web.Request) -> web.StreamResponse:
    """The developer page's grant form: amount (USD), until (date or date-time), reason."""
    developer_id = request.match_info["developer_id"]
    data = await form(request)
    try:
        amount = parse_usd(field(data, "amount", limit=20))
    except ValueError:
        raise ValueError("the amount is in dollars, e.g. 50 or 12.50") from None
    await change(request, grants.create_grant, admin_state(request).catalog, "developer",
                 developer_id, amount, parse_expiry(field(data, "until", limit=40)),
                 reason=field(data, "reason"), period=_period(field(data, "period", "")))
    return see_other(request, url(request, "developer", developer_id=developer_id),
                     "Grant saved: the caps are raised until it expires.")


@allow(*READERS)
async def list_grants(request: web.Request) -> web.Response:
    """The grants running now."""
    state = admin_state(request)
    rows = await state.db(grants.active, state.catalog, datetime.now(UTC))
    return json_response({"data": [_row(r) for r in rows]})


@allow(*ADMINS)
async def create_grant(request: web.Request) -> web.Response:
    """{scope, target, amount_usd | amount_micros, expires_at, reason, period?}."""
    state, body = admin_state(request), await read_body(request)
    amount = body.whole("amount_micros") if not body.absent("amount_micros") else \
        parse_usd(body.figure("amount_usd"))
    row = await change(request, grants.create_grant, state.catalog, body.text("scope"),
                       body.text("target", ""), amount, parse_expiry(body.text("expires_at")),
                       reason=body.text("reason"), period=_period(body.text("period", "")))
    return json_response(_row(row), 201)


@allow(*ADMINS)
async def revoke_grant(request: web.Request) -> web.Response:
    state = admin_state(request)
    row = await change(request, grants.revoke_grant, state.catalog,
                       request.match_info["grant_id"])
    return json_response(_row(row))


@allow(*ADMINS)
async def revoke_grant_form(request: web.Request) -> web.StreamResponse:
    """The Revoke button beside a running grant: the cap is back to its own amount now."""
    await change(request, grants.revoke_grant, admin_state(request).catalog,
                 request.match_info["grant_id"])
    return redirect_back(request, "Grant revoked: the cap is back to its own amount.", "ok")
