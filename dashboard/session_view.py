"""One Claude Code session: cost, tokens, duration, models and agents (ledger.session_report).

Admins and finance see any session; a team lead those of its team; a developer only its own
(another developer's session id answers 404, as an unknown one does).
"""

from __future__ import annotations

from aiohttp import web

from dashboard.auth import TEAM_READERS, allow, require_team
from dashboard.render import identity, render, report, url
from ledger.catalog import NotFound
from ledger.session_report import session


@allow(*TEAM_READERS, "developer")
async def session_page(request: web.Request) -> web.StreamResponse:
    session_id = request.match_info["session_id"]
    who = identity(request)
    own = who.developer_id if who.role == "developer" else None
    found = await report(request, session, session_id, own)
    if found is None:
        raise NotFound(f"no session {session_id!r} in the request log")
    if who.role == "team_lead":
        require_team(request, found["team_id"])
    return await render(request, "session.html", {
        "s": found,
        "requests_url": url(request, "requests", {"session": session_id})
        if who.role != "developer" else None,
    })
