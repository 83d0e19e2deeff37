"""POST /v1/metrics, /v1/logs, /v1/traces: Claude Code's OpenTelemetry, taken in over OTLP/HTTP.

Claude Code in gateway mode sends its telemetry to the gateway with the same credential as
inference (a static-key machine does when managed settings point OTLP here). Each export is
authenticated, decoded with the OpenTelemetry protobuf package (protobuf or JSON), flattened to
compact rows stamped with the developer and team, and queued on a Redis stream in one script
call that also applies the per-developer rate limit. The admin's rollup moves the rows into
DuckDB (ledger.telemetry); the proxy never touches DuckDB.

Telemetry must never get in the way of inference: an export over the rate limit, or one Redis
cannot take, is dropped and counted, and still answered 200 (with OTLP `partial_success`), as
the gateway protocol asks. Only a body that cannot be telemetry is refused: over the size cap
(413), not protobuf or JSON (415), undecodable (400).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from redis.exceptions import RedisError

from ledger.keyspace import KeySpace
from ledger.telemetry import stream_key
from proxy.errors import ProxyError
from proxy.state import STATE

PROTOBUF, JSON = "application/x-protobuf", "application/json"
STREAM_MAXLEN = 50_000  # exports waiting for the rollup: a stalled admin cannot grow Redis
_MAX_ATTR = 512  # characters kept of one attribute value
# Never stored: prompt and response text and raw bodies (opt-in content, not what finance or
# leads use), and what each row would repeat (the machine's user hash, the row's own time).
_LEFT_OUT = frozenset({"prompt", "prompt_text", "response", "body", "tool_input",
                       "tool_parameters", "user.id", "event.timestamp"})
# Attributes that have their own column.
_SESSION, _REQUEST, _COST = "session.id", "request_id", "cost_usd_micros"


@dataclass(frozen=True)
class Signal:
    request: type[Message]
    response: type[Message]
    rejected: str  # the partial_success field that counts what was dropped


SIGNALS = {
    "metrics": Signal(metrics_service_pb2.ExportMetricsServiceRequest,
                      metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": Signal(logs_service_pb2.ExportLogsServiceRequest,
                   logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
    "traces": Signal(trace_service_pb2.ExportTraceServiceRequest,
                     trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
}


class Intake:
    """The proxy's telemetry limits, and the script that admits and queues an export."""

    def __init__(self, max_bytes: int, per_minute: int) -> None:
        self.max_bytes, self.per_minute = max_bytes, per_minute
        self._script: Any = None

    async def queue(self, redis: Any, keyspace: KeySpace, developer_id: str,
                    fields: list[Any]) -> bool:
        """Queue one export's stream entry unless the developer is over the limit this
        minute (then nothing is written): one round trip. Raises RedisError."""
        if self._script is None:  # registered once (EVALSHA, reloaded on NOSCRIPT)
            self._script = redis.register_script(
                resources.files("proxy").joinpath("telemetry.lua").read_text())
        minute = int(time.time() // 60)
        entry = await self._script(
            keys=[f"{keyspace.base}:tlm:rl:{developer_id}:{minute}", stream_key(keyspace)],
            args=[self.per_minute, 120, STREAM_MAXLEN, *fields])
        return entry is not None


TELEMETRY = web.AppKey("telemetry", Intake)


def decode(signal: str, content_type: str, body: bytes) -> Message:
    """The export request in `body`; ValueError when it is not one."""
    message = SIGNALS[signal].request()
    try:
        if content_type == PROTOBUF:
            message.ParseFromString(body)
        else:
            json_format.Parse(body, message, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc) or "not an OTLP message") from None
    return message


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    value = getattr(v, kind)
    return value[:_MAX_ATTR] if isinstance(value, str) else value


def _attrs(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if kv.key not in _LEFT_OUT}


def _row(ts_nano: int, signal: str, name: str, value: float | None, attrs: dict[str, Any],
         cumulative: bool = False) -> list[Any]:
    """[ts ms, signal, name, value, cumulative, session, request id, cost µ$, other attrs]."""
    cost = attrs.pop(_COST, None)
    try:
        cost_micros = None if cost is None else int(cost)
    except (TypeError, ValueError):
        cost_micros = None
    return [ts_nano // 1_000_000, signal, name, value, cumulative,
            str(attrs.pop(_SESSION, "") or ""), str(attrs.pop(_REQUEST, "") or ""),
            cost_micros, attrs]


def rows(signal: str, message: Any) -> Iterator[list[Any]]:
    """The records of one export, flattened: a metric data point, a log event or a span each."""
    if signal == "metrics":
        for rm in message.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    yield from _metric_rows(metric)
    elif signal == "logs":
        for rl in message.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    attrs = _attrs(rec.attributes)
                    # Claude Code names the event in `event.name` and puts it in the body too.
                    name = str(attrs.pop("event.name", "") or _value(rec.body) or "")
                    if name and not name.startswith("claude_code."):
                        name = "claude_code." + name
                    yield _row(rec.time_unix_nano or rec.observed_time_unix_nano, "log",
                               name, None, attrs)
    else:
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    ms = max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e6
                    yield _row(span.start_time_unix_nano, "span", span.name, ms,
                               _attrs(span.attributes))


def _metric_rows(metric: Any) -> Iterator[list[Any]]:
    kind = metric.WhichOneof("data")
    if kind in ("sum", "gauge"):
        data = getattr(metric, kind)
        cumulative = kind == "sum" and (data.aggregation_temporality ==
                                        AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE)
        for p in data.data_points:
            value = p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)
            yield _row(p.time_unix_nano, "metric", metric.name, value, _attrs(p.attributes),
                       cumulative)
    elif kind in ("histogram", "exponential_histogram"):
        for p in getattr(metric, kind).data_points:
            yield _row(p.time_unix_nano, "metric", metric.name, p.sum, _attrs(p.attributes))


async def _read_capped(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(413, "request_too_large", f"telemetry body over {limit} bytes")
    body = bytearray()
    while chunk := await request.content.read(65536):
        body += chunk
        if len(body) > limit:  # chunked, or a compressed body that grew
            raise ProxyError(413, "request_too_large", f"telemetry body over {limit} bytes")
    return bytes(body)


def _answer(signal: str, content_type: str, dropped: int = 0,
            why: str = "") -> web.Response:
    response = SIGNALS[signal].response()
    if dropped:
        partial = response.partial_success  # type: ignore[attr-defined]
        setattr(partial, SIGNALS[signal].rejected, dropped)
        partial.error_message = why
    if content_type == PROTOBUF:
        return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
    return web.Response(text=json_format.MessageToJson(response), content_type=JSON)


async def export(request: web.Request) -> web.Response:
    """POST /v1/{metrics,logs,traces}: 200 whether stored or dropped."""
    state, intake = request.app[STATE], request.app[TELEMETRY]
    signal = request.path.rsplit("/", 1)[1]
    principal = state.authenticate(request.headers)
    content_type = request.content_type
    if content_type not in (PROTOBUF, JSON):
        raise ProxyError(415, "invalid_request_error",
                         f"telemetry must be OTLP as {PROTOBUF} or {JSON}")
    body = await _read_capped(request, intake.max_bytes)
    try:
        message = decode(signal, content_type, body)
    except ValueError as exc:
        raise ProxyError(400, "invalid_request_error",
                         f"not an OTLP {signal} export: {exc}") from None
    found = list(rows(signal, message))
    if not found:
        return _answer(signal, content_type)
    try:
        queued = await intake.queue(
            state.redis, state.keyspace, principal.developer_id,
            ["dev", principal.developer_id, "team", principal.team_id,
             "rows", orjson.dumps(found)])
    except RedisError:
        state.metrics.telemetry_dropped["redis_unavailable"] += len(found)
        return _answer(signal, content_type, len(found), "telemetry store unavailable; dropped")
    if not queued:
        state.metrics.telemetry_dropped["rate_limited"] += len(found)
        return _answer(signal, content_type, len(found),
                       f"over {intake.per_minute} telemetry exports a minute; dropped")
    return _answer(signal, content_type)


def setup_telemetry(app: web.Application, max_bytes: int, per_minute: int) -> None:
    """The three OTLP routes, any credential the proxy takes (checked in the handler)."""
    app[TELEMETRY] = Intake(max_bytes, per_minute)
    for signal in SIGNALS:
        app.router.add_post(f"/v1/{signal}", export)
