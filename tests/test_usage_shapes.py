"""Every usage shape is priced through the gateway: advisor calls billed apart from the
executor's totals (streamed and not), and the regional premium of Bedrock and Vertex endpoints
(set from the provider's endpoint and the model, unless a multiplier is set by hand)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ledger.pricing import PriceTable
from ledger.usage import Usage
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.bedrock import BedrockProvider
from proxy.providers.vertex import StaticToken, VertexProvider
from tests.conftest import Gateway
from tests.fakes.gateways import Served, StartGateway, bedrock_provider, vertex_provider
from tests.provider_requests import BODY, ask, sdk_for
from tests.test_meter import MESSAGE_STOP, message_delta, message_start, start_usage
from tests.test_sdk import USAGE

pytest_plugins = ("tests.fakes.fixtures",)

TABLE = PriceTable.load()

# --- the advisor: its calls at the advisor model's rates, outside the executor's totals -------

ADVISED = {  # Sonnet 4.6 executing, Opus 4.8 advising twice
    "input_tokens": 1000, "output_tokens": 500, "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "iterations": [
        {"type": "message", "input_tokens": 400, "output_tokens": 100},
        {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 12_000,
         "output_tokens": 1000, "cache_read_input_tokens": 8000,
         "cache_creation_input_tokens": 0},
        {"type": "message", "input_tokens": 600, "output_tokens": 400},
        {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 300,
         "output_tokens": 500, "cache_read_input_tokens": 19_700,
         "cache_creation_input_tokens": 0},
    ],
}
# Executor (Sonnet 4.6, $3 / $15): 1,000 × 3 + 500 × 15 = 3,000 + 7,500 = 10,500.
# Advisor (Opus 4.8, $5 in / $25 out / $0.50 cache read):
#   12,000 × 5 + 1,000 × 25 + 8,000 × 0.5 = 60,000 + 25,000 + 4,000 = 89,000
#   300 × 5 + 500 × 25 + 19,700 × 0.5 = 1,500 + 12,500 + 9,850 = 23,850
ADVISED_COST = 123_350  # 10,500 + 89,000 + 23,850


async def advised_request(gw: Gateway, stream: bool) -> dict[str, str]:
    key = await gw.developer()
    body = orjson.dumps({**BODY, "stream": stream, "tools": [
        {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-8"}]})
    resp = await gw.client.post("/v1/messages", data=body, headers={
        "x-api-key": key, "anthropic-beta": "advisor-tool-2026-03-01",
        "x-mock-usage": orjson.dumps(ADVISED).decode()})
    assert resp.status == 200, await resp.text()
    await resp.read()
    (event,) = await gw.settled(1)
    return event


async def test_advisor_calls_are_billed_at_the_advisor_models_rates(gateway: Gateway) -> None:
    event = await advised_request(gateway, stream=False)
    assert event["cost_micros"] == str(ADVISED_COST)
    # The executor's tokens are the columns; the advisor's are in the cost only.
    assert (event["input_tokens"], event["output_tokens"]) == ("1000", "500")
    assert event["price_row"] == "claude-sonnet-4-6" and event["priced"] == "1"


async def advised_stream(request: web.Request) -> web.Response:
    """An Anthropic-format upstream whose stream reports the advisor in its final usage, as
    the API does: message_delta's cumulative usage carries the iterations."""
    stream = message_start(start_usage(input_tokens=1000), "claude-sonnet-4-6") + \
        message_delta({"input_tokens": 1000, "output_tokens": 500,
                       "iterations": ADVISED["iterations"]}) + MESSAGE_STOP
    return web.Response(body=stream, content_type="text/event-stream")


async def test_advisor_calls_are_billed_from_a_stream_too(
        start_gateway: StartGateway,
        aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    app = web.Application()
    app.router.add_post("/v1/messages", advised_stream)
    upstream = await aiohttp_server(app)
    gw = await start_gateway(upstream_url=str(upstream.make_url("")).rstrip("/"))
    event = await advised_request(gw, stream=True)
    assert event["cost_micros"] == str(ADVISED_COST) and event["estimated"] == "0"


# --- regional endpoints ----------------------------------------------------------------------

# claude-sonnet-4-6: 1,234 × 3 + 567 × 15 + 1,000 × 3.75 + 2,000 × 6 + 40,000 × 0.30
#   = 3,702 + 8,505 + 3,750 + 12,000 + 12,000 = 39,957 µ$ of tokens, and 2 searches: 20,000.
GLOBAL_COST = 59_957  # 39,957 + 20,000
REGIONAL_COST = 63_953  # 39,957 × 1.1 = 43,952.7, + 20,000 = 63,952.7, rounded once, half up


@pytest.mark.parametrize(("extra", "cost"), [
    ({}, REGIONAL_COST),  # the default `us.` profile: a regional endpoint
    ({"inference_profile": "global"}, GLOBAL_COST),
    ({"multiplier": "1"}, GLOBAL_COST),  # set by hand, the multiplier is all there is
    ({"multiplier": "1.25"}, 69_946),  # 39,957 × 1.25 = 49,946.25, + 20,000
], ids=["us profile", "global profile", "multiplier 1", "multiplier 1.25"])
@pytest.mark.parametrize("stream", [True, False])
async def test_bedrock_regional_endpoint_costs_ten_percent_more(
        start_gateway: StartGateway, bedrock: Served, extra: dict[str, Any], cost: int,
        stream: bool) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock, **extra)})
    bedrock.fake.behaviour.usage = USAGE
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        await ask(sdk.messages, BODY, stream)
    (event,) = await gw.settled(1)
    assert event["provider"] == "bedrock" and event["cost_micros"] == str(cost)


@pytest.mark.parametrize(("model_id", "cost"), [
    ("us.anthropic.claude-sonnet-4-6", REGIONAL_COST),
    ("global.anthropic.claude-sonnet-4-6", GLOBAL_COST),
    ("anthropic.claude-sonnet-4-6", REGIONAL_COST),  # in-region, no profile
])
async def test_bedrock_format_clients_are_priced_by_the_profile_they_name(
        start_gateway: StartGateway, bedrock: Served, model_id: str, cost: int) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    bedrock.fake.behaviour.usage = USAGE
    key = await gw.developer()
    body = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                         "messages": BODY["messages"]})
    resp = await gw.client.post(f"/bedrock/model/{model_id}/invoke", data=body,
                                headers={"authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    (event,) = await gw.settled(1)
    assert event["cost_micros"] == str(cost)


@pytest.mark.parametrize("stream", [True, False])
async def test_vertex_regional_endpoint_costs_ten_percent_more(
        start_gateway: StartGateway, vertex: Served, stream: bool) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})  # us-east5
    vertex.fake.behaviour.usage = USAGE
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        await ask(sdk.messages, BODY, stream)
    (event,) = await gw.settled(1)
    assert event["cost_micros"] == str(REGIONAL_COST)


async def test_strict_reservation_takes_the_dearest_provider_of_the_routes(
        start_gateway: StartGateway, bedrock: Served) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    # (1,000 × 6 + 1,000 × 15) × 1.1 (Sonnet 4.6: its dearest input side is the 1h write,
    # and its US-geography multiplier is assumed too: × 1.1 again)
    assert gw.proxy.estimate("claude-sonnet-4-6", 1000, 1000).strict_micros == 25_410


REGIONAL_IDS = [
    ("us", "claude-sonnet-4-6", True),
    ("global", "claude-sonnet-4-6", False),
    ("us", "global.anthropic.claude-sonnet-4-6", False),
    ("global", "eu.anthropic.claude-sonnet-4-6", True),
    ("us", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
           "global.anthropic.claude-sonnet-4-6", False),
    ("us", "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
     True),  # the ARN does not say which: a multiplier set by hand prices it
    ("", "claude-sonnet-4-6", True),  # a base model id, in this region
]


@pytest.mark.parametrize(("profile", "model", "regional"), REGIONAL_IDS)
def test_bedrock_endpoint_is_regional_unless_the_profile_is_global(
        profile: str, model: str, regional: bool) -> None:
    assert BedrockProvider("b", "us-east-1", inference_profile=profile).regional(model) \
        is regional


@pytest.mark.parametrize(("region", "regional"), [("global", False), ("us-east5", True),
                                                  ("us", True), ("europe-west1", True)])
def test_vertex_endpoint_is_regional_unless_global(region: str, regional: bool) -> None:
    assert VertexProvider("v", "p", StaticToken("t"), region=region).regional("m") is regional


def test_anthropic_api_has_no_regional_premium() -> None:
    usage = Usage(input_tokens=1000, output_tokens=1000)
    provider = AnthropicProvider("a", "https://api.anthropic.com", "k")
    # 1,000 × 3 + 1,000 × 15
    assert provider.cost(TABLE, "claude-sonnet-4-6", usage).micros == 18_000
    hand = AnthropicProvider("a", "https://x", "k", multiplier=Fraction(11, 10))
    assert hand.cost(TABLE, "claude-sonnet-4-6", usage).micros == 19_800  # 18,000 × 1.1
