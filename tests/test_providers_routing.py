"""Routing: per-model routes, ordered fallback before the first byte, attribution, config."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ledger.models_allowed import AllowedModels
from meterd.providers_config import build_routing
from meterd.settings import Settings, SettingsError
from proxy.handlers import Relay
from tests.conftest import Upstream, free_port
from tests.fakes.gateways import (
    VERTEX_PROJECT,
    VERTEX_REGION,
    Served,
    StartGateway,
    anthropic_provider,
    bedrock_provider,
    vertex_provider,
)
from tests.provider_requests import BODY, ask, sdk_for
from tests.test_sdk import assert_recorded, client

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures

OVERLOADED = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


class Failing:
    """An Anthropic-format upstream that fails every request in one way."""

    def __init__(self, how: str) -> None:
        self.how, self.calls = how, 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await request.read()
        if self.how == "529":
            return web.Response(status=529, body=OVERLOADED, content_type="application/json")
        if self.how == "500":
            return web.Response(status=500, body=b'{"type":"error","error":{"type":"api_error",'
                                b'"message":"Internal server error"}}')
        if self.how == "drop-after-headers":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
        assert request.transport is not None
        request.transport.close()  # "drop": before any byte of the answer
        return web.Response()


@pytest.fixture
async def failing(aiohttp_server: Callable[..., Awaitable[TestServer]]
                  ) -> Callable[[str], Awaitable[tuple[Failing, str]]]:
    async def make(how: str) -> tuple[Failing, str]:
        if how == "refused":
            return Failing(how), f"http://127.0.0.1:{free_port()}"
        fake = Failing(how)
        app = web.Application()
        app.router.add_post("/v1/messages", fake.handle)
        app.router.add_post("/v1/messages/count_tokens", fake.handle)
        server = await aiohttp_server(app)
        return fake, str(server.make_url("")).rstrip("/")
    return make


@pytest.mark.parametrize("how", ["529", "500", "drop", "drop-after-headers", "refused"])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_failing_first_provider_is_replaced_by_the_second_metered_once(
        start_gateway: StartGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        failing: Callable[[str], Awaitable[tuple[Failing, str]]], how: str,
        stream: bool) -> None:
    fake, url = await failing(how)
    monkeypatch.setenv("MTD_PROVIDER_FLAKY_KEY", "sk-flaky")
    gw = await start_gateway(
        providers={"flaky": {"kind": "anthropic", "base_url": url},
                   "anthropic": anthropic_provider(upstream, monkeypatch)},
        routes=[{"match": "claude-*", "providers": ["flaky", "anthropic"]}])
    key = await gw.developer()
    async with client(gw, key, "x-api-key") as sdk:
        text, _ = await ask(sdk.messages, BODY, stream)
    assert text.startswith("Hello from")
    assert fake.calls == (0 if how == "refused" else 1)
    events = await gw.settled(1)
    await asyncio.sleep(0.1)
    assert len(await gw.events()) == 1  # metered once
    (event,) = events
    assert event["provider"] == "anthropic"  # attributed to the one that served it
    assert_recorded(event, stream=stream)  # priced at that provider's row


async def test_when_every_provider_fails_the_last_answer_passes_through(
        start_gateway: StartGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        failing: Callable[[str], Awaitable[tuple[Failing, str]]]) -> None:
    first, url1 = await failing("drop")
    last, url2 = await failing("529")
    monkeypatch.setenv("MTD_PROVIDER_ONE_KEY", "k1")
    monkeypatch.setenv("MTD_PROVIDER_TWO_KEY", "k2")
    gw = await start_gateway(providers={"one": {"kind": "anthropic", "base_url": url1},
                                        "two": {"kind": "anthropic", "base_url": url2}})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 529 and await resp.read() == OVERLOADED  # unmodified
    (event,) = await gw.settled(1)
    assert (event["provider"], event["status"], event["error_type"]) == (
        "two", "529", "overloaded_error")
    assert (first.calls, last.calls) == (1, 1)


async def test_a_4xx_is_the_answer_not_a_reason_to_fall_back(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock),
                                        "anthropic": anthropic_provider(upstream, monkeypatch)})
    bedrock.fake.behaviour.status = 429
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 429
    assert not [r for r in upstream.recorded if r["path_qs"] == "/v1/messages"]


async def test_bedrock_unavailable_falls_back_to_anthropic(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock),
                                        "anthropic": anthropic_provider(upstream, monkeypatch)})
    bedrock.fake.behaviour.status = 503
    key = await gw.developer()
    async with client(gw, key, "bearer") as sdk:
        message = await sdk.messages.create(**BODY)
    assert message.usage.output_tokens == 567
    (event,) = await gw.settled(1)
    assert event["provider"] == "anthropic"
    assert_recorded(event, stream=False)


async def test_models_follow_their_routes(start_gateway: StartGateway, upstream: Upstream,
                                          bedrock: Served,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await start_gateway(
        providers={"anthropic": anthropic_provider(upstream, monkeypatch),
                   "bedrock": bedrock_provider(bedrock)},
        routes=[{"match": "claude-opus-*", "providers": ["anthropic"]},
                {"match": "claude-haiku-*", "providers": ["bedrock"]}])
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        for model in ("claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-sonnet-4-6"):
            await sdk.messages.create(**{**BODY, "model": model})
    events = await gw.settled(3)
    assert {e["model"]: e["provider"] for e in events} == {
        "claude-opus-4-8": "anthropic", "claude-haiku-4-5-20251001": "bedrock",
        "claude-sonnet-4-6": "anthropic"}  # no route: every provider, configured order
    assert bedrock.fake.recorded[0]["path"] == (
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke")
    assert not bedrock.fake.rejected


async def test_count_tokens_falls_back_too(
        start_gateway: StartGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        failing: Callable[[str], Awaitable[tuple[Failing, str]]]) -> None:
    fake, url = await failing("500")
    monkeypatch.setenv("MTD_PROVIDER_FLAKY_KEY", "k")
    gw = await start_gateway(providers={"flaky": {"kind": "anthropic", "base_url": url},
                                        "anthropic": anthropic_provider(upstream, monkeypatch)})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages/count_tokens", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 200 and "input_tokens" in await resp.json()
    assert fake.calls == 1


# -- configuration --------------------------------------------------------------------------


def test_providers_and_routes_load_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text('''
[providers.anthropic]
kind = "anthropic"

[providers.bedrock-us]
kind = "bedrock"
region = "us-east-1"
multiplier = "1.1"
models = { claude-sonnet-4-6 = "global.anthropic.claude-sonnet-4-6" }

[[routes]]
match = "claude-opus-*"
providers = ["anthropic", "bedrock-us"]
''')
    settings = Settings.load(config, environ={"MTD_PROVIDER_ANTHROPIC_KEY": "sk-1"})
    table = build_routing(settings, {"MTD_PROVIDER_ANTHROPIC_KEY": "sk-1"})
    assert table is not None
    assert [p.name for p in table.chain("claude-opus-4-8")] == ["anthropic", "bedrock-us"]
    assert [p.name for p in table.chain("claude-haiku-4-5")] == ["anthropic", "bedrock-us"]
    bedrock = table.providers["bedrock-us"]
    assert str(bedrock.multiplier) == "11/10"
    assert bedrock.model_id("claude-sonnet-4-6") == "global.anthropic.claude-sonnet-4-6"  # type: ignore[attr-defined]
    assert bedrock.model_id("claude-opus-4-8") == "us.anthropic.claude-opus-4-8"  # type: ignore[attr-defined]


# An answer can stream for minutes, and Claude Code's bodies run to hundreds of KB: nothing
# may hold the request body once the provider has it (bench/slow_streams.py).
RELAYS = {
    "messages": ("/v1/messages", BODY | {"stream": True}),
    "bedrock": ("/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke-with-response-stream",
                {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                 "messages": BODY["messages"]}),
    "vertex": (f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/"
               "anthropic/models/claude-sonnet-4-6:streamRawPredict",
               {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64, "stream": True,
                "messages": BODY["messages"]}),
}


@pytest.mark.parametrize("path", RELAYS)
async def test_nothing_holds_the_request_body_while_the_answer_streams(
        start_gateway: StartGateway, bedrock: Served, vertex: Served,
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    gw = await start_gateway(providers={"bedrock-us": bedrock_provider(bedrock),
                                        "vertex": vertex_provider(vertex)})
    bedrock.fake.behaviour.gap_ms = vertex.fake.behaviour.gap_ms = 100  # after message_start
    read: list[bytes] = []  # the body the handler read: the test's own reference
    holders: list[list[str]] = []  # what else held it while the answer was paused
    original_read, original_observe = web.BaseRequest.read, Relay._observe

    async def remember(request: web.BaseRequest) -> bytes:
        body = await original_read(request)
        read.append(body)
        return body

    def look() -> None:  # the handler is suspended, its frames visible to the collector
        holders.append([type(r).__name__ for r in gc.get_referrers(read[0]) if r is not read])

    def observe(relay: Relay, chunk: bytes) -> None:
        if not holders:
            asyncio.get_running_loop().call_later(0.05, look)
        original_observe(relay, chunk)

    monkeypatch.setattr(web.BaseRequest, "read", remember)
    monkeypatch.setattr(Relay, "_observe", observe)
    url, body = RELAYS[path]
    key = await gw.developer()
    resp = await gw.client.post(url, data=orjson.dumps(body), headers={
        "authorization": f"Bearer {key}", "x-mock-event-delay-ms": "100"})
    assert resp.status == 200, await resp.text()
    await resp.read()
    assert holders == [[]]
    (event,) = await gw.settled(1)
    assert event["status"] == "200" and event["estimated"] == "0"


@pytest.mark.parametrize(("providers", "routes", "message"), [
    ({"a": {"kind": "anthropic", "key": "sk-in-the-file"}}, [], "MTD_PROVIDER_A_KEY"),
    ({"a": {"kind": "openai"}}, [], "providers.a.kind"),
    ({"a": {"kind": "anthropic", "region": "x"}}, [], "providers.a.region"),
    ({"a": {"kind": "anthropic", "multiplier": 1.1}}, [], "as a string"),
    ({"a": {"kind": "anthropic"}}, [{"match": "*", "providers": ["b"]}], "no provider named b"),
    ({}, [{"match": "*", "providers": ["a"]}], "setting routes"),
    ({"v": {"kind": "vertex"}}, [], "providers.v.project"),
])
def test_bad_provider_configuration_is_refused_naming_the_setting(
        providers: dict[str, Any], routes: list[Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build_routing(Settings(providers=providers, routes=tuple(routes)), {})


def test_without_providers_the_single_upstream_stays(tmp_path: Path) -> None:
    assert build_routing(Settings(), {}) is None


async def test_count_tokens_a_provider_cannot_count_goes_to_the_next(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served,
        monkeypatch: pytest.MonkeyPatch) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock),
                                        "anthropic": anthropic_provider(upstream, monkeypatch)})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages/count_tokens",
                                data=orjson.dumps({**BODY, "model": arn}),
                                headers={"x-api-key": key})
    assert resp.status == 200, await resp.text()
    assert bedrock.fake.recorded == []
    assert [r for r in upstream.recorded if r["path_qs"] == "/v1/messages/count_tokens"]


@pytest.mark.parametrize(("model", "bedrock_models"), [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", {}),
    ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
     {"claude-sonnet-4-5": "arn:aws:bedrock:us-east-1:123456789012:"
                           "application-inference-profile/abc123"}),
])
async def test_a_bedrock_form_id_falling_back_reaches_vertex_and_anthropic_translated(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served, vertex: Served,
        monkeypatch: pytest.MonkeyPatch, model: str, bedrock_models: dict[str, str]) -> None:
    gw = await start_gateway(providers={
        "bedrock": bedrock_provider(bedrock, models=bedrock_models),
        "vertex": vertex_provider(vertex),
        "anthropic": anthropic_provider(upstream, monkeypatch)})
    bedrock.fake.behaviour.status = 503
    vertex.fake.behaviour.status = 503
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps({**BODY, "model": model}),
                                headers={"x-api-key": key})
    assert resp.status == 200, await resp.text()
    assert bedrock.fake.recorded[0]["path"].startswith("/model/" + model.replace(
        ":", "%3A").replace("/", "%2F"))
    assert vertex.fake.recorded[-1]["path"].endswith(
        "/models/claude-sonnet-4-5@20250929:rawPredict")
    (sent,) = [r for r in upstream.recorded if r["path_qs"] == "/v1/messages"]
    assert orjson.loads(sent["body"])["model"] == "claude-sonnet-4-5"
    (event,) = await gw.settled(1)
    assert event["provider"] == "anthropic"


async def test_a_json_answer_cut_mid_body_is_billed_by_its_estimate(
        start_gateway: StartGateway, aiohttp_server: Callable[..., Awaitable[TestServer]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def half(request: web.Request) -> web.StreamResponse:
        await request.read()
        body = b'{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"te'
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": str(len(body) * 2)})
        await response.prepare(request)
        await response.write(body)
        assert request.transport is not None
        request.transport.close()  # the provider broke off mid-body
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", half)
    server = await aiohttp_server(app)
    monkeypatch.setenv("MTD_PROVIDER_HALF_KEY", "k")
    gw = await start_gateway(providers={"half": {"kind": "anthropic",
                                                 "base_url": str(server.make_url(""))}})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):  # the client's answer breaks off too
        await resp.read()
    (event,) = await gw.settled(1)
    assert event["error_type"] == "upstream_reset" and event["estimated"] == "1"
    # The estimate: a token per 4 bytes of the 94-byte body (24), and max_tokens (1024) out,
    # at claude-sonnet-4-6's $3 / $15 per million tokens: 24 * 3 + 1024 * 15 µ$.
    assert len(orjson.dumps(BODY)) == 94
    assert (event["input_tokens"], event["output_tokens"]) == ("24", "1024")
    assert event["cost_micros"] == "15432"


async def test_v1_models_lists_what_the_routes_reach_for_the_sdk(
        start_gateway: StartGateway, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A route's own model, and the configured models its glob matches, then the configured
    models no route matches (claude-sonnet-4-6, and claude-haiku-4-5, which the dated route
    does not match): every provider serves those, in order. A team's list narrows that
    further, and its own ids are offered too."""
    gw = await start_gateway(
        models=("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"),
        providers={"anthropic": anthropic_provider(upstream, monkeypatch)},
        routes=({"match": "claude-opus-*", "providers": ["anthropic"]},
                {"match": "claude-haiku-4-5-20251001", "providers": ["anthropic"]},
                {"match": "claude-opus-4-8", "providers": ["anthropic"]}))
    ada = await gw.developer("Ada", "platform")
    async with sdk_for(gw, ada) as sdk:
        page = await sdk.models.list()
    assert [m.id for m in page.data] == [
        "claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-sonnet-4-6", "claude-haiku-4-5"]
    assert (page.first_id, page.last_id, page.has_more) == (
        "claude-opus-4-8", "claude-haiku-4-5", False)
    await gw.change(AllowedModels(gw.admin.catalog).set, "platform",
                    ["claude-haiku-*", "claude-opus-4-1", "claude-sonnet-4-5"])
    async with sdk_for(gw, ada) as sdk:
        ids = [m.id async for m in sdk.models.list()]
    assert ids == ["claude-opus-4-1", "claude-haiku-4-5-20251001", "claude-haiku-4-5",
                   "claude-sonnet-4-5"]
