"""JSON in and out for the admin API, errors in the Anthropic envelope."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          429: "rate_limit_error"}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status,
                        content_type="application/json")


def json_error(status: int, message: str) -> web.Response:
    kind = _KINDS.get(status, "invalid_request_error" if status < 500 else "api_error")
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is {})."""
    doc = orjson.loads(await request.read() or b"{}")
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc
