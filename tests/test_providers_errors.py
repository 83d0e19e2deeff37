"""Provider errors as developers and operators see them: the provider's text in the
operator's log, a generic message with the same `error.type` for the developer, except the
messages the client's recovery reads; and a refused organization credential moves the request
to the next provider instead of reaching Claude Code as `authentication_error`."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client.exposition import generate_latest

from tests.conftest import Upstream
from tests.fakes.gateways import (
    Served,
    StartGateway,
    anthropic_provider,
    bedrock_provider,
    vertex_provider,
)
from tests.provider_requests import BODY

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures

MISMATCH = "The request signature we calculated does not match the signature you provided."


async def test_a_signature_mismatch_moves_the_request_to_the_next_provider(
        start_gateway: StartGateway, wrong_secret_bedrock: Served, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(providers={
        "bedrock": bedrock_provider(wrong_secret_bedrock),
        "anthropic": anthropic_provider(upstream, monkeypatch)})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 200, await resp.text()
    (event,) = await gw.settled(1)
    assert event["provider"] == "anthropic"
    assert wrong_secret_bedrock.fake.rejected == [MISMATCH]
    assert "provider bedrock failed before answering (status 403); trying anthropic" \
        in caplog.text
    resp = await gw.client.post("/v1/messages/count_tokens", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 200  # count_tokens moves on too
    assert (await resp.json())["input_tokens"] > 0
    assert wrong_secret_bedrock.fake.rejected == [MISMATCH, MISMATCH]
    exposition = generate_latest(gw.proxy.metrics.registry).decode().splitlines()
    assert 'meterd_provider_fallbacks_total{next="anthropic",provider="bedrock"} 2.0' \
        in exposition


async def test_a_refused_credential_on_the_last_provider_is_a_502_that_leaks_nothing(
        start_gateway: StartGateway, wrong_secret_bedrock: Served,
        caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(wrong_secret_bedrock)})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 502
    assert await resp.json() == {"type": "error", "error": {
        "type": "api_error", "message": "provider bedrock refused the gateway's credential; "
        "an operator must fix its configuration"}}
    assert f"provider bedrock refused the gateway's credential (403): " \
        f'{{"message":"{MISMATCH} Check your AWS Secret Access Key' in caplog.text
    # Bedrock-format clients and count_tokens get the same (a Bedrock client in Bedrock's
    # error shape: tests/test_providers_native_errors.py).
    resp = await gw.client.post("/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke",
                                data=orjson.dumps({"anthropic_version": "bedrock-2023-05-31",
                                                   "max_tokens": 8,
                                                   "messages": BODY["messages"]}),
                                headers={"authorization": f"Bearer {key}"})
    assert resp.status == 502
    assert "signature" not in await resp.text()
    resp = await gw.client.post("/v1/messages/count_tokens", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 502
    assert (await resp.json())["error"]["type"] == "api_error"
    assert "signature" not in await resp.text()


@pytest.mark.parametrize(("text", "seen"), [
    ("Input is too long.", "Input is too long."),
    ("Malformed input request: #/messages/0: secret detail",
     "provider bedrock answered 400 (invalid_request_error); the gateway's log has its message"),
])
async def test_bedrock_validation_errors_keep_only_what_the_client_reads(
        start_gateway: StartGateway, bedrock: Served, caplog: pytest.LogCaptureFixture,
        text: str, seen: str) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    bedrock.fake.behaviour.status, bedrock.fake.behaviour.message = 400, text
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 400
    assert await resp.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": seen}}
    assert f"provider bedrock answered 400 invalid_request_error: {text}" in caplog.text


@pytest.mark.parametrize(("envelope", "text", "seen"), [
    (False, "Request payload size exceeds the limit: 31457280 bytes.",
     "Request payload size exceeds the limit: 31457280 bytes."),
    (True, "prompt is too long: 212345 tokens > 200000 maximum",
     "prompt is too long: 212345 tokens > 200000 maximum"),
    (False, "Project 12345 lacks quota in us-east5 for service account sa@fake-project",
     "provider vertex answered 400 (invalid_request_error); the gateway's log has its message"),
])
async def test_vertex_errors_keep_only_what_the_client_reads(
        start_gateway: StartGateway, vertex: Served, caplog: pytest.LogCaptureFixture,
        envelope: bool, text: str, seen: str) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    b = vertex.fake.behaviour
    b.status, b.message, b.envelope = 400, text, envelope
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 400
    assert await resp.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": seen}}
    if not envelope:
        assert f"provider vertex answered 400 invalid_request_error: {text}" in caplog.text
