"""Developer self-service: your own spend over a date range (and its CSV), your sessions, the
caps and rate limits that apply to you, your team's pool, and your keys (revoke a leaked one).

Everything here is scoped by the session's developer id; nothing takes an id from the URL but
the key to revoke, which must be one of yours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from dashboard import live
from dashboard.auth import allow
from dashboard.budgets import caps_for_developer
from dashboard.developers import find_developer, key_status, usage_context
from dashboard.params import Query, query
from dashboard.render import (
    admin_state,
    change,
    identity,
    redirect_back,
    render,
    report,
    url,
)
from dashboard.reports_view import DAYS, days, stream_csv
from ledger import exports, forecasts, pivot
from ledger.catalog import NotFound
from ledger.increases import Increases
from ledger.periods import PERIODS

SESSIONS_SHOWN = 20


@allow("developer")
@query(*DAYS)
async def me(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    who = identity(request)
    dev = await find_developer(request, who.developer_id)
    now = datetime.now(UTC)
    start, last = days(q)
    keys = await state.db(state.catalog.keys, dev["id"])
    for key in keys:
        key["status"] = key_status(key, now)
        key["current"] = key["id"] == who.key_id
    found = await live.spent(state.redis, state.keyspace,
                             [("developer", dev["id"], p) for p in PERIODS], now) or {}
    span = {"start": start, "end": last + timedelta(days=1), "developer_id": dev["id"]}
    by_model = await report(request, pivot.pivot, grain="month", dimension="model", top=20,
                            **span)
    sessions = await report(request, pivot.pivot, grain="month", dimension="session",
                            top=SESSIONS_SHOWN, **span)
    limits = [r for r in await state.db(state.catalog.rate_limits)
              if (r["scope"], r["scope_id"]) in (("developer", dev["id"]),
                                                 ("team", dev["team_id"]), ("org", ""))]
    pool = next((f for f in await report(request, forecasts.month_end, now=now)
                 if f["scope"] == "team" and f["scope_id"] == dev["team_id"]), None)
    return await render(request, "me.html", {
        "dev": dev, "keys": keys, "proxy_url": state.proxy_url,
        "caps": await caps_for_developer(request, dev, now),
        "spent_today": found.get(("developer", dev["id"], "daily"), 0),
        "spent_month": found.get(("developer", dev["id"], "monthly"), 0),
        "periods": PERIODS,
        "increases": await state.db(Increases(state.catalog).listing, None, dev["id"]),
        "start": start, "last": last, "range_models": by_model, "sessions": sessions,
        "limits": limits, "pool": pool,
        "csv_url": url(request, "me_csv", {"start": start.isoformat(),
                                           "end": last.isoformat()}),
        **await usage_context(request, dev["id"]),
    })


@allow("developer")
@query(*DAYS)
async def me_csv(request: web.Request, q: Query) -> web.StreamResponse:
    """Your own spend per day × model over the range, streamed."""
    start, last = days(q)
    dev_id = identity(request).developer_id
    return await stream_csv(request, f"meterd-my-usage-{start}-to-{last}.csv",
                            exports.pivot_csv, start=start, end=last + timedelta(days=1),
                            grain="day", dimension="model", developer_id=dev_id)


@allow("developer")
async def revoke_own_key(request: web.Request) -> web.StreamResponse:
    """Revoke one of your own keys (a leaked one): audited under your name, refused by the
    gateway within a second. Another developer's key is a 404, as an unknown one."""
    state = admin_state(request)
    who = identity(request)
    key_id = request.match_info["key_id"]
    if not any(k["id"] == key_id for k in await state.db(state.catalog.keys,
                                                          who.developer_id)):
        raise NotFound(f"no key {key_id!r} of yours")
    key = await change(request, state.catalog.revoke_key, key_id)
    return redirect_back(request, f"Key {key['display']} revoked; the gateway refuses it "
                                  "within a second.", "ok")
