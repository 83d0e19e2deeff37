"""The official anthropic SDK through the gateway: what it sees, and what gets recorded."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from tests.conftest import Gateway

USAGE = {
    "input_tokens": 1234, "output_tokens": 567, "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 40000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "server_tool_use": {"web_search_requests": 2},
}
# claude-sonnet-4-6 at $3 in, $15 out, $3.75 5m write, $6 1h write, $0.30 read, $10/1k searches:
# 1234×3 + 567×15 + 1000×3.75 + 2000×6 + 40000×0.30 = 3702 + 8505 + 3750 + 12000 + 12000
# = 39957 µ$, plus 2 searches × 10,000 µ$ = 59957 µ$.
EXPECTED_COST = 59957


def client(gw: Gateway, key: str, style: str) -> anthropic.AsyncAnthropic:
    common = {"base_url": gw.url, "max_retries": 0,
              "default_headers": {"x-mock-usage": orjson.dumps(USAGE).decode()}}
    if style == "x-api-key":
        return anthropic.AsyncAnthropic(api_key=key, **common)
    return anthropic.AsyncAnthropic(auth_token=key, api_key=None, **common)


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_sdk_non_streaming_usage_is_recorded_exactly(gateway: Gateway, style: str) -> None:
    key = await gateway.developer()
    async with client(gateway, key, style) as sdk:
        message = await sdk.messages.create(
            model="claude-sonnet-4-6", max_tokens=1024,
            messages=[{"role": "user", "content": "Hello"}])
    assert message.usage.input_tokens == 1234 and message.usage.output_tokens == 567
    (event,) = await gateway.settled(1)
    assert_recorded(event, stream=False)


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_sdk_streaming_usage_is_recorded_exactly(gateway: Gateway, style: str) -> None:
    key = await gateway.developer()
    async with client(gateway, key, style) as sdk, sdk.messages.stream(
        model="claude-sonnet-4-6", max_tokens=1024,
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text.startswith("Hello from")
    assert final.usage.output_tokens == 567
    assert final.usage.cache_read_input_tokens == 40000
    (event,) = await gateway.settled(1)
    assert_recorded(event, stream=True)


def assert_recorded(event: dict[str, str], stream: bool) -> None:
    assert event["model"] == "claude-sonnet-4-6"
    assert event["stream"] == str(int(stream))
    assert event["status"] == "200"
    assert (event["input_tokens"], event["output_tokens"]) == ("1234", "567")
    assert (event["cache_write_5m"], event["cache_write_1h"]) == ("1000", "2000")
    assert event["cache_read"] == "40000" and event["web_search"] == "2"
    assert event["cost_micros"] == str(EXPECTED_COST)
    assert event["estimated"] == "0" and event["error_type"] == ""
    assert event["price_row"] == "claude-sonnet-4-6" and event["priced"] == "1"


async def test_sdk_sees_gateway_errors_as_api_errors(gateway: Gateway) -> None:
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="mtd_wrong",
                                        max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as err:
            await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=10,
                                      messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 401
    assert err.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid gateway key"}}
