"""A fake Anthropic Messages API for demos, tests and benchmarks (`meterd mock-upstream`).

It answers `POST /v1/messages` (streaming and not) and `POST /v1/messages/count_tokens` with the
wire format of the real API, so the official SDK and Claude Code accept it. It must stay far
cheaper than the gateway in front of it: every answer is precomputed bytes, and a request only
splices in its message id and model (the bytes after the id are cached per model).

Request headers change one answer (the gateway forwards them): `x-mock-usage` (JSON usage
object), `x-mock-text-chunks`, `x-mock-delay-ms`, `x-mock-event-delay-ms`,
`x-mock-ping-interval-ms`, `x-mock-duration-ms`, `x-mock-status` (answer with that error) and
`x-mock-fail` (`error-event`: an `error` event mid-stream; `drop`: cut the connection mid-stream).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.envelope import error_body, error_type

RECORDED: web.AppKey[collections.deque[dict[str, Any]]] = web.AppKey(
    "mock_upstream_recorded", collections.deque
)
"""The last requests received, oldest first: {method, path_qs, headers, body}."""

RECORD_LIMIT = 200
DEFAULT_USAGE: Mapping[str, int] = {
    "input_tokens": 1200,
    "output_tokens": 60,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
MAX_TEXT_CHUNKS = 10_000
_MAX_MS = 3_600_000
_CACHE_LIMIT = 64  # answer shapes and model names kept; a benchmark uses a handful

_WORDS = ("Hello", "from", "the", "meterd", "mock", "upstream:", "this", "answer", "is",
          "canned,", "cheap", "and", "metered.")
# Markers in the template JSON where a request's message id and model go.
_ID = "@@MOCK_ID@@"
_MODEL = "@@MOCK_MODEL@@"
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_FAILS = ("error-event", "drop")

# The real API's wording per status (its error type: proxy.envelope).
_WORDING: dict[int, str] = {
    400: "messages: Field required",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
         "Billing to upgrade or purchase credits.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "This request would exceed your organization's rate limit of 50 requests per minute. "
         "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
         "response headers for current usage. Please reduce the prompt length or the maximum "
         "tokens requested, or try again later. You may also contact sales at "
         "https://www.anthropic.com/contact-sales to discuss your options for a rate limit "
         "increase.",
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}
# Extra headers the real API sends with these errors; clients decide on retries from them.
_ERROR_HEADERS: dict[int, dict[str, str]] = {
    429: {"retry-after": "7", "x-should-retry": "true"},
    500: {"x-should-retry": "true"},
    529: {"x-should-retry": "true"},
}


_ERROR_BODIES = {status: error_body(error_type(status), wording)
                 for status, wording in _WORDING.items()}
_OVERLOADED_EVENT = b"event: error\ndata: " + _ERROR_BODIES[529] + b"\n\n"


def _default_usage() -> dict[str, Any]:
    return dict(DEFAULT_USAGE)


@dataclass(frozen=True)
class MockOptions:
    """How the mock answers when a request carries no `x-mock-*` header."""

    api_key: str = "sk-ant-mock"  # "" accepts any credential, or none
    usage: dict[str, Any] = field(default_factory=_default_usage)
    text_chunks: int = 6
    delay_ms: int = 0
    event_delay_ms: int = 0
    ping_interval_ms: int = 0
    duration_ms: int = 0


class _BadHeader(ValueError):
    """An `x-mock-*` header is malformed; the message names it."""


class _Template:
    """JSON with a message id and a model spliced in; the bytes after the id cached per model."""

    def __init__(self, doc: dict[str, Any], prefix: bytes = b"", suffix: bytes = b"") -> None:
        raw = orjson.dumps(doc)
        head, rest = raw.split(_ID.encode())
        self._head = prefix + head
        self._mid, tail = rest.split(orjson.dumps(_MODEL))
        self._tail = tail + suffix
        self._tails: dict[str, bytes] = {}

    def render(self, msg_id: bytes, model: str) -> bytes:
        tail = self._tails.get(model)
        if tail is None:
            if len(self._tails) >= _CACHE_LIMIT:
                self._tails.clear()
            tail = self._tails[model] = self._mid + orjson.dumps(model) + self._tail
        return self._head + msg_id + tail


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _message(content: list[dict[str, Any]], stop_reason: str | None,
             usage: dict[str, Any]) -> dict[str, Any]:
    """A Message object in the real API's key order, with id and model left as markers."""
    return {
        "id": _ID,
        "type": "message",
        "role": "assistant",
        "model": _MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


class _Answer:
    """Every byte of one answer shape (usage and chunk count), streaming and not."""

    def __init__(self, usage: Mapping[str, Any], text_chunks: int) -> None:
        chunks = [_WORDS[i % len(_WORDS)] + " " for i in range(text_chunks)]
        counts = {key: usage.get(key, 0) for key in
                  ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}

        self.message = _Template(_message(
            [{"type": "text", "text": "".join(chunks)}], "end_turn",
            {**counts, "output_tokens": usage.get("output_tokens", 0), **usage}))

        # message_start carries the input side; output_tokens is a placeholder until the end.
        start_usage: dict[str, Any] = dict(counts)
        if "cache_creation" in usage:
            start_usage["cache_creation"] = usage["cache_creation"]
        start_usage["output_tokens"] = 1
        for key in ("service_tier", "speed", "inference_geo"):
            if key in usage:
                start_usage[key] = usage[key]
        start = {"type": "message_start", "message": _message([], None, start_usage)}

        # message_delta usage is cumulative: it repeats the input side and gives the output.
        delta_usage = {**counts, "output_tokens": usage.get("output_tokens", 0)}
        if "server_tool_use" in usage:
            delta_usage["server_tool_use"] = usage["server_tool_use"]

        self.deltas = tuple(
            _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": text}})
            for text in chunks
        )
        self.block_start = _event("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""},
        })
        self.events = (
            self.block_start,
            _PING,
            *self.deltas,
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage,
            }),
            _event("message_stop", {"type": "message_stop"}),
        )
        prefix = b"event: message_start\ndata: "
        self.start = _Template(start, prefix, b"\n\n")
        self.stream = _Template(start, prefix, b"\n\n" + b"".join(self.events))

    def failing_events(self, fail: str) -> tuple[bytes, ...]:
        """The events after message_start when the stream is made to fail."""
        if fail == "drop":
            return (self.block_start, *self.deltas[:2])
        return (self.block_start, _PING, *self.deltas[: (len(self.deltas) + 1) // 2],
                _OVERLOADED_EVENT)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one request gets: the answer's bytes, its timing and how it fails."""

    answer: _Answer
    delay_ms: int
    event_delay_ms: int
    ping_interval_ms: int
    duration_ms: int
    status: int = 0  # 0: a normal answer
    fail: str = ""

    @property
    def streams_at_once(self) -> bool:
        return not (self.fail or self.event_delay_ms or self.duration_ms)


_HEADERS = ("x-mock-usage", "x-mock-text-chunks", "x-mock-delay-ms", "x-mock-event-delay-ms",
            "x-mock-ping-interval-ms", "x-mock-duration-ms", "x-mock-status", "x-mock-fail")


def _int_header(name: str, value: str | None, default: int, limit: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise _BadHeader(f"{name}: expected an integer, got {value!r}") from None
    if not 0 <= number <= limit:
        raise _BadHeader(f"{name}: expected 0..{limit}, got {number}")
    return number


class _Mock:
    """The handlers and their precomputed answers."""

    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self._bearer = f"Bearer {options.api_key}"
        self._ids = itertools.count(1)
        self._answers: dict[tuple[str | None, int], _Answer] = {}
        self._default = _Plan(_Answer(options.usage, options.text_chunks), options.delay_ms,
                              options.event_delay_ms, options.ping_interval_ms,
                              options.duration_ms)

    # -- request handling -------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        number = next(self._ids)
        rid = f"req_mock_{number}"
        body = await _read_and_record(request)
        if not self._authorized(request):
            return _error(401, rid)
        try:
            plan = self._plan(request.headers)
        except _BadHeader as exc:
            return _error(400, rid, str(exc))
        if plan.delay_ms:
            await asyncio.sleep(plan.delay_ms / 1000)
        if plan.status:
            return _error(plan.status, rid)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, rid, "There was an error parsing the body of your request.")
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, str):
            return _error(400, rid, "model: Field required")
        msg_id = b"msg_mock_%d" % number
        if doc.get("stream") is True:
            return await self._stream(request, plan, rid, msg_id, model)
        if plan.duration_ms:
            await asyncio.sleep(plan.duration_ms / 1000)
        if plan.fail == "drop":
            _drop(request)
            return web.Response()  # never reaches the client
        if plan.fail:
            return _error(529, rid)
        return web.Response(body=plan.answer.message.render(msg_id, model),
                            content_type="application/json", headers={"request-id": rid})

    async def count_tokens(self, request: web.Request) -> web.Response:
        rid = f"req_mock_{next(self._ids)}"
        body = await _read_and_record(request)
        if not self._authorized(request):
            return _error(401, rid)
        return web.Response(body=b'{"input_tokens":%d}' % (len(body) // 4),
                            content_type="application/json", headers={"request-id": rid})

    async def not_found(self, request: web.Request) -> web.Response:
        rid = f"req_mock_{next(self._ids)}"
        await _read_and_record(request)
        return _error(404, rid)

    # -- helpers ----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        key = self.options.api_key
        headers = request.headers
        return (not key or headers.get("x-api-key") == key
                or headers.get("Authorization") == self._bearer)

    def _plan(self, headers: Mapping[str, str]) -> _Plan:
        values = [headers.get(name) for name in _HEADERS]
        if not any(value is not None for value in values):
            return self._default
        usage, chunks, delay, event_delay, ping, duration, status, fail = values
        default = self._default
        if fail is not None and fail not in _FAILS:
            raise _BadHeader(f"x-mock-fail: expected one of {', '.join(_FAILS)}, got {fail!r}")
        return _Plan(
            answer=self._answer(usage, _int_header("x-mock-text-chunks", chunks,
                                                   self.options.text_chunks, MAX_TEXT_CHUNKS)),
            delay_ms=_int_header("x-mock-delay-ms", delay, default.delay_ms, _MAX_MS),
            event_delay_ms=_int_header("x-mock-event-delay-ms", event_delay,
                                       default.event_delay_ms, _MAX_MS),
            ping_interval_ms=_int_header("x-mock-ping-interval-ms", ping,
                                         default.ping_interval_ms, _MAX_MS),
            duration_ms=_int_header("x-mock-duration-ms", duration, default.duration_ms,
                                    _MAX_MS),
            status=_status(status),
            fail=fail or "",
        )

    def _answer(self, usage_json: str | None, text_chunks: int) -> _Answer:
        if usage_json is None and text_chunks == self.options.text_chunks:
            return self._default.answer
        key = (usage_json, text_chunks)
        answer = self._answers.get(key)
        if answer is None:
            usage = self.options.usage if usage_json is None else _parse_usage(usage_json)
            if len(self._answers) >= _CACHE_LIMIT:
                self._answers.clear()
            answer = self._answers[key] = _Answer(usage, text_chunks)
        return answer

    async def _stream(self, request: web.Request, plan: _Plan, rid: str, msg_id: bytes,
                      model: str) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream; charset=utf-8",
                   "Cache-Control": "no-cache", "request-id": rid}
        answer = plan.answer
        if plan.streams_at_once:
            # One write for headers and body, still chunked like the real API.
            whole = web.Response(body=answer.stream.render(msg_id, model), headers=headers)
            whole.enable_chunked_encoding()
            return whole

        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(answer.start.render(msg_id, model))
        if plan.duration_ms:
            await _keep_alive(response, plan.duration_ms, plan.ping_interval_ms)
        events = answer.failing_events(plan.fail) if plan.fail else answer.events
        for event in events:
            if plan.event_delay_ms:
                await asyncio.sleep(plan.event_delay_ms / 1000)
            await response.write(event)
        if plan.fail == "drop":
            _drop(request)
            return response
        await response.write_eof()
        return response


def _status(value: str | None) -> int:
    status = _int_header("x-mock-status", value, 0, 599)
    if status and status < 400:
        raise _BadHeader(f"x-mock-status: expected an error status 400..599, got {status}")
    return status


def _parse_usage(value: str) -> dict[str, Any]:
    try:
        usage = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise _BadHeader("x-mock-usage: not valid JSON") from None
    if not isinstance(usage, dict):
        raise _BadHeader("x-mock-usage: expected a JSON object")
    return usage


async def _keep_alive(response: web.StreamResponse, duration_ms: int, interval_ms: int) -> None:
    """Stay silent for `duration_ms`, but for a `ping` every `interval_ms` (a slow answer)."""
    pings = duration_ms // interval_ms if interval_ms else 0
    for _ in range(pings):
        await asyncio.sleep(interval_ms / 1000)
        await response.write(_PING)
    if rest := duration_ms - pings * interval_ms:
        await asyncio.sleep(rest / 1000)


def _drop(request: web.Request) -> None:
    # Closing the transport mid-body leaves the chunked payload unterminated: the client sees
    # an incomplete response, like an upstream reset. aiohttp's later write_eof fails quietly.
    if request.transport is not None:
        request.transport.close()


def _error(status: int, rid: str, message: str | None = None) -> web.Response:
    body = _ERROR_BODIES.get(status) if message is None else None
    if body is None:
        body = error_body(error_type(status),
                          message or _WORDING.get(status, f"mock error {status}"))
    return web.Response(status=status, body=body, content_type="application/json",
                        headers={"request-id": rid, **_ERROR_HEADERS.get(status, {})})


async def _read_and_record(request: web.Request) -> bytes:
    body = await request.read()
    request.app[RECORDED].append({
        "method": request.method,
        "path_qs": request.path_qs,
        "headers": [[name, value] for name, value in request.headers.items()],
        "body": body,
    })
    return body


def create_mock_app(options: MockOptions | None = None) -> web.Application:
    """The mock upstream as an aiohttp app; `web.run_app` is the CLI's business."""
    mock = _Mock(options or MockOptions())
    app = web.Application()
    app[RECORDED] = collections.deque(maxlen=RECORD_LIMIT)
    app.router.add_post("/v1/messages", mock.messages)
    app.router.add_post("/v1/messages/count_tokens", mock.count_tokens)
    app.router.add_route("*", "/{tail:.*}", mock.not_found)
    return app


# -- command line ---------------------------------------------------------------------------


def _usage_arg(value: str) -> dict[str, Any]:
    try:
        return _parse_usage(value)
    except _BadHeader as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("x-mock-usage", "--usage")) from None


def _non_negative_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {number}")
    return number


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the mock's options to `meterd mock-upstream` (the CLI adds --host and --port)."""
    defaults = MockOptions()
    add = parser.add_argument
    add("--api-key", default=defaults.api_key,
        help="credential the mock requires (x-api-key or Bearer); '' accepts any "
             "(default: %(default)s)")
    add("--usage", type=_usage_arg, default=defaults.usage, metavar="JSON",
        help="usage object of every answer, e.g. '{\"input_tokens\": 900, "
             "\"output_tokens\": 40}' (default: 1200 in, 60 out)")
    add("--text-chunks", type=_non_negative_arg, default=defaults.text_chunks, metavar="N",
        help="content_block_delta events per answer (default: %(default)s)")
    add("--delay-ms", type=_non_negative_arg, default=defaults.delay_ms, metavar="MS",
        help="wait before the response headers (default: %(default)s)")
    add("--event-delay-ms", type=_non_negative_arg, default=defaults.event_delay_ms, metavar="MS",
        help="wait between stream events (default: %(default)s)")
    add("--ping-interval-ms", type=_non_negative_arg, default=defaults.ping_interval_ms,
        metavar="MS",
        help="during --duration-ms, send a ping event this often (default: %(default)s)")
    add("--duration-ms", type=_non_negative_arg, default=defaults.duration_ms, metavar="MS",
        help="stay quiet (but for pings) this long after message_start (default: %(default)s)")


def options_from_args(args: argparse.Namespace) -> MockOptions:
    """The MockOptions that `configure_parser`'s flags describe."""
    return MockOptions(
        api_key=args.api_key,
        usage=dict(args.usage),
        text_chunks=args.text_chunks,
        delay_ms=args.delay_ms,
        event_delay_ms=args.event_delay_ms,
        ping_interval_ms=args.ping_interval_ms,
        duration_ms=args.duration_ms,
    )

