"""Usage that must be billed even when a stream does not end well."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import orjson

from proxy.access_log import AccessLog
from tests.conftest import Gateway

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 512, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})


async def test_client_that_disconnects_mid_stream_is_billed_estimated(gateway: Gateway) -> None:
    key = await gateway.developer()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gateway.url + "/v1/messages", data=BODY, headers={
            "x-api-key": key, "x-mock-text-chunks": "40", "x-mock-event-delay-ms": "50"})
        seen = b""
        while b"content_block_delta" not in seen:
            seen += await resp.content.readany()
        resp.close()  # the developer hit Ctrl-C
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "client_disconnected"
    assert event["estimated"] == "1"
    assert event["input_tokens"] == "1200"  # from message_start
    assert 1 <= int(event["output_tokens"]) < 60  # estimated from what was relayed
    # 1200 × $3 + output × $15, in µ$
    assert int(event["cost_micros"]) == 1200 * 3 + int(event["output_tokens"]) * 15


async def test_upstream_reset_mid_stream_is_billed_and_breaks_the_client_stream(
        gateway: Gateway) -> None:
    key = await gateway.developer()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gateway.url + "/v1/messages", data=BODY,
                                  headers={"x-api-key": key, "x-mock-fail": "drop"})
        assert resp.status == 200
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError:
            body = b"(broken)"
        assert b"message_stop" not in body
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "upstream_reset"
    assert event["estimated"] == "1" and event["input_tokens"] == "1200"


async def test_error_event_after_200_is_recorded_with_its_type(gateway: Gateway) -> None:
    key = await gateway.developer()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gateway.url + "/v1/messages", data=BODY,
                                  headers={"x-api-key": key, "x-mock-fail": "error-event"})
        body = await resp.read()
    assert b"event: error" in body  # relayed to the client as sent
    (event,) = await gateway.settled(1)
    assert event["status"] == "200"
    assert event["error_type"] == "overloaded_error"
    assert event["input_tokens"] == "1200"


async def test_claude_code_headers_are_recorded_on_the_event(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await gateway.client.post("/v1/messages?beta=true", data=BODY, headers={
        "x-api-key": key, "x-claude-code-session-id": "8d0c-session",
        "x-claude-code-agent-id": "agent-2", "x-claude-code-parent-agent-id": "agent-1",
        "x-claude-code-request-class": "main", "x-claude-code-prompt-id": "p-77"})
    await resp.read()
    (event,) = await gateway.settled(1)
    assert (event["session_id"], event["agent_id"], event["parent_agent_id"],
            event["request_class"], event["prompt_id"]) == (
        "8d0c-session", "agent-2", "agent-1", "main", "p-77")


async def test_pings_are_relayed_during_a_slow_stream(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await gateway.client.post("/v1/messages", data=BODY, headers={
        "x-api-key": key, "x-mock-ping-interval-ms": "50", "x-mock-duration-ms": "300"})
    first = await asyncio.wait_for(resp.content.readany(), 2)
    body = first + await resp.read()
    assert body.count(b"event: ping") >= 4
    (event,) = await gateway.settled(1)
    assert event["estimated"] == "0" and event["output_tokens"] == "60"


async def test_one_access_log_line_per_request_without_prompt_or_key(start_gateway,
                                                                    tmp_path) -> None:
    quiet = await start_gateway(data_dir=str(tmp_path / "quiet"))  # log level warning
    assert quiet.proxy.access_log is None
    gateway = await start_gateway(log_level="info")
    assert isinstance(gateway.proxy.access_log, AccessLog)
    log = io.StringIO()
    gateway.proxy.access_log.stream = log
    key = await gateway.developer()
    secret_prompt = b"my-secret-prompt-text"
    body = BODY.replace(b"Hello", secret_prompt)
    for _ in range(2):
        await (await gateway.client.post("/v1/messages", data=body,
                                         headers={"x-api-key": key})).read()
    await gateway.settled(2)
    gateway.proxy.access_log.flush()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        record = orjson.loads(line)
        assert record["status"] == 200 and record["input_tokens"] == 1200
        assert record["cost_micros"] == 4500 and record["ts_ms"] > 0
    assert secret_prompt.decode() not in log.getvalue() and key not in log.getvalue()
