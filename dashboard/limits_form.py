"""The rate-limit form, which a developer's page and a team's page both carry."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from dashboard.budgets import limit_values
from dashboard.render import admin_state, change, form, see_other


async def save_limits(request: web.Request, scope: str, scope_id: str,
                      page: URL) -> web.Response:
    """Save the posted rate limits of one developer or team, then go back to its `page`."""
    state = admin_state(request)
    values = limit_values(await form(request))
    await change(request, state.catalog.set_limits, scope, scope_id, **values)
    return see_other(request, page, "Rate limits saved.")
