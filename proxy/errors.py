"""Every error meterd itself returns, rendered in one place as the Anthropic error envelope."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from ledger import notices
from ledger.gate import BudgetExceeded, MeteringUnavailable, RateLimited
from ledger.policy import KeyRefused
from proxy.envelope import error_body, error_type
from proxy.state import STATE

log = logging.getLogger("meterd.proxy")
# Request bodies meterd takes: aiohttp decodes gzip and deflate before the handler reads them,
# and the body goes on to the provider decoded, without the label (proxy.upstream).
_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
_ENCODING_REFUSED = ("the request body's content-encoding is not supported: send it "
                     "uncompressed, or as gzip or deflate")
_UNREADABLE_BODY = ("the request body cannot be read: it is not what its content-encoding "
                    "says, or it was cut short")

# Where a process also serves pages (the dashboard): its error page for a refused request to
# one of them, given the path, status and message; None for the envelope. Set on the app
# setup_errors answers for, by the process that mounts the pages (meterd.apps).
ErrorPage = Callable[[str, int, str], web.Response | None]
ERROR_PAGE: web.AppKey[ErrorPage] = web.AppKey("error_page")


INCREASE = "ask your meterd administrator for an increase"


class ProxyError(Exception):
    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


class UpstreamError(ProxyError):
    """The provider could not be reached (502) or did not answer in time (504)."""


def upstream_failure(exc: TimeoutError | aiohttp.ClientError) -> UpstreamError:
    """What the client is told when the provider failed before answering: a timeout is a
    504, anything else (refused, reset, no credential) a 502."""
    # Before ClientError: aiohttp's timeouts (ServerTimeoutError) are both.
    if isinstance(exc, TimeoutError):
        return UpstreamError(504, "api_error", "upstream did not answer in time")
    return UpstreamError(502, "api_error", f"upstream unreachable ({type(exc).__name__})")


def envelope(status: int, kind: str, message: str,
             headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(kind, message),
                        content_type="application/json", headers=headers)


def to_proxy_error(exc: Exception, increase: str) -> ProxyError:
    """Domain errors from the ledger, as the HTTP error a client should see (`increase`: how
    a developer past a cap asks for more)."""
    if isinstance(exc, KeyRefused):
        # Revoked, expired or forged: Claude Code asks to sign in again at once instead of
        # retrying for minutes.
        return ProxyError(401, "authentication_error", str(exc),
                          {"x-should-retry": "false"} if exc.final else None)
    if isinstance(exc, BudgetExceeded):
        # One sentence: when it resets and what to do (Claude Code prints it as it is).
        return ProxyError(429, "billing_error", f"{exc} · {increase}",
                          notices.blocked_headers(exc.cap, exc.resets_at, exc.retry_after))
    if isinstance(exc, RateLimited):
        return ProxyError(429, "rate_limit_error", str(exc), {
            "retry-after": str(exc.retry_after), "x-should-retry": "true"})
    if isinstance(exc, MeteringUnavailable):
        return ProxyError(429, "billing_error", str(exc), dict(notices.UNREADABLE_HEADERS))
    raise TypeError(f"not a domain error: {exc!r}")


def increase_text(request: web.Request) -> str:
    """Where a developer past a cap asks for more: their page on the dashboard when the
    gateway knows its public URL."""
    state = request.app.get(STATE)
    if state is None or not state.public_url:
        return INCREASE
    return f"request an increase at {state.public_url}/admin/me#increase"


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        encoding = request.headers.get("content-encoding")
        if encoding is not None and encoding.lower() not in _ENCODINGS:
            # aiohttp passes a body it cannot decode through as it came: refuse it rather
            # than read it as JSON or send it on under the wrong label.
            raise ProxyError(400, "invalid_request_error", _ENCODING_REFUSED)
        return await handler(request)
    except ProxyError as exc:
        err = exc
    except (KeyRefused, BudgetExceeded, RateLimited, MeteringUnavailable) as exc:
        err = to_proxy_error(exc, increase_text(request))
    except RequestPayloadError:
        err = ProxyError(400, "invalid_request_error", _UNREADABLE_BODY)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"not found: {request.method} {request.path}",
                   405: f"method {request.method} not allowed on {request.path}",
                   413: "request body is larger than this gateway accepts"}.get(
            exc.status, exc.text or exc.reason)
        allow = exc.headers.get("Allow")  # a 405's: the methods the path takes
        err = ProxyError(exc.status, error_type(exc.status),
                         message, {"allow": allow} if allow else None)
    except ConnectionError:
        raise  # the client left: aiohttp lets the connection go
    except Exception:
        if request.writer.output_size:  # the answer is under way: aiohttp breaks it off
            raise
        log.exception("unexpected error answering %s %s", request.method, request.path)
        err = ProxyError(500, "api_error", "internal error in the gateway")
    if STATE in request.app:
        request.app[STATE].metrics.rejections[err.kind] += 1
    return _answer(request.app.get(ERROR_PAGE), request.path, err)


def _answer(page: ErrorPage | None, path: str, err: ProxyError) -> web.Response:
    """The error page when `path` is a page's, else the envelope."""
    shown = page(path, err.status, err.message) if page is not None else None
    return shown if shown is not None else envelope(err.status, err.kind, err.message,
                                                    err.headers)


@web.middleware
async def unreadable_body_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """For an app mounted under one that setup_errors answers for, with its own handling of
    unexpected exceptions (the admin app): a body aiohttp cannot read is the client's error,
    a 400 error_middleware answers, not a fault of meterd's. Add it inside that handling."""
    try:
        return await handler(request)
    except RequestPayloadError:
        raise web.HTTPBadRequest(text=_UNREADABLE_BODY) from None


# The request line that starts a chunk a client sent: the path of the request aiohttp's
# parser refuses, which it does not tell (clients send a request's head in one write).
_REQUEST_LINE = re.compile(rb"[A-Z]{3,10} (/[^ ?#]*)")


class _Connection(RequestHandler):
    """aiohttp's HTTP connection, answering what its parser refuses before any handler runs
    (an over-long header or request line, too many headers, a body encoding it cannot
    decode, bytes that are not HTTP) in the envelope (a page's: the error page) rather than
    aiohttp's plain text. It neither echoes nor logs the refused bytes: an over-long line may
    hold a key. An over-long line is a 431, as RFC 6585 names it, not a plain 400."""

    __slots__ = ("_path",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._path = "/"

    def data_received(self, data: bytes) -> None:
        line = _REQUEST_LINE.match(data)
        if line is not None:
            self._path = line[1].decode("latin-1")
        super().data_received(data)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp does: the answer is under way
            raise ConnectionError("response already sent, cannot send an error")
        if isinstance(exc, LineTooLong):
            err = ProxyError(431, "invalid_request_error", "a request header or the request "
                             "line is longer than this gateway accepts")
        elif isinstance(exc, ContentEncodingError):
            err = ProxyError(400, "invalid_request_error", _ENCODING_REFUSED)
        elif status == 400:
            err = ProxyError(400, "invalid_request_error", "the request is not valid HTTP: a "
                             "malformed request line or header, or too many headers")
        else:  # what escaped a handler and error_middleware
            log.error("unexpected error answering a request", exc_info=exc)
            err = ProxyError(status, error_type(status),
                             "internal error in the gateway")
        if err.status < 500:
            log.info("refused a request aiohttp could not read: %d %s (%s)", err.status,
                     err.message, type(exc).__name__)
        assert isinstance(self._manager, _Server)
        response = _answer(self._manager.error_page, self._path, err)
        response.force_close()
        return response


class _Server(web.Server):
    def __init__(self, *args: Any, error_page: ErrorPage | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_page = error_page

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


def setup_errors(app: web.Application) -> None:
    """Every error of `app` in the envelope, or on the error page for a path that
    app[ERROR_PAGE] says is a page: what its handlers raise (error_middleware), and what
    aiohttp's HTTP parser refuses before a handler runs (_Connection).

    aiohttp has no hook for the second (aio-libs/aiohttp#3287): its connection class is
    fixed. So the server `app` makes for its runner (web.run_app's, the tests') is made
    again as a _Server, with the same arguments, whose connections are _Connections.
    """
    app.middlewares.append(error_middleware)
    make_server = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        made = make_server(**kwargs)
        return _Server(made.request_handler, request_factory=made.request_factory,
                       handler_cancellation=made.handler_cancellation, loop=made._loop,
                       error_page=app.get(ERROR_PAGE), **made._kwargs)

    object.__setattr__(app, "_make_handler", make_handler)
