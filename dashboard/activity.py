"""The two logs: every request through the gateway, and every change an admin made."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from dashboard.auth import READERS, allow
from dashboard.render import admin_state, parse_time, render, report
from ledger import reports

PAGE_SIZE = 50


def request_filters(query: Any) -> dict[str, Any]:
    """requests_page() arguments from the query string (empty boxes ignored)."""
    status = query.get("status") or None
    if status not in (None, *reports.STATUSES):
        raise ValueError(f"status must be one of {', '.join(reports.STATUSES)}")
    return {
        "start": parse_time(query.get("start")), "end": parse_time(query.get("end")),
        "developer_id": query.get("developer") or None, "team_id": query.get("team") or None,
        "model": query.get("model") or None, "status": status,
        "session_id": query.get("session") or None,
    }


def _page_number(query: Any) -> int:
    raw = query.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


@allow(*READERS)
async def requests_log(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    filters = request_filters(request.query)
    page = _page_number(request.query)
    rows, total = await report(request, reports.requests_page, limit=PAGE_SIZE,
                               offset=(page - 1) * PAGE_SIZE, **filters)
    devs = await state.db(state.catalog.developers)
    teams = await state.db(state.catalog.teams)
    names = {d["id"]: d["name"] for d in devs} | {t["id"]: t["name"] for t in teams}
    pages = max(1, -(-total // PAGE_SIZE))
    query = {k: v for k, v in request.query.items() if k != "page" and v}
    return await render(request, "requests.html", {
        "rows": rows, "total": total, "page": page, "pages": pages, "names": names,
        "developers": devs, "teams": teams, "query": query, "page_size": PAGE_SIZE,
        "filtered": bool(query),
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
async def audit(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    rows = await state.db(state.catalog.audit, 500)
    actor, action = request.query.get("actor", ""), request.query.get("action", "")
    shown = [dict(r, changes=_changes(r["before"], r["after"])) for r in rows
             if (not actor or r["actor"] == actor) and (not action or r["action"] == action)]
    return await render(request, "audit.html", {
        "rows": shown, "actors": sorted({r["actor"] for r in rows}),
        "actions": sorted({r["action"] for r in rows}), "actor": actor, "action": action})
