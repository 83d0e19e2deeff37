"""Google Vertex behind meterd: rawPredict / streamRawPredict with a service-account token,
and Vertex-format clients (Claude Code with CLAUDE_CODE_USE_VERTEX) relayed unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes.gateways import (
    VERTEX_PROJECT,
    VERTEX_REGION,
    Served,
    StartGateway,
    vertex_provider,
)
from tests.provider_requests import BODY, ask, counted_tokens, rate_limit_error, sdk_for
from tests.test_sdk import USAGE, assert_recorded

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures

MODELS = f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/anthropic/models/"


@pytest.fixture
async def gw(start_gateway: StartGateway, vertex: Served) -> Gateway:
    """A gateway whose one provider is the fake Vertex, priced as the Anthropic API, which
    these tests compare with (the regional premium that us-east5 carries is tested in
    tests/test_usage_shapes.py)."""
    return await start_gateway(providers={"vertex": vertex_provider(vertex, multiplier="1")})


@pytest.mark.parametrize("stream", [True, False])
async def test_sdk_through_meterd_to_vertex_sees_a_normal_message_and_is_metered_exactly(
        gw: Gateway, vertex: Served, stream: bool) -> None:
    vertex.fake.behaviour.usage = USAGE
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        text, final = await ask(sdk.messages, BODY, stream)
    assert text.startswith("Hello from the fake provider")
    assert final.usage.output_tokens == 567
    (event,) = await gw.settled(1)
    assert event["provider"] == "vertex"
    assert_recorded(event, stream=stream)
    (sent,) = vertex.fake.recorded
    method = "streamRawPredict" if stream else "rawPredict"
    assert sent["path"] == f"{MODELS}claude-sonnet-4-6:{method}"
    body = orjson.loads(sent["body"])
    assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body
    assert not vertex.fake.rejected


async def test_the_service_account_token_is_cached_and_refreshed_before_expiry(
        gw: Gateway, vertex: Served) -> None:
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        for _ in range(3):
            await sdk.messages.create(**BODY)
        assert vertex.fake.token_requests == 1  # one token serves them all
        # An hour later the token has expired; and tokens that live shorter than google-auth's
        # refresh margin (3m45s) are renewed on every use.
        assert gw.proxy.router is not None
        tokens = gw.proxy.router.table.providers["vertex"].tokens  # type: ignore[attr-defined]
        tokens.credentials.expiry = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
        vertex.fake.behaviour.token_lifetime = 120
        for _ in range(2):
            await sdk.messages.create(**BODY)
    assert vertex.fake.token_requests == 3
    assert not vertex.fake.rejected


async def test_vertex_errors_reach_the_client_as_anthropic_errors(
        gw: Gateway, vertex: Served) -> None:
    vertex.fake.behaviour.status = 429
    assert await rate_limit_error(gw) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "provider vertex answered 429 "
        "(rate_limit_error); the gateway's log has its message"}}


async def test_count_tokens_goes_to_vertex_count_tokens(gw: Gateway, vertex: Served) -> None:
    assert await counted_tokens(gw) > 0
    (sent,) = vertex.fake.recorded
    assert sent["path"] == f"{MODELS}count-tokens:rawPredict"
    assert orjson.loads(sent["body"])["model"] == "claude-sonnet-4-6"


@pytest.mark.parametrize("stream", [True, False])
async def test_vertex_format_client_is_served_from_the_gateways_project_and_metered(
        gw: Gateway, vertex: Served, stream: bool) -> None:
    vertex.fake.behaviour.usage = USAGE
    key = await gw.developer()
    # The developer's machine names some project and region; the gateway's provider decides.
    async with anthropic.AsyncAnthropicVertex(base_url=gw.url + "/vertex/v1", region="us-east5",
                                              project_id="laptop-project", access_token=key,
                                              max_retries=0) as sdk:
        body = {**BODY, "extra_body": {"anthropic_version": "vertex-2023-10-16"}}
        text, _ = await ask(sdk.messages, body, stream)
    assert text.startswith("Hello from the fake provider")
    (event,) = await gw.settled(1)
    assert event["provider"] == "vertex"
    assert_recorded(event, stream=stream)
    (sent,) = vertex.fake.recorded
    assert sent["path"].startswith(MODELS + "claude-sonnet-4-6:")
    assert key not in str(sent["headers"])
    assert not vertex.fake.rejected


async def test_vertex_format_request_is_admitted_and_recorded_at_the_gates_clock(
        gw: Gateway, vertex: Served) -> None:
    key = await gw.developer()
    at = datetime(2026, 3, 12, 9, 41, 30, tzinfo=UTC)
    gw.proxy.gate.clock = lambda: at
    body = {**BODY, "anthropic_version": "vertex-2023-10-16"}
    del body["model"]  # in the path
    resp = await gw.client.post("/vertex" + MODELS + "claude-sonnet-4-6:rawPredict",
                                data=orjson.dumps(body),
                                headers={"authorization": f"Bearer {key}"})
    await resp.read()
    assert resp.status == 200
    (event,) = await gw.settled(1)
    assert event["ts_ms"] == str(int(at.timestamp() * 1000))


@pytest.mark.parametrize("tail", ["claude-sonnet-4-6:rawPredict",
                                  "claude-sonnet-4-6:streamRawPredict",
                                  "count-tokens:rawPredict"])
async def test_a_cookie_vertex_sets_never_reaches_a_vertex_format_client(
        gw: Gateway, vertex: Served, tail: str) -> None:
    """One provider session serves every developer: a cookie set for one must not reach
    another, nor be kept for the next."""
    vertex.fake.behaviour.set_cookie = "GCLB=for-whoever-came-first; Path=/"
    key = await gw.developer()
    doc: dict[str, Any] = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
                           "messages": BODY["messages"]}
    if tail.endswith("streamRawPredict"):
        doc["stream"] = True
    if tail.startswith("count-tokens"):
        doc["model"] = "claude-sonnet-4-6"
    for _ in range(2):
        resp = await gw.client.post(f"/vertex{MODELS}{tail}", data=orjson.dumps(doc),
                                    headers={"authorization": f"Bearer {key}"})
        await resp.read()
        assert resp.status == 200
        assert "set-cookie" not in resp.headers
    # Nor was it kept and sent back with the next request.
    assert "cookie" not in {name.lower() for name in vertex.fake.recorded[1]["headers"]}
