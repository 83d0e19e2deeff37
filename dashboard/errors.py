"""What an unexpected exception in the admin API becomes: a 500 in the Anthropic error
envelope that shows nothing internal and names a request id, under which the traceback is
logged.

Errors the caller can fix (a bad field, an unknown team) are answered before this, by
dashboard.auth, as 4xx; what reaches here is a bug or an outage.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from dashboard.auth import Handler, is_api
from dashboard.jsonio import json_error

log = logging.getLogger("meterd.dashboard")

REQUEST_ID_HEADER = "request-id"  # as Anthropic's API names its own


def new_request_id() -> str:
    return f"merr_{secrets.token_hex(12)}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError):
        raise  # an answer (dashboard.auth renders the 4xx ones), or the client left
    except Exception:
        # Pages are not answered here yet; an answer under way, aiohttp breaks off.
        if not is_api(request) or request.writer.output_size:
            raise
        request_id = new_request_id()
        log.exception("unexpected error answering %s %s (request id %s)", request.method,
                      request.path, request_id)
    response = json_error(500, f"internal error in meterd (request id {request_id})")
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
