"""The two logs: every request through the gateway, and every change an admin made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from dashboard.auth import READERS, allow
from dashboard.params import MAX_OFFSET, Query, choice, moment, query, text, whole
from dashboard.render import admin_state, render, report
from ledger import reports

PAGE_SIZE = 50
# The filters of the request log, on the Requests page and the API (empty boxes ignored).
REQUEST_FILTERS = (moment("start"), moment("end"), text("developer"), text("team"),
                   text("model"), text("session"), choice("status", reports.STATUSES))
_ARGUMENTS = {"start": "start", "end": "end", "developer": "developer_id", "team": "team_id",
              "model": "model", "status": "status", "session": "session_id"}


def request_filters(q: Query) -> dict[str, Any]:
    """requests_page() arguments from the REQUEST_FILTERS parameters."""
    return {argument: q[name] for name, argument in _ARGUMENTS.items()}


def _shown(q: Query) -> dict[str, str]:
    """The filters as the form and the pager links carry them."""
    out = {}
    for name in _ARGUMENTS:
        value = q[name]
        if isinstance(value, datetime):  # UTC, as a datetime-local box takes it
            value = value.replace(tzinfo=None).isoformat()
        if value:
            out[name] = value
    return out


@allow(*READERS)
@query(*REQUEST_FILTERS, whole("page", 1, 1, MAX_OFFSET // PAGE_SIZE))
async def requests_log(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    page = q["page"]
    rows, total = await report(request, reports.requests_page, limit=PAGE_SIZE,
                               offset=(page - 1) * PAGE_SIZE, **request_filters(q))
    devs = await state.db(state.catalog.developers)
    teams = await state.db(state.catalog.teams)
    names = {d["id"]: d["name"] for d in devs} | {t["id"]: t["name"] for t in teams}
    pages = max(1, -(-total // PAGE_SIZE))
    shown = _shown(q)
    return await render(request, "requests.html", {
        "rows": rows, "total": total, "page": page, "pages": pages, "names": names,
        "developers": devs, "teams": teams, "query": shown, "page_size": PAGE_SIZE,
        "filtered": bool(shown),
    })


def _changes(before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """(field, before, after) for the fields that differ between two JSON documents."""
    old = orjson.loads(before) if isinstance(before, str) else before or {}
    new = orjson.loads(after) if isinstance(after, str) else after or {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [("", old, new)]
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


@allow(*READERS)
@query(text("actor"), text("action"))
async def audit(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    rows = await state.db(state.catalog.audit, 500)
    actor, action = q["actor"] or "", q["action"] or ""
    shown = [dict(r, changes=_changes(r["before"], r["after"])) for r in rows
             if (not actor or r["actor"] == actor) and (not action or r["action"] == action)]
    return await render(request, "audit.html", {
        "rows": shown, "actors": sorted({r["actor"] for r in rows}),
        "actions": sorted({r["action"] for r in rows}), "actor": actor, "action": action})
