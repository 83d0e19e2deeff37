"""GET /api/oauth/usage: the caller's caps in dollars, where Claude Code looks for them.

Claude Code signed in to a gateway adds these amounts to `/usage` and its status line next to
the percent the usage-limit headers gave (ledger.notices builds both from the same cap). Any
credential the proxy takes works here: a signed-in developer's bearer token or a gateway key.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from ledger import notices, status
from proxy.errors import ProxyError
from proxy.state import STATE


async def oauth_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = state.authenticate(request.headers)
    now = datetime.now(UTC)
    try:
        standings = await status.standings(state.redis, state.keyspace, principal, now)
        spend = {} if standings else await status.developer_spend(
            state.redis, state.keyspace, principal, now)
    except RedisError:
        # The client then shows the percent alone: no amounts beat wrong ones.
        raise ProxyError(503, "api_error", "spend cannot be read right now; try again "
                                           "shortly") from None
    return web.json_response(notices.usage_document(standings, spend, now,
                                                    state.gate.thresholds),
                             headers={"cache-control": "no-store"},
                             dumps=lambda v: orjson.dumps(v).decode())


def setup_oauth_usage(app: web.Application) -> None:
    app.router.add_get("/api/oauth/usage", oauth_usage)
