"""Every request the provider served is recorded and charged, whatever the client sent and
however settlement goes (issue 13, items 3 and 4)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import duckdb
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger.redis_client import connect_redis
from ledger.settlement import Settlement
from meterd.apps import DB_FILE, create_root_app
from meterd.settings import Settings
from tests.conftest import Gateway, RedisServer, free_port

RECORDED = {  # event field: the client header it records
    "session_id": b"x-claude-code-session-id",
    "agent_id": b"x-claude-code-agent-id",
    "parent_agent_id": b"x-claude-code-parent-agent-id",
    "request_class": b"x-claude-code-request-class",
    "prompt_id": b"x-claude-code-prompt-id",
}
MAX_TEXT = 256  # characters an event keeps of a free-text value
# The mock answers 1200 input and 60 output tokens unless told otherwise.
SONNET_COST = 1200 * 3 + 60 * 15  # $3 / $15 per million tokens, in µ$
FALLBACK_COST = 1200 * 5 + 60 * 25  # an unknown model: the $5 / $25 fallback


async def raw_post(gw: Gateway, headers: list[tuple[bytes, bytes]], body: bytes,
                   path: bytes = b"/v1/messages") -> int:
    """POST exactly these header bytes (an HTTP client would refuse or re-encode some);
    the status of the answer, read to its end."""
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = [b"POST " + path + b" HTTP/1.1", b"host: gw", b"connection: close",
            b"content-type: application/json", b"content-length: %d" % len(body)]
    head += [name + b": " + value for name, value in headers]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


async def spent_today(gw: Gateway) -> int:
    dev = (await gw.admin.db(gw.admin.catalog.developers))[0]
    key = gw.proxy.keyspace.counter("developer", dev["id"], "daily", datetime.now(UTC))
    return int(await gw.proxy.redis.hget(key, "spent") or 0)


def body(model: str) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 64,
                         "messages": [{"role": "user", "content": "Hello"}]})


def sized_body(stream: bool, size: int = 400) -> bytes:
    """A request of exactly `size` bytes."""
    doc: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": stream,
                           "messages": [{"role": "user", "content": ""}]}
    doc["messages"][0]["content"] = "x" * (size - len(orjson.dumps(doc)))
    raw = orjson.dumps(doc)
    assert len(raw) == size
    return raw


# A 400-byte body: admission estimates ceil(400 / 4) = 100 prompt tokens and min(100, 4096) =
# 100 output tokens: 100 × $3 + 100 × $15 per million = 1,800 µ$ on claude-sonnet-4-6.
ESTIMATED_COST = 100 * 3 + 100 * 15


# -- item 3: whatever the client sent, whatever fails on the way ----------------------------


async def test_a_header_that_is_not_utf8_is_recorded_and_charged(gateway: Gateway) -> None:
    key = (await gateway.developer()).encode()
    for name, header in RECORDED.items():
        status = await raw_post(gateway, [(b"x-api-key", key), (header, b"caf\xe9")],
                                body("claude-sonnet-4-6"))
        assert status == 200
        event = (await gateway.settled(1 + list(RECORDED).index(name)))[-1]
        assert event[name] == "caf\N{REPLACEMENT CHARACTER}"
        assert event["cost_micros"] == str(SONNET_COST)
    assert await spent_today(gateway) == len(RECORDED) * SONNET_COST


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)  # an outage to inject
async def test_a_header_that_is_not_utf8_is_spooled_in_an_outage_and_charged_after(
        start_gateway, own_redis: RedisServer) -> None:
    gw = await start_gateway(redis_url=own_redis.url, redis_outage_policy="fail_open")
    key = (await gw.developer()).encode()
    own_redis.stop(save=True)
    status = await raw_post(gw, [(b"x-api-key", key),
                                 (b"x-claude-code-session-id", b"caf\xe9" * 2000)],
                            body("claude-sonnet-4-6"))
    assert status == 200
    await gw.proxy.drain()
    assert gw.proxy.gate.spool.depth == 1
    own_redis.start()
    for _ in range(100):  # the maintenance loop replays about once a second
        if gw.proxy.gate.spool.depth == 0:
            break
        await asyncio.sleep(0.05)
    (event,) = await gw.events()
    assert event["session_id"] == ("caf\N{REPLACEMENT CHARACTER}" * 2000)[:MAX_TEXT]
    assert event["cost_micros"] == str(SONNET_COST)
    assert await spent_today(gw) == SONNET_COST


# What HTTP lets a header value hold: tab, visible ASCII and space, and any byte from 0x80
# (obs-text). Every other byte is mapped onto one of these, so all of them are drawn.
_VALUE_BYTE = bytes(b if b == 9 or 0x20 <= b < 0x7F or b >= 0x80 else 0x41 + b % 26
                    for b in range(256))
header_values = st.one_of(st.binary(max_size=48), st.binary(min_size=200, max_size=8000)).map(
    lambda raw: raw.translate(_VALUE_BYTE))
models = st.one_of(st.just("claude-sonnet-4-6"), st.text(min_size=1, max_size=40),
                   st.text(min_size=300, max_size=20_000))


def recorded(value: bytes) -> str:
    """What the event should hold for a header value (a small reference of the rule): its
    text, with bytes that are not UTF-8 as U+FFFD, at most MAX_TEXT characters."""
    return value.strip(b" \t").decode("utf-8", "replace")[:MAX_TEXT]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(headers=st.fixed_dictionaries({name: header_values for name in RECORDED}),
       model=models)
async def test_any_recorded_header_or_model_is_settled_at_its_exact_cost(
        logged_gateway: tuple[Gateway, str], headers: dict[str, bytes], model: str) -> None:
    gw, key = logged_gateway
    known = gw.proxy.prices.row_for(model) is not None
    assume(model == "claude-sonnet-4-6" or not known)
    before = len(await gw.events())
    spent = await spent_today(gw)
    status = await raw_post(gw, [(b"x-api-key", key.encode()),
                                 *((RECORDED[name], value) for name, value in headers.items())],
                            body(model))
    assert status == 200
    event = (await gw.settled(before + 1))[before]
    cost = SONNET_COST if known else FALLBACK_COST
    assert event["cost_micros"] == str(cost)
    assert await spent_today(gw) == spent + cost
    for name, value in headers.items():
        assert event[name] == recorded(value)
    assert event["model"] == model[:MAX_TEXT].replace("\x1f", " ").replace("\x1e", " ")
    log = gw.proxy.access_log
    assert log is not None and log.stream is not None
    log.flush()
    last = log.stream.getvalue().rstrip("\n").rsplit("\n", 1)[-1]  # JSON lines: "\n" only
    assert orjson.loads(last)["id"] == event["id"]


@pytest.fixture
async def logged_gateway(start_gateway) -> tuple[Gateway, str]:
    """A gateway that writes its access log (to a buffer: the log takes every event too), and
    a developer's key."""
    gw = await start_gateway(log_level="info")
    assert gw.proxy.access_log is not None
    gw.proxy.access_log.stream = io.StringIO()
    return gw, await gw.developer()


async def test_a_fault_while_pricing_still_charges_what_admission_estimated(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await gateway.developer()

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in pricing")

    monkeypatch.setattr(gateway.proxy.prices, "cost", broken)
    resp = await gateway.client.post("/v1/messages", data=sized_body(False),
                                     headers={"x-api-key": key})
    assert resp.status == 200 and b'"usage"' in await resp.read()
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "settlement_error" and event["estimated"] == "1"
    assert event["model"] == "claude-sonnet-4-6" and event["status"] == "200"
    assert event["cost_micros"] == str(ESTIMATED_COST)
    assert await spent_today(gateway) == ESTIMATED_COST


async def test_a_fault_while_packing_the_event_still_charges_the_cost(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await gateway.developer()
    faults = iter([RuntimeError("a bug in packing")])
    packing = Settlement.packed

    def broken_once(settlement: Settlement) -> str:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return packing(settlement)

    monkeypatch.setattr(Settlement, "packed", broken_once)
    resp = await gateway.client.post("/v1/messages", data=body("claude-sonnet-4-6"),
                                     headers={"x-api-key": key})
    assert resp.status == 200
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "settlement_error" and event["estimated"] == "1"
    assert event["cost_micros"] == str(SONNET_COST)  # priced before the fault
    assert await spent_today(gateway) == SONNET_COST


# -- item 4: answered, but the client or the shutdown cut our reading short ----------------


@dataclass
class Served:
    """The gateway served as `meterd serve` serves it (web.run_app's runner: no handler
    cancellation when a client leaves, shutdown_timeout = shutdown_grace)."""

    runner: web.AppRunner
    gateway: Gateway  # handles on its insides (its `client` is unused)
    settings: Settings

    @property
    def url(self) -> str:
        site = next(iter(self.runner.sites))
        return site.name


@pytest.fixture
async def served(make_settings, upstream) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    runners: list[web.AppRunner] = []

    async def start(**changes: Any) -> Served:
        settings = make_settings(**{"upstream_url": upstream.url, **changes})
        fresh = connect_redis(settings.redis_url)
        await fresh.flushdb()
        await fresh.aclose()
        app = create_root_app(settings)
        runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_grace, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", free_port()).start()
        runners.append(runner)
        return Served(runner, Gateway(None, app, upstream), settings)  # type: ignore[arg-type]

    yield start
    for runner in runners:
        if runner.server is not None:  # not yet shut down by the test
            await runner.cleanup()


def ledger_rows(settings: Settings) -> list[dict[str, Any]]:
    """The requests a stopped gateway rolled up into its DuckDB file."""
    columns = ("status", "error_type", "estimated", "input_tokens", "output_tokens",
               "cost_micros")
    with duckdb.connect(str(settings.data_path / DB_FILE), read_only=True) as conn:
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM requests").fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]


async def leave_while_the_provider_answers(host: str, port: int, gw: Gateway, key: str,
                                           body: bytes, delay_ms: int = 400) -> None:
    """Send a request the mock answers after `delay_ms`, and hang up once the provider has it
    (before the first byte of its answer)."""
    _, writer = await asyncio.open_connection(host, port)
    head = [b"POST /v1/messages HTTP/1.1", b"host: gw", b"content-type: application/json",
            b"content-length: %d" % len(body), b"x-api-key: " + key.encode(),
            b"x-mock-delay-ms: %d" % delay_ms]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    while not gw.upstream.recorded:
        await asyncio.sleep(0.01)
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_before_the_first_byte_is_billed_the_estimate(
        served, stream: bool) -> None:
    """As `meterd serve` runs: the handler carries on after the client left, the provider
    answers, and nobody is there to take it."""
    body = sized_body(stream)
    srv = await served()
    gw = srv.gateway
    key = await gw.developer()
    host, port = srv.url.removeprefix("http://").split(":")
    await leave_while_the_provider_answers(host, int(port), gw, key, body)
    (event,) = await gw.settled(1, timeout=5)
    assert event["error_type"] == "client_disconnected"
    assert event["estimated"] == "1"
    assert (event["input_tokens"], event["output_tokens"]) == ("100", "100")
    assert event["cost_micros"] == str(ESTIMATED_COST)


async def test_a_client_that_leaves_while_the_request_waits_is_billed_the_estimate(
        gateway: Gateway) -> None:
    """The test harness cancels the handler when its client leaves (handler_cancellation):
    the request is cut while it waits for the provider."""
    key = await gateway.developer()
    server = gateway.client.server
    await leave_while_the_provider_answers(server.host, server.port, gateway, key,
                                           sized_body(True), delay_ms=2000)
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "client_disconnected"
    assert event["estimated"] == "1" and event["status"] == "0"
    assert event["cost_micros"] == str(ESTIMATED_COST)


async def test_a_request_still_waiting_when_the_shutdown_grace_ends_is_billed_the_estimate(
        served) -> None:
    srv = await served(shutdown_grace=1.0)
    gw = srv.gateway
    key = await gw.developer()
    async with aiohttp.ClientSession() as session:
        waiting = asyncio.ensure_future(session.post(
            srv.url + "/v1/messages", data=sized_body(True),
            headers={"x-api-key": key, "x-mock-delay-ms": "30000"}))
        while not gw.upstream.recorded:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await srv.runner.cleanup()
        took = time.monotonic() - started
        with contextlib.suppress(aiohttp.ClientError):
            await waiting
    assert 1.0 <= took < 1.5  # the grace, not twice the grace
    (row,) = ledger_rows(srv.settings)
    assert row == {"status": 0, "error_type": "shutdown", "estimated": True,
                   "input_tokens": 100, "output_tokens": 100, "cost_micros": ESTIMATED_COST}


async def test_a_stream_still_open_when_the_shutdown_grace_ends_is_cut_there_and_billed(
        served) -> None:
    srv = await served(shutdown_grace=1.0)
    gw = srv.gateway
    key = await gw.developer()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(srv.url + "/v1/messages", data=sized_body(True), headers={
            "x-api-key": key, "x-mock-text-chunks": "1000", "x-mock-event-delay-ms": "20"})
        first = await resp.content.readany()
        started = time.monotonic()
        closing = asyncio.ensure_future(srv.runner.cleanup())
        with contextlib.suppress(aiohttp.ClientError):
            first += await resp.read()
        await closing
        took = time.monotonic() - started
    assert b"message_stop" not in first  # cut, not finished
    assert 1.0 <= took < 1.5  # the grace, not twice the grace
    (row,) = ledger_rows(srv.settings)
    assert row["error_type"] == "shutdown" and row["estimated"] is True
    assert row["input_tokens"] == 1200  # from message_start
    # About 4 characters a token of the text relayed, at $3 / $15 per million tokens.
    assert row["output_tokens"] > 0
    assert row["cost_micros"] == 1200 * 3 + row["output_tokens"] * 15


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps({"type": name, **data}))


# A whole answer: 1,200 input and 60 output tokens of claude-sonnet-4-6.
WHOLE_ANSWER = b"".join([
    _event("message_start", {"message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 1200, "output_tokens": 1}}}),
    _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
    _event("content_block_stop", {"index": 0}),
    _event("message_delta", {"delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": 60}}),
    _event("message_stop", {}),
])


@pytest.mark.parametrize("cut", [len(WHOLE_ANSWER), WHOLE_ANSWER.index(b"message_stop") + 8],
                         ids=["in one write", "message_stop split in its name"])
async def test_a_stream_is_settled_before_its_end_reaches_the_client(
        start_gateway: Callable[..., Awaitable[Gateway]], aiohttp_server: Any, cut: int) -> None:
    """Once the client has `message_stop` the answer is whole for it, though the provider may
    not have closed the stream yet: a proxy killed there must have settled it already (the
    journal keeps a settlement from the moment it is sent). Also when the event arrives in
    two reads."""
    close = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(WHOLE_ANSWER[:cut])
        await asyncio.sleep(0.2)  # the proxy reads the two parts apart
        await response.write(WHOLE_ANSWER[cut:])
        await close.wait()
        await response.write_eof()
        return response

    provider = web.Application()
    provider.router.add_post("/v1/messages", answer)
    server = await aiohttp_server(provider)
    gw = await start_gateway(upstream_url=str(server.make_url("")).rstrip("/"))
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=sized_body(True), headers={"x-api-key": key})
    try:
        seen = b""
        while not seen.endswith(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"):
            seen += await resp.content.readany()
        # Settled while the provider still holds the stream open.
        (event,) = await gw.settled(1, timeout=2)
        assert (event["input_tokens"], event["output_tokens"]) == ("1200", "60")
        assert event["cost_micros"] == str(SONNET_COST) and event["estimated"] == "0"
    finally:
        close.set()
    await resp.read()
    await gw.proxy.drain()
    assert len(await gw.events()) == 1  # and once only
