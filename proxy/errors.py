"""Every error meterd itself returns, rendered in one place as the Anthropic error envelope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from ledger.gate import BudgetExceeded, MeteringUnavailable, RateLimited
from ledger.policy import KeyRefused
from proxy.state import STATE


class ProxyError(Exception):
    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


class UpstreamError(ProxyError):
    """The provider could not be reached (502) or did not answer in time (504)."""


def envelope(status: int, kind: str, message: str,
             headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)


def to_proxy_error(exc: Exception) -> ProxyError:
    """Domain errors from the ledger, as the HTTP error a client should see."""
    if isinstance(exc, KeyRefused):
        return ProxyError(401, "authentication_error", str(exc))
    if isinstance(exc, BudgetExceeded):
        return ProxyError(429, "billing_error", str(exc), {
            "retry-after": str(exc.retry_after), "x-should-retry": "false"})
    if isinstance(exc, RateLimited):
        return ProxyError(429, "rate_limit_error", str(exc), {
            "retry-after": str(exc.retry_after), "x-should-retry": "true"})
    if isinstance(exc, MeteringUnavailable):
        return ProxyError(429, "billing_error", str(exc), {
            "retry-after": "5", "x-should-retry": "true"})
    raise TypeError(f"not a domain error: {exc!r}")


_HTTP_KINDS = {404: "not_found_error", 405: "invalid_request_error",
               413: "request_too_large", 400: "invalid_request_error"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as exc:
        err = exc
    except (KeyRefused, BudgetExceeded, RateLimited, MeteringUnavailable) as exc:
        err = to_proxy_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"not found: {request.method} {request.path}",
                   405: f"method {request.method} not allowed on {request.path}",
                   413: "request body is larger than this gateway accepts"}.get(
            exc.status, exc.text or exc.reason)
        allow = exc.headers.get("Allow")  # a 405's: the methods the path takes
        err = ProxyError(exc.status, _HTTP_KINDS.get(exc.status, "invalid_request_error"),
                         message, {"allow": allow} if allow else None)
    if STATE in request.app:
        request.app[STATE].metrics.rejections[err.kind] += 1
    return envelope(err.status, err.kind, err.message, err.headers)
