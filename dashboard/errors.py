"""What an unexpected exception in the admin app becomes: a 500 that shows nothing internal
and names a request id, under which the traceback is logged. The JSON API answers in the
Anthropic error envelope, a dashboard page with the error page.

Errors the caller can fix (a bad field, an unknown team) are answered before this, by
dashboard.auth, as 4xx; what reaches here is a bug or an outage.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from dashboard.appkeys import PAGES
from dashboard.auth import Handler, is_api
from dashboard.jsonio import json_error
from dashboard.render import error_page

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
        if request.writer.output_size:  # the answer is under way: aiohttp breaks it off
            raise
        request_id = new_request_id()
        log.exception("unexpected error answering %s %s (request id %s)", request.method,
                      request.path, request_id)
    if is_api(request) or not request.app.get(PAGES, False):
        response = json_error(500, f"internal error in meterd (request id {request_id})")
    else:
        response = await error_page(
            request, 500, "meterd could not show this page. The error is logged: give the "
                          "request id below to whoever runs meterd.", request_id)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
