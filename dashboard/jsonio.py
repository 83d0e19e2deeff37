"""JSON in and out for the admin API, errors in the Anthropic envelope."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.envelope import error_body, error_type


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status,
                        content_type="application/json")


def json_error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(error_type(status), message), status=status,
                        content_type="application/json")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is {})."""
    doc = orjson.loads(await request.read() or b"{}")
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc
