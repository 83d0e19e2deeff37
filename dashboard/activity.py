"""The two logs: every request through the gateway, and every change an admin made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from dashboard.auth import ADMINS, READERS, allow
from dashboard.params import MAX_OFFSET, Query, choice, moment, query, text, whole
from dashboard.render import admin_state, change, render, report, see_other, url
from ledger import reports
from ledger.catalog import CatalogError, NotFound
from ledger.money import format_usd
from ledger.periods import local_time

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
        if isinstance(value, datetime):  # the organization's clock, as the box takes it
            value = local_time(value).replace(tzinfo=None).isoformat()
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


def _readable(name: str, value: Any, links: dict[str, tuple[str, Any]]) -> Any:
    """An audited value as people read it: dollars for µ$, a name for a developer's or a
    team's id (the id stays in the row's data for the API)."""
    if value is None:
        return None
    if name.endswith("_micros") and isinstance(value, int):
        return format_usd(value, exact=value % 10_000 != 0)
    if isinstance(value, str) and value in links:
        return links[value][0]
    return value


@allow(*READERS)
@query(text("actor"), text("action"))
async def audit(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    rows = await state.db(state.catalog.audit, 500)
    actor, action = q["actor"] or "", q["action"] or ""
    devs = await state.db(state.catalog.developers)
    teams = await state.db(state.catalog.teams)
    links = {d["id"]: (d["name"], url(request, "developer", developer_id=d["id"]))
             for d in devs} | {t["id"]: (t["name"], url(request, "team", team_id=t["id"]))
                              for t in teams}
    shown = [dict(r, changes=[(k, _readable(k, old, links), _readable(k, new, links))
                              for k, old, new in _changes(r["before"], r["after"])],
                  target_link=links.get(r["target"]))
             for r in rows
             if (not actor or r["actor"] == actor) and (not action or r["action"] == action)]
    return await render(request, "audit.html", {
        "rows": shown, "actors": sorted({r["actor"] for r in rows}),
        "actions": sorted({r["action"] for r in rows}), "actor": actor, "action": action})


def _audit_row(conn: Any, audit_id: int) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM admin_audit WHERE id = ?", [audit_id])
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None


@allow(*ADMINS)
async def undo_budget_delete(request: web.Request) -> web.StreamResponse:
    """Put back the cap an audited budget.delete removed (same scope, period, amount and
    mode); the restore is itself audited, as a budget.set by whoever pressed undo."""
    state = admin_state(request)
    try:
        audit_id = int(request.match_info["audit_id"])
    except ValueError:
        raise NotFound("no such audit entry") from None
    row = await report(request, _audit_row, audit_id)
    if row is None or row["action"] != "budget.delete" or not row["before"]:
        raise NotFound("no removed cap to put back in that audit entry")
    cap = orjson.loads(row["before"]) if isinstance(row["before"], str) else row["before"]
    if any(b["scope"] == cap["scope"] and b["scope_id"] == cap["scope_id"]
           and b["period"] == cap["period"] for b in await state.db(state.catalog.budgets)):
        raise CatalogError(f"a {cap['period']} cap of that scope exists again: edit it "
                           "instead of undoing the removal")
    await change(request, state.catalog.set_budget, cap["scope"], cap["scope_id"] or "org",
                 cap["period"], int(cap["amount_micros"]), cap.get("mode") or "estimate")
    return see_other(request, url(request, "audit"), "Removed cap restored.")
