"""Settings: the prices, the provider and the policies this deployment runs with (read-only:
they come from the configuration file and environment, not from the dashboard)."""

from __future__ import annotations

from aiohttp import web

from dashboard.appkeys import CONFIG, IDENTITY
from dashboard.auth import ADMINS, READERS, allow
from dashboard.render import admin_state, render, see_other, url
from ledger.usage import Usage

OUTAGE_WORDS = {
    "fail_open": "Let requests through unmetered by budgets (logged) and spool their usage; "
                 "it is replayed when Redis is back.",
    "fail_closed": "Refuse requests with a clear message until Redis is back.",
}


@allow(*READERS)
async def settings_page(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    prices = config.prices
    rows = sorted(prices.rows, key=lambda r: r.name)
    web_search = prices.cost(rows[0].name, Usage(web_search=1000)).micros if rows else 0
    return await render(request, "settings.html", {
        "rows": rows, "price_version": prices.version, "web_search_per_1k": web_search,
        "outage_words": OUTAGE_WORDS.get(config.redis_outage_policy, ""),
        "secret_source": "configured" if config.session_secret else "generated",
    })


@allow(*ADMINS)
async def reload_providers(request: web.Request) -> web.StreamResponse:
    """Ask every proxy to re-read its providers and routes (as SIGHUP does to one)."""
    state = admin_state(request)
    generation = await state.redis.incr(state.keyspace.providers_reload)
    await state.db(state.catalog.record, request[IDENTITY].actor, "providers.reload",
                   "proxies", {"generation": generation})
    return see_other(request, url(request, "settings"),
                     "Every proxy reloads its providers and routes within a second.")
