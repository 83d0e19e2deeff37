"""Developer self-service: your own spend, the caps that apply to you, and your keys.

Everything here is scoped by the session's developer id; nothing takes an id from the URL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from dashboard import live
from dashboard.auth import allow
from dashboard.budgets import caps_for_developer
from dashboard.developers import find_developer, key_status, usage_context
from dashboard.render import admin_state, identity, render
from ledger.increases import Increases
from ledger.periods import PERIODS


@allow("developer")
async def me(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    who = identity(request)
    dev = await find_developer(request, who.developer_id)
    now = datetime.now(UTC)
    keys = await state.db(state.catalog.keys, dev["id"])
    for key in keys:
        key["status"] = key_status(key, now)
        key["current"] = key["id"] == who.key_id
    found = await live.spent(state.redis, state.keyspace,
                             [("developer", dev["id"], p) for p in PERIODS], now) or {}
    return await render(request, "me.html", {
        "dev": dev, "keys": keys, "proxy_url": state.proxy_url,
        "caps": await caps_for_developer(request, dev, now),
        "spent_today": found.get(("developer", dev["id"], "daily"), 0),
        "spent_month": found.get(("developer", dev["id"], "monthly"), 0),
        "periods": PERIODS,
        "increases": await state.db(Increases(state.catalog).listing, None, dev["id"]),
        **await usage_context(request, dev["id"]),
    })
