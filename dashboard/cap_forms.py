"""The budget and rate-limit forms that a developer's, a team's and the organization's pages
carry: reading what was posted, saving it, and the current limits to fill the form with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from yarl import URL

from dashboard.render import admin_state, change, field, form, render, see_other
from ledger.catalog import LIMIT_FIELDS
from ledger.money import parse_usd
from ledger.periods import PERIODS
from ledger.status import blocked_by

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
    """The rate limits of one developer or team among `rows` (all zero when none is set)."""
    for row in rows:
        if row["scope"] == scope and row["scope_id"] == scope_id:
            return {f: int(row[f]) for f in LIMIT_FIELDS}
    return dict.fromkeys(LIMIT_FIELDS, 0)


async def save_budget(request: web.Request, scope: str, scope_id: str, page: URL,
                      saved: str) -> web.StreamResponse:
    """Save the posted budget of one scope, then go back to its `page` saying `saved`. A
    cap that would refuse someone at once ($0, or at or below what they spent this period)
    is saved only when the post says confirm=1: the first post answers a page naming them."""
    state = admin_state(request)
    data = await form(request)
    period, amount, mode = budget_values(data)
    if field(data, "confirm", "") != "1":
        devs = await state.db(state.catalog.developers)
        blocked = await blocked_by(state.redis, state.keyspace, devs, scope, scope_id, period,
                                   amount, datetime.now(UTC))
        if blocked:
            return await render(request, "cap_confirm.html", {
                "blocked": blocked, "amount": amount, "period": period, "mode": mode,
                "amount_text": f"{amount // 1_000_000}.{amount % 1_000_000:06d}",
                "scope": scope, "action": request.path, "back": page})
    before = await state.db(state.catalog.budgets)
    row = await change(request, state.catalog.set_budget, scope, scope_id, period, amount, mode)
    others = sorted({b["period"] for b in before if b["scope"] == row["scope"]
                     and b["scope_id"] == row["scope_id"] and b["period"] != period})
    if others:  # a second period is a second cap, not a change of the first
        saved += (f" This scope now also has a {', '.join(others)} cap; each applies on its "
                  "own (edit that one to change it).")
    return see_other(request, page, saved)


async def save_limits(request: web.Request, scope: str, scope_id: str,
                      page: URL) -> web.Response:
    """Save the posted rate limits of one developer or team, then go back to its `page`."""
    state = admin_state(request)
    values = limit_values(await form(request))
    await change(request, state.catalog.set_limits, scope, scope_id, **values)
    return see_other(request, page, "Rate limits saved.")
