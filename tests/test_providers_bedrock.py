"""Amazon Bedrock behind meterd: Anthropic-format clients translated to InvokeModel, and
Bedrock-format clients (Claude Code with CLAUDE_CODE_USE_BEDROCK) relayed unchanged."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

from ledger.pricing import PriceTable
from ledger.usage import Usage
from proxy.providers.bedrock import BedrockProvider, EventStreamMeter
from proxy.providers.eventstream import encode_message
from tests.conftest import Gateway
from tests.fakes.eventstream import chunk_frame, exception_frame
from tests.fakes.gateways import (
    AWS_KEY,
    AWS_TOKEN,
    Served,
    StartGateway,
    bedrock_provider,
)
from tests.provider_requests import BODY, ask, counted_tokens, rate_limit_error, sdk_for
from tests.test_sdk import USAGE

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures

REGIONAL = Fraction(11, 10)


def expected_cost(multiplier: Fraction = REGIONAL) -> int:
    return PriceTable.load().cost("claude-sonnet-4-6", Usage.from_api(USAGE), multiplier).micros


async def bedrock_gateway(start_gateway: StartGateway, bedrock: Served,
                          **extra: Any) -> Gateway:
    return await start_gateway(providers={"bedrock-us": bedrock_provider(
        bedrock, multiplier="1.1", **extra)})


@pytest.fixture
async def gw(start_gateway: StartGateway, bedrock: Served) -> Gateway:
    """A gateway whose one provider is the fake Bedrock."""
    return await bedrock_gateway(start_gateway, bedrock)


def test_event_stream_frames_round_trip_through_botocores_decoder() -> None:
    frames = chunk_frame({"type": "message_stop"}) + exception_frame("throttlingException", "x")
    frames += encode_message({":message-type": "event", ":event-type": "chunk"}, b"{}")
    buffer = EventStreamBuffer()
    for i in range(0, len(frames), 5):  # split anywhere
        buffer.add_data(frames[i:i + 5])
    messages = list(buffer)
    assert [m.headers[":message-type"] for m in messages] == ["event", "exception", "event"]
    inner = base64.b64decode(orjson.loads(messages[0].payload)["bytes"])
    assert orjson.loads(inner) == {"type": "message_stop"}


def test_a_relayed_event_stream_is_complete_from_the_frame_that_carries_message_stop() -> None:
    """Claude Code in native Bedrock mode gets the frames as they are: the proxy settles once
    the frame holding `message_stop` is whole (before relaying it), as for an SSE stream."""
    frames = [chunk_frame({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 5}}), chunk_frame({"type": "message_stop"})]
    meter = EventStreamMeter()
    meter.feed(frames[0])
    meter.feed(frames[1][:-1])  # all of the last frame but its checksum's last byte
    assert not meter.complete
    meter.feed(frames[1][-1:])
    assert meter.complete and meter.finish().usage.output_tokens == 5


async def test_fake_bedrock_refuses_a_request_signed_with_the_wrong_secret(
        bedrock: Served) -> None:
    wrong = BedrockProvider("b", "us-east-1", lambda: Credentials(AWS_KEY, "nope", AWS_TOKEN),
                            base_url=bedrock.url)
    out = await wrong.signed(bedrock.url + "/model/anthropic.claude-x/invoke", b"{}")
    async with aiohttp.ClientSession() as s, s.post(out.url, data=out.body,
                                                    headers=out.headers) as r:
        assert r.status == 403
        assert "signature" in (await r.json())["message"]


@pytest.mark.parametrize("stream", [True, False])
async def test_sdk_through_meterd_to_bedrock_sees_a_normal_message_and_is_metered_exactly(
        gw: Gateway, bedrock: Served, stream: bool) -> None:
    bedrock.fake.behaviour.usage = USAGE
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        text, final = await ask(sdk.messages, BODY, stream)
    assert text.startswith("Hello from the fake provider")
    assert final.usage.output_tokens == 567 and final.usage.cache_read_input_tokens == 40000
    (event,) = await gw.settled(1)
    assert event["provider"] == "bedrock-us" and event["status"] == "200"
    assert (event["input_tokens"], event["output_tokens"]) == ("1234", "567")
    assert (event["cache_write_5m"], event["cache_write_1h"], event["cache_read"]) == (
        "1000", "2000", "40000")
    assert event["estimated"] == "0" and event["error_type"] == ""
    assert event["cost_micros"] == str(expected_cost())  # the regional route's 1.1x
    (sent,) = bedrock.fake.recorded
    action = "invoke-with-response-stream" if stream else "invoke"
    assert sent["path"] == f"/model/us.anthropic.claude-sonnet-4-6/{action}"
    assert not bedrock.fake.rejected


async def test_betas_move_into_the_body_and_the_ones_bedrock_rejects_are_dropped(
        gw: Gateway, bedrock: Served) -> None:
    key = await gw.developer()
    body = {**BODY, "anthropic_beta": ["context-1m-2025-08-07"], "stream": True}
    resp = await gw.client.post("/v1/messages?beta=true", data=orjson.dumps(body), headers={
        "x-api-key": key, "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,files-api-2025-04-14, effort-2025-11-24"})
    assert resp.status == 200, await resp.text()
    assert b"message_stop" in await resp.read()
    sent = orjson.loads(bedrock.fake.recorded[0]["body"])
    assert sent["anthropic_version"] == "bedrock-2023-05-31"
    # Only what Claude Code's native Bedrock mode sends (test_providers_native_betas.py).
    assert sent["anthropic_beta"] == ["context-1m-2025-08-07"]
    assert "model" not in sent and "stream" not in sent
    assert sent["messages"] == BODY["messages"] and sent["max_tokens"] == BODY["max_tokens"]
    headers = {k.lower() for k in bedrock.fake.recorded[0]["headers"]}
    assert "x-api-key" not in headers and "anthropic-beta" not in headers


async def test_pings_fill_a_silent_bedrock_stream(start_gateway: StartGateway,
                                                  bedrock: Served) -> None:
    gw = await bedrock_gateway(start_gateway, bedrock, ping_interval=0.05)
    bedrock.fake.behaviour.gap_ms = 400
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps({**BODY, "stream": True}),
                                headers={"x-api-key": key})
    body = await resp.read()
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert body.count(b"event: ping") >= 4
    assert body.index(b"event: message_start") < body.index(b"event: ping")
    assert body.rstrip().endswith(b'"firstByteLatency":40}}')  # message_stop, as sent
    (event,) = await gw.settled(1)
    assert event["estimated"] == "0" and event["output_tokens"] == "60"


async def test_bedrock_errors_reach_the_client_as_anthropic_errors(
        gw: Gateway, bedrock: Served, caplog: pytest.LogCaptureFixture) -> None:
    bedrock.fake.behaviour.status = 429
    assert await rate_limit_error(gw) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "provider bedrock-us answered 429 "
        "(rate_limit_error); the gateway's log has its message"}}
    assert "answered 429 rate_limit_error: Bedrock is unavailable right now." in caplog.text
    (event,) = await gw.settled(1)
    assert event["status"] == "429" and event["cost_micros"] == "0"
    assert event["provider"] == "bedrock-us"


@pytest.mark.parametrize(("exception", "kind", "seen"), [
    (("throttlingException", "Too many tokens, please wait before trying again."),
     "rate_limit_error", "provider bedrock-us failed mid-stream (rate_limit_error); the "
     "gateway's log has its message"),
    # The message Claude Code's recovery reads is the one kept as Bedrock wrote it.
    (("validationException", "Input is too long."), "invalid_request_error",
     "Input is too long.")])
async def test_a_stream_exception_becomes_an_error_event_and_is_billed(
        gw: Gateway, bedrock: Served, caplog: pytest.LogCaptureFixture,
        exception: tuple[str, str], kind: str, seen: str) -> None:
    bedrock.fake.behaviour.fail = "exception"
    bedrock.fake.behaviour.exception = exception
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps({**BODY, "stream": True}),
                                headers={"x-api-key": key})
    body = await resp.read()
    error = b'event: error\ndata: ' + orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": seen}}) + b"\n\n"
    assert body.endswith(error)
    # The operator's log has Bedrock's own words.
    assert f"provider bedrock-us failed mid-stream {kind}: {exception[1]}" in caplog.text
    (event,) = await gw.settled(1)
    assert event["error_type"] == kind and event["input_tokens"] == "1200"
    assert event["estimated"] == "1"


async def test_count_tokens_goes_to_bedrock_count_tokens(gw: Gateway, bedrock: Served) -> None:
    assert await counted_tokens(gw) > 0
    # CountTokens takes the foundation model, not the route's inference profile (`us.`).
    assert bedrock.fake.recorded[0]["path"] == "/model/anthropic.claude-sonnet-4-6/count-tokens"
    assert not bedrock.fake.rejected and await gw.events() == []  # never metered


# -- Bedrock-format clients -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_bedrock_format_client_gets_bedrocks_answer_unchanged_and_is_metered(
        gw: Gateway, bedrock: Served, stream: bool) -> None:
    bedrock.fake.behaviour.usage = USAGE
    key = await gw.developer()
    async with anthropic.AsyncAnthropicBedrock(base_url=gw.url + "/bedrock", api_key=key,
                                               aws_region="us-east-1", max_retries=0) as sdk:
        body = {**BODY, "model": "us.anthropic.claude-sonnet-4-6"}
        text, final = await ask(sdk.messages, body, stream)
    assert text.startswith("Hello from the fake provider")
    assert final.usage.output_tokens == 567
    (event,) = await gw.settled(1)
    assert event["provider"] == "bedrock-us" and event["model"] == (
        "us.anthropic.claude-sonnet-4-6")
    assert (event["input_tokens"], event["output_tokens"], event["cache_read"]) == (
        "1234", "567", "40000")
    assert event["cost_micros"] == str(expected_cost()) and event["estimated"] == "0"
    (sent,) = bedrock.fake.recorded
    assert sent["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 ")  # the org's, not
    assert key not in str(sent["headers"])  # the developer's key
    assert not bedrock.fake.rejected


async def test_bedrock_format_stream_bytes_are_relayed_unchanged(
        gw: Gateway, bedrock: Served) -> None:
    key = await gw.developer()
    body = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                         "messages": BODY["messages"]})
    resp = await gw.client.post(
        "/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke-with-response-stream",
        data=body, headers={"authorization": f"Bearer {key}"})
    raw = await resp.read()
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    kinds = [orjson.loads(base64.b64decode(orjson.loads(m.payload)["bytes"]))["type"]
             for m in buffer]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert orjson.loads(bedrock.fake.recorded[0]["body"]) == orjson.loads(body)
    (event,) = await gw.settled(1)
    assert event["output_tokens"] == "60" and event["estimated"] == "0"


@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream", "count-tokens"])
async def test_a_cookie_bedrock_sets_never_reaches_a_bedrock_format_client(
        gw: Gateway, bedrock: Served, action: str) -> None:
    """One provider session serves every developer: a cookie set for one must not reach
    another, nor be kept for the next."""
    bedrock.fake.behaviour.set_cookie = "AWSALB=for-whoever-came-first; Path=/"
    key = await gw.developer()
    body = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                         "messages": BODY["messages"]})
    if action == "count-tokens":
        body = orjson.dumps({"input": {"invokeModel": {"body": base64.b64encode(body).decode()}}})
    for _ in range(2):
        resp = await gw.client.post(f"/bedrock/model/us.anthropic.claude-sonnet-4-6/{action}",
                                    data=body, headers={"authorization": f"Bearer {key}"})
        await resp.read()
        assert resp.status == 200
        assert "set-cookie" not in resp.headers
    # Nor was it kept and sent back with the next request.
    assert "cookie" not in {name.lower() for name in bedrock.fake.recorded[1]["headers"]}


async def test_bedrock_paths_need_a_gateway_key(gw: Gateway, bedrock: Served) -> None:
    resp = await gw.client.post("/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke",
                                data=b"{}", headers={"authorization": "Bearer mtd_wrong"})
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"
    assert bedrock.fake.recorded == []
    probe = await gw.client.get("/bedrock/inference-profiles?type=SYSTEM_DEFINED")
    assert probe.status == 200  # Claude Code asks this without a credential


async def test_bedrock_paths_without_a_bedrock_provider_say_so(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await gateway.client.post("/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke",
                                     data=b"{}", headers={"authorization": f"Bearer {key}"})
    assert resp.status == 404
    assert "no bedrock provider" in (await resp.json())["error"]["message"]
    await asyncio.sleep(0)


async def test_bedrock_format_request_is_admitted_and_recorded_at_the_gates_clock(
        start_gateway: StartGateway, bedrock: Served) -> None:
    gw = await bedrock_gateway(start_gateway, bedrock)
    key = await gw.developer()
    at = datetime(2026, 3, 12, 9, 41, 30, tzinfo=UTC)
    gw.proxy.gate.clock = lambda: at
    resp = await gw.client.post("/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke",
                                data=orjson.dumps({"anthropic_version": "bedrock-2023-05-31",
                                                   "max_tokens": 64,
                                                   "messages": BODY["messages"]}),
                                headers={"authorization": f"Bearer {key}"})
    await resp.read()
    assert resp.status == 200
    (event,) = await gw.settled(1)
    assert event["ts_ms"] == str(int(at.timestamp() * 1000))


ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"


async def test_count_tokens_for_a_model_no_provider_can_count_is_not_supported(
        gw: Gateway, bedrock: Served) -> None:
    """An application inference profile names no foundation model: the client is told to
    count by itself, and not to retry."""
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages/count_tokens",
                                data=orjson.dumps({**BODY, "model": ARN}),
                                headers={"x-api-key": key})
    assert resp.status == 501
    assert resp.headers["x-should-retry"] == "false"
    assert (await resp.json())["error"]["type"] == "not_supported"
    resp = await gw.client.post(f"/bedrock/model/{ARN.replace('/', '%2F')}/count-tokens",
                                data=b"{}", headers={"authorization": f"Bearer {key}"})
    assert resp.status == 501
    assert resp.headers["x-should-retry"] == "false"
    assert bedrock.fake.recorded == []


async def test_a_bedrock_format_count_tokens_goes_out_with_the_foundation_model(
        gw: Gateway, bedrock: Served) -> None:
    key = await gw.developer()
    inner = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1,
                          "messages": BODY["messages"]})
    body = orjson.dumps({"input": {"invokeModel": {"body": base64.b64encode(inner).decode()}}})
    resp = await gw.client.post("/bedrock/model/us.anthropic.claude-sonnet-4-6/count-tokens",
                                data=body, headers={"authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["inputTokens"] == len(inner) // 4
    assert bedrock.fake.recorded[0]["path"] == "/model/anthropic.claude-sonnet-4-6/count-tokens"
