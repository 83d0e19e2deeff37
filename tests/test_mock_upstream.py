"""The mock upstream speaks the Messages API well enough for the official SDK to meter it."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from meterd.mock_upstream import (
    RECORDED,
    MockOptions,
    configure_parser,
    create_mock_app,
    options_from_args,
)

KEY = "sk-ant-mock"
AUTH = {"x-api-key": KEY}
REQUEST = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**REQUEST, "stream": True}
RICH_USAGE = {
    "input_tokens": 11,
    "output_tokens": 22,
    "cache_creation_input_tokens": 30,
    "cache_read_input_tokens": 40,
    "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
    "server_tool_use": {"web_search_requests": 3},
    "service_tier": "priority",
    "speed": "fast",
    "inference_geo": "us",
}
SSE_EVENT = re.compile(rb"event: ([a-z_]+)\ndata: ([^\n]+)")

def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split an SSE body into (event, data), asserting the API's exact framing."""
    assert body.endswith(b"\n\n")
    out = []
    for block in body[:-2].split(b"\n\n"):
        match = SSE_EVENT.fullmatch(block)
        assert match, block
        data = orjson.loads(match[2])
        assert data["type"] == match[1].decode()
        out.append((match[1].decode(), data))
    return out


def names(body: bytes) -> list[str]:
    return [name for name, _ in events(body)]


async def post(client: Any, json: dict[str, Any], **headers: str) -> aiohttp.ClientResponse:
    headers = {**AUTH, **{k.replace("_", "-"): v for k, v in headers.items()}}
    response: aiohttp.ClientResponse = await client.post(
        "/v1/messages?beta=true", data=orjson.dumps(json), headers=headers)
    return response


@pytest.fixture
async def mock(aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_mock_app())


@pytest.fixture
async def sdk(aiohttp_server: Any) -> AsyncIterator[Callable[..., Any]]:
    """Start a mock with the given options and return an SDK client pointed at it."""
    clients: list[anthropic.AsyncAnthropic] = []

    async def start(options: MockOptions | None = None) -> anthropic.AsyncAnthropic:
        server = await aiohttp_server(create_mock_app(options))
        client = anthropic.AsyncAnthropic(base_url=f"http://{server.host}:{server.port}",
                                          api_key=KEY, max_retries=0)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def usage_of(message: Any) -> dict[str, Any]:
    usage: dict[str, Any] = message.usage.model_dump(exclude_none=True)
    return usage


# -- answers --------------------------------------------------------------------------------


async def test_non_stream_answer_is_a_message_with_the_configured_usage(sdk: Any) -> None:
    client = await sdk(MockOptions(usage=RICH_USAGE))
    message = await client.messages.create(**REQUEST)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant",
                                                           "claude-sonnet-4-6")
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert usage_of(message) == RICH_USAGE


async def test_stream_final_message_reports_the_configured_usage(sdk: Any) -> None:
    client = await sdk(MockOptions(usage=RICH_USAGE))
    async with client.messages.stream(**REQUEST) as stream:
        text = "".join([chunk async for chunk in stream.text_stream])
        message = await stream.get_final_message()
    assert text == message.content[0].text
    assert message.stop_reason == "end_turn"
    assert usage_of(message) == RICH_USAGE


async def test_default_usage_is_1200_in_60_out(sdk: Any) -> None:
    client = await sdk()
    async with client.messages.stream(**REQUEST) as stream:
        message = await stream.get_final_message()
    assert usage_of(message) == {"input_tokens": 1200, "output_tokens": 60,
                                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


async def test_stream_has_the_anthropic_event_sequence_and_framing(mock: Any) -> None:
    response = await post(mock, STREAM)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    stream = events(await response.read())
    assert [name for name, _ in stream] == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 6,
        "content_block_stop", "message_delta", "message_stop"]
    start = stream[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 1200, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 1}
    delta = stream[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 1200, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 60}


async def test_stream_splits_usage_like_the_api(mock: Any) -> None:
    response = await post(mock, STREAM, x_mock_usage=orjson.dumps(RICH_USAGE).decode())
    stream = dict(events(await response.read()))
    assert stream["message_start"]["message"]["usage"] == {
        "input_tokens": 11, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 40,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
        "output_tokens": 1, "service_tier": "priority", "speed": "fast", "inference_geo": "us"}
    assert stream["message_delta"]["usage"] == {
        "input_tokens": 11, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 40,
        "output_tokens": 22, "server_tool_use": {"web_search_requests": 3}}


async def test_each_answer_echoes_its_model_and_gets_fresh_ids(mock: Any) -> None:
    odd = 'model "with" quotes/é'
    first = await post(mock, STREAM)
    second = await post(mock, {**STREAM, "model": odd})
    third = await post(mock, {**REQUEST, "model": odd})
    start1 = events(await first.read())[0][1]["message"]
    start2 = events(await second.read())[0][1]["message"]
    message = await third.json()
    assert (start1["model"], start2["model"], message["model"]) == ("claude-sonnet-4-6", odd, odd)
    assert len({start1["id"], start2["id"], message["id"]}) == 3
    assert all(m["id"].startswith("msg_") for m in (start1, start2, message))
    ids = [r.headers["request-id"] for r in (first, second, third)]
    assert all(re.fullmatch(r"req_mock_\d+", rid) for rid in ids) and len(set(ids)) == 3


# -- per-request overrides ------------------------------------------------------------------


async def test_usage_header_replaces_the_configured_usage_entirely(sdk: Any) -> None:
    client = await sdk(MockOptions(usage={"input_tokens": 5, "output_tokens": 6,
                                          "cache_read_input_tokens": 99}))
    override = {"input_tokens": 7, "output_tokens": 8, "service_tier": "standard"}
    headers = {"x-mock-usage": orjson.dumps(override).decode()}
    async with client.messages.stream(**REQUEST, extra_headers=headers) as stream:
        streamed = await stream.get_final_message()
    plain = await client.messages.create(**REQUEST, extra_headers=headers)
    for message in (streamed, plain):
        assert usage_of(message) == {**override, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 0}


async def test_text_chunks_header_sets_the_number_of_deltas(mock: Any) -> None:
    response = await post(mock, STREAM, x_mock_text_chunks="25")
    assert names(await response.read()).count("content_block_delta") == 25
    response = await post(mock, STREAM, x_mock_text_chunks="0")
    assert "content_block_delta" not in names(await response.read())


async def test_text_chunks_option_sets_the_number_of_deltas(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_mock_app(MockOptions(text_chunks=2)))
    response = await post(client, STREAM)
    assert names(await response.read()).count("content_block_delta") == 2


async def test_delay_header_holds_back_the_response_headers(mock: Any) -> None:
    started = time.monotonic()
    response = await post(mock, REQUEST, x_mock_delay_ms="80")
    assert time.monotonic() - started >= 0.08
    assert response.status == 200


async def test_event_delay_header_spaces_the_events(mock: Any) -> None:
    started = time.monotonic()
    response = await post(mock, STREAM, x_mock_text_chunks="1", x_mock_event_delay_ms="15")
    body = await response.read()
    # Six events follow message_start, each after one delay.
    assert time.monotonic() - started >= 6 * 0.015
    assert names(body)[-1] == "message_stop"


async def test_slow_stream_pings_for_the_duration_before_the_content(mock: Any) -> None:
    started = time.monotonic()
    response = await post(mock, STREAM, x_mock_ping_interval_ms="20", x_mock_duration_ms="100")
    sequence = names(await response.read())
    assert time.monotonic() - started >= 0.1
    assert sequence[:7] == ["message_start", *["ping"] * 5, "content_block_start"]
    assert sequence[-1] == "message_stop"


async def test_duration_option_without_pings_is_a_silent_wait(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_mock_app(MockOptions(duration_ms=60)))
    started = time.monotonic()
    response = await post(client, STREAM)
    sequence = names(await response.read())
    assert time.monotonic() - started >= 0.06
    assert sequence[:3] == ["message_start", "content_block_start", "ping"]


async def test_slow_stream_still_reports_usage_to_the_sdk(sdk: Any) -> None:
    client = await sdk(MockOptions(ping_interval_ms=10, duration_ms=30, event_delay_ms=1))
    async with client.messages.stream(**REQUEST) as stream:
        message = await stream.get_final_message()
    assert message.usage.output_tokens == 60


@pytest.mark.parametrize(("status", "kind", "message"), [
    (400, "invalid_request_error", "messages: Field required"),
    (429, "rate_limit_error", None),
    (500, "api_error", "Internal server error"),
    (529, "overloaded_error", "Overloaded"),
])
async def test_status_header_answers_with_the_real_error(
        mock: Any, status: int, kind: str, message: str | None) -> None:
    response = await post(mock, STREAM, x_mock_status=str(status))
    assert response.status == status
    body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    if message is not None:
        assert body["error"]["message"] == message
    assert response.headers["request-id"].startswith("req_mock_")


async def test_rate_limit_status_says_when_to_retry(mock: Any) -> None:
    response = await post(mock, REQUEST, x_mock_status="429")
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-should-retry"] == "true"
    assert "rate limit" in (await response.json())["error"]["message"]


async def test_unlisted_status_still_gets_an_envelope(mock: Any) -> None:
    response = await post(mock, REQUEST, x_mock_status="502")
    assert response.status == 502
    assert (await response.json())["error"]["type"] == "api_error"


async def test_sdk_raises_its_typed_errors_for_status_overrides(sdk: Any) -> None:
    client = await sdk()
    with pytest.raises(anthropic.OverloadedError):
        await client.messages.create(**REQUEST, extra_headers={"x-mock-status": "529"})
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(**REQUEST, extra_headers={"x-mock-status": "429"})
    assert caught.value.response.headers["retry-after"] == "7"


async def test_error_event_fails_the_stream_after_some_deltas(mock: Any) -> None:
    response = await post(mock, STREAM, x_mock_fail="error-event")
    assert response.status == 200
    stream = events(await response.read())
    sequence = [name for name, _ in stream]
    assert sequence[:3] == ["message_start", "content_block_start", "ping"]
    assert "content_block_delta" in sequence and "message_delta" not in sequence
    assert stream[-1] == ("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})


async def test_sdk_raises_on_the_error_event(sdk: Any) -> None:
    client = await sdk()
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
                **REQUEST, extra_headers={"x-mock-fail": "error-event"}) as stream:
            await stream.get_final_message()
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error",
                                                            "message": "Overloaded"}}


async def test_drop_cuts_the_stream_before_message_delta(mock: Any) -> None:
    response = await post(mock, STREAM, x_mock_fail="drop")
    assert response.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in response.content.iter_any():
            received += chunk
    assert received.count(b"event: content_block_delta") == 2
    assert b"message_delta" not in received


async def test_sdk_sees_a_dropped_stream_fail_after_its_start(sdk: Any) -> None:
    client = await sdk()
    seen: list[str] = []
    failure: Exception | None = None
    try:
        async with client.messages.stream(
                **REQUEST, extra_headers={"x-mock-fail": "drop"}) as stream:
            async for event in stream:
                seen.append(event.type)
    except Exception as exc:  # which exception class is the SDK's own business
        failure = exc
    # The answer began, then broke off: the client must see an error, not a short answer.
    assert seen[:1] == ["message_start"] and "message_stop" not in seen
    assert failure is not None


async def test_failures_without_stream_are_overloaded_or_disconnected(mock: Any) -> None:
    response = await post(mock, REQUEST, x_mock_fail="error-event")
    assert response.status == 529
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(mock, REQUEST, x_mock_fail="drop")


@pytest.mark.parametrize(("header", "value"), [
    ("x-mock-text-chunks", "many"),
    ("x-mock-delay-ms", "-1"),
    ("x-mock-usage", "[1, 2]"),
    ("x-mock-usage", "{nope"),
    ("x-mock-status", "200"),
    ("x-mock-fail", "explode"),
])
async def test_malformed_override_header_is_a_400_naming_it(
        mock: Any, header: str, value: str) -> None:
    response = await mock.post("/v1/messages", data=orjson.dumps(REQUEST),
                               headers={**AUTH, header: value})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and header in error["message"]


async def test_body_without_model_or_json_is_a_400(mock: Any) -> None:
    response = await mock.post("/v1/messages", data=b"{not json", headers=AUTH)
    assert response.status == 400
    response = await post(mock, {"max_tokens": 1, "messages": []})
    assert response.status == 400
    assert (await response.json())["error"]["message"] == "model: Field required"


# -- credentials, other routes, recording ---------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"x-api-key": "sk-ant-wrong"},
    {"Authorization": "Bearer sk-ant-wrong"},
    {"Authorization": KEY},
])
async def test_request_without_the_key_is_401(mock: Any, headers: dict[str, str]) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await mock.post(path, data=orjson.dumps(STREAM), headers=headers)
        assert response.status == 401
        assert await response.json() == {"type": "error", "error": {
            "type": "authentication_error", "message": "invalid x-api-key"}}
        assert response.headers["request-id"].startswith("req_mock_")


async def test_bearer_token_is_accepted(mock: Any) -> None:
    response = await mock.post("/v1/messages", data=orjson.dumps(REQUEST),
                               headers={"Authorization": f"Bearer {KEY}"})
    assert response.status == 200


async def test_empty_api_key_accepts_any_or_no_credential(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_mock_app(MockOptions(api_key="")))
    response = await client.post("/v1/messages", data=orjson.dumps(REQUEST))
    assert response.status == 200


async def test_count_tokens_is_a_quarter_of_the_body_bytes(mock: Any) -> None:
    body = orjson.dumps(REQUEST)
    response = await mock.post("/v1/messages/count_tokens?beta=true", data=body, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"input_tokens": len(body) // 4}
    assert response.headers["request-id"].startswith("req_mock_")


async def test_unknown_path_is_404_not_found_error(mock: Any) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v2/anything"),
                         ("GET", "/v1/messages")):
        response = await mock.request(method, path, headers=AUTH)
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"
        assert response.headers["request-id"].startswith("req_mock_")


async def test_requests_are_recorded_as_received(mock: Any) -> None:
    body = orjson.dumps(REQUEST)
    await mock.post("/v1/messages?beta=true", data=body,
                    headers={**AUTH, "X-Claude-Code-Session-Id": "s-1"})
    await mock.get("/nowhere")
    recorded = mock.app[RECORDED]
    first, second = recorded
    assert first["method"] == "POST" and first["path_qs"] == "/v1/messages?beta=true"
    assert first["body"] == body
    assert ["X-Claude-Code-Session-Id", "s-1"] in first["headers"]
    assert ["x-api-key", KEY] in first["headers"]
    assert (second["method"], second["path_qs"], second["body"]) == ("GET", "/nowhere", b"")


async def test_recording_keeps_the_last_200_requests(mock: Any) -> None:
    for i in range(205):
        await mock.post(f"/v1/messages/count_tokens?i={i}", data=b"{}", headers=AUTH)
    recorded = mock.app[RECORDED]
    assert len(recorded) == 200
    assert recorded[0]["path_qs"] == "/v1/messages/count_tokens?i=5"


# -- command line ---------------------------------------------------------------------------


def parse(*argv: str) -> MockOptions:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return options_from_args(parser.parse_args(argv))


def test_cli_defaults_are_the_default_options() -> None:
    assert parse() == MockOptions()


def test_cli_flags_set_every_option() -> None:
    options = parse("--api-key", "", "--usage", '{"input_tokens": 5, "output_tokens": 2}',
                    "--text-chunks", "3", "--delay-ms", "4", "--event-delay-ms", "5",
                    "--ping-interval-ms", "6", "--duration-ms", "7")
    assert options == MockOptions(api_key="", usage={"input_tokens": 5, "output_tokens": 2},
                                  text_chunks=3, delay_ms=4, event_delay_ms=5,
                                  ping_interval_ms=6, duration_ms=7)


@pytest.mark.parametrize("argv", [("--usage", "[1]"), ("--usage", "{"), ("--delay-ms", "-5")])
def test_cli_rejects_malformed_flags(argv: tuple[str, ...],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)
    assert argv[0] in capsys.readouterr().err
