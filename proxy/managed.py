"""GET /managed/settings: the managed settings of the caller's team (else the organization's),
as Claude Code in gateway mode polls for them, answered from the policy snapshot in memory.

The protocol's semantics: 200 `{uuid, checksum, settings}` with the checksum, quoted, as
ETag; 304 only to an If-None-Match that names it (`*` is Claude Desktop asking whether there
are settings at all: answered as if it were absent); 404 when no policy applies.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.errors import ProxyError
from proxy.state import STATE


async def managed_settings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = state.authenticate(request.headers)
    found = state.policy.managed_settings(principal.team_id)
    if found is None:
        raise ProxyError(404, "not_found_error", "no managed settings for your team")
    etag = f'"{found["checksum"]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    asked = request.headers.get("If-None-Match", "")
    if asked.strip() != "*" and any(
            tag.strip().removeprefix("W/") in (etag, found["checksum"])
            for tag in asked.split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=orjson.dumps(found), content_type="application/json",
                        headers=headers)


def setup_managed_routes(app: web.Application) -> None:
    app.router.add_get("/managed/settings", managed_settings)
