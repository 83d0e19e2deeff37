"""Claude on Microsoft Foundry as a provider kind: an Anthropic-format endpoint under the
resource's `/anthropic` path, its API key from the environment or a Microsoft Entra ID token
from azure-identity (checked by the fake Foundry against the fake Entra's signing key),
priced with its multiplier."""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from pathlib import Path

import orjson
import pytest

from ledger.pricing import PriceTable
from ledger.usage import Usage
from meterd.providers_config import build_routing
from meterd.settings import Settings, SettingsError
from proxy.providers.anthropic import FoundryProvider
from tests.conftest import MOCK_KEY, Upstream
from tests.fakes.foundry import AUDIENCE
from tests.fakes.gateways import Served, StartGateway, anthropic_provider, bedrock_provider
from tests.provider_requests import BODY, ask, sdk_for
from tests.test_providers_claude_code import run_claude
from tests.test_sdk import USAGE

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures


async def test_foundry_serves_after_bedrock_and_is_priced_with_its_multiplier(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTD_PROVIDER_AZURE_KEY", MOCK_KEY)
    gw = await start_gateway(providers={
        "bedrock": bedrock_provider(bedrock),
        "azure": {"kind": "foundry", "base_url": upstream.url, "multiplier": "1.25"}})
    bedrock.fake.behaviour.status = 503
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY), headers={
        "x-api-key": key, "x-mock-usage": orjson.dumps(USAGE).decode()})
    assert resp.status == 200, await resp.text()
    (event,) = await gw.settled(1)
    assert event["provider"] == "azure"
    expected = PriceTable.load().cost("claude-sonnet-4-6", Usage.from_api(USAGE),
                                      Fraction(5, 4)).micros
    assert event["cost_micros"] == str(expected)
    (sent,) = [r for r in upstream.recorded if r["path_qs"] == "/v1/messages"]
    # The organization's key, not the developer's.
    assert ("x-api-key", MOCK_KEY) in [(k.lower(), v) for k, v in sent["headers"]]


def test_foundry_is_configured_by_resource_and_needs_a_key(tmp_path: Path) -> None:
    path = tmp_path / "meterd.toml"
    path.write_text('[providers.azure]\nkind = "foundry"\nresource = "contoso-ai"\n')
    settings = Settings.load(path, {})
    with pytest.raises(SettingsError, match="MTD_PROVIDER_AZURE_KEY"):
        build_routing(settings, {})
    table = build_routing(settings, {"MTD_PROVIDER_AZURE_KEY": "secret"})
    assert table is not None
    provider = table.providers["azure"]
    assert isinstance(provider, FoundryProvider) and provider.kind == "foundry"
    assert provider.upstream.url("/v1/messages") == (
        "https://contoso-ai.services.ai.azure.com/anthropic/v1/messages")


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_foundry_mode_is_served_and_metered(
        start_gateway: StartGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Claude Code's own Foundry mode (CLAUDE_CODE_USE_FOUNDRY) pointed at meterd, with the
    developer's gateway key as its Foundry API key."""
    monkeypatch.setenv("MTD_PROVIDER_AZURE_KEY", MOCK_KEY)
    gw = await start_gateway(providers={"azure": {"kind": "foundry", "base_url": upstream.url}})
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, CLAUDE_CODE_USE_FOUNDRY="1",
                           ANTHROPIC_FOUNDRY_BASE_URL=gw.url, ANTHROPIC_FOUNDRY_API_KEY=key)
    assert out.strip()
    events = [e for e in await gw.settled(1) if e["status"] == "200"]
    assert events and all(e["provider"] == "azure" for e in events)
    assert all(int(e["cost_micros"]) > 0 and e["estimated"] == "0" for e in events)


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_foundry_mode_is_served_by_foundry_with_entra_id(
        start_gateway: StartGateway, foundry: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"azure": entra_provider(foundry)})
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, CLAUDE_CODE_USE_FOUNDRY="1",
                           ANTHROPIC_FOUNDRY_BASE_URL=gw.url, ANTHROPIC_FOUNDRY_API_KEY=key)
    assert out.strip() == "Hello from the fake"  # the fake Foundry's answer
    assert foundry.fake.rejected == [] and len(foundry.fake.entra.issued) == 1
    assert foundry.fake.accepted and set(foundry.fake.accepted) == set(foundry.fake.entra.issued)
    events = [e for e in await gw.settled(1) if e["status"] == "200"]
    assert events and all(e["provider"] == "azure" and e["estimated"] == "0" for e in events)


@pytest.mark.parametrize(("model", "factor"), [
    ("claude-sonnet-4-6", Fraction(5, 4)), ("claude-opus-4-6", Fraction(3, 2)),
    ("claude-haiku-4-5", Fraction(1))])
async def test_a_provider_prices_each_model_with_its_own_multiplier(
        start_gateway: StartGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        model: str, factor: Fraction) -> None:
    monkeypatch.setenv("MTD_PROVIDER_AZURE_KEY", MOCK_KEY)
    gw = await start_gateway(providers={"azure": {
        "kind": "foundry", "base_url": upstream.url,
        "multiplier": {"claude-sonnet-*": "1.25", "claude-opus-*": "1.5"}}})
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps({**BODY, "model": model}),
                                headers={"x-api-key": key,
                                         "x-mock-usage": orjson.dumps(USAGE).decode()})
    assert resp.status == 200, await resp.text()
    (event,) = await gw.settled(1)
    expected = PriceTable.load().cost(model, Usage.from_api(USAGE), factor).micros
    assert event["cost_micros"] == str(expected)


def entra_provider(foundry: Served) -> dict[str, str]:
    return {"kind": "foundry", "base_url": foundry.url + "/anthropic", "auth": "entra"}


@pytest.mark.parametrize("stream", [False, True])
async def test_foundry_with_entra_id_gets_a_token_verified_by_foundry_and_reuses_it(
        start_gateway: StartGateway, foundry: Served, stream: bool) -> None:
    foundry.fake.usage = USAGE
    gw = await start_gateway(providers={"azure": entra_provider(foundry)})
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        for _ in range(3):
            text, message = await ask(sdk.messages, BODY, stream)
            assert text.startswith("Hello from") and message.id.startswith("msg_fdry_")
    entra = foundry.fake.entra
    # One token for the three requests: azure-identity's cache served the other two.
    assert len(entra.requests) == 1 and entra.requests[0]["scope"] == AUDIENCE + "/.default"
    assert foundry.fake.accepted == entra.issued * 3 and foundry.fake.rejected == []
    for sent in foundry.fake.recorded:  # the developer's key never reaches Foundry
        assert key not in str(sent["headers"]) and "x-api-key" not in sent["headers"]
    events = await gw.settled(3)
    expected = PriceTable.load().cost("claude-sonnet-4-6", Usage.from_api(USAGE)).micros
    assert [(e["provider"], e["cost_micros"]) for e in events] == [("azure", str(expected))] * 3


async def test_an_expired_entra_token_is_replaced_by_a_new_one(
        start_gateway: StartGateway, foundry: Served) -> None:
    foundry.fake.entra.behaviour.token_lifetime = 1
    gw = await start_gateway(providers={"azure": entra_provider(foundry)})
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        await sdk.messages.create(**BODY)
        await asyncio.sleep(2.1)  # past the first token's expiry (whole seconds)
        await sdk.messages.create(**BODY)
    issued = foundry.fake.entra.issued
    assert len(issued) == 2 and issued[0] != issued[1]
    assert foundry.fake.accepted == issued


@pytest.mark.parametrize("bad", ["forge", "audience"])
async def test_foundry_refuses_a_bad_token_and_the_route_moves_on(
        start_gateway: StartGateway, foundry: Served, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    """A token signed by another key, or for another audience: Foundry's 401, which is the
    organization's credential, so the next provider serves; alone, a 502 `api_error`."""
    if bad == "forge":
        foundry.fake.entra.behaviour.forge = True
    else:
        foundry.fake.entra.behaviour.audience = "https://management.azure.com"
    gw = await start_gateway(
        providers={"azure": entra_provider(foundry),
                   "anthropic": anthropic_provider(upstream, monkeypatch)},
        routes=({"match": "claude-sonnet-*", "providers": ["azure", "anthropic"]},
                {"match": "claude-haiku-*", "providers": ["azure"]}))
    key = await gw.developer()
    headers = {"x-api-key": key}
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY), headers=headers)
    assert resp.status == 200, await resp.text()
    caplog.set_level(logging.WARNING, "meterd.providers")
    resp = await gw.client.post("/v1/messages", headers=headers, data=orjson.dumps(
        {**BODY, "model": "claude-haiku-4-5"}))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error == {"type": "api_error", "message": "provider azure refused the gateway's "
                     "credential; an operator must fix its configuration"}
    assert "invalid or expired token" in caplog.text  # Foundry's own words, for the operator
    assert len(foundry.fake.rejected) == 2 and foundry.fake.accepted == []
    assert all(why.startswith("bad token") for why in foundry.fake.rejected)
    (served, refused) = await gw.settled(2)
    assert served["provider"] == "anthropic" and refused["status"] == "502"


async def test_a_token_entra_refuses_to_issue_moves_the_request_on(
        start_gateway: StartGateway, foundry: Served, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "a-revoked-secret")
    gw = await start_gateway(
        providers={"azure": entra_provider(foundry),
                   "anthropic": anthropic_provider(upstream, monkeypatch)},
        routes=({"match": "claude-*", "providers": ["azure", "anthropic"]},))
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                headers={"x-api-key": key})
    assert resp.status == 200, await resp.text()
    assert len(foundry.fake.entra.requests) == 1 and foundry.fake.entra.issued == []
    assert foundry.fake.recorded == []  # never called without a token
    (event,) = await gw.settled(1)
    assert event["provider"] == "anthropic"


async def test_count_tokens_on_foundry_carries_the_entra_token(
        start_gateway: StartGateway, foundry: Served) -> None:
    gw = await start_gateway(providers={"azure": entra_provider(foundry)})
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        counted = await sdk.messages.count_tokens(model=BODY["model"],
                                                  messages=BODY["messages"])
    assert counted.input_tokens > 0
    assert foundry.fake.accepted == foundry.fake.entra.issued


def test_foundry_with_entra_id_needs_no_key_and_auth_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "meterd.toml"
    path.write_text('[providers.azure]\nkind = "foundry"\nresource = "contoso-ai"\n'
                    'auth = "entra"\n')
    table = build_routing(Settings.load(path, {}), {})
    assert table is not None
    provider = table.providers["azure"]
    assert isinstance(provider, FoundryProvider) and provider.tokens is not None
    path.write_text('[providers.azure]\nkind = "foundry"\nresource = "contoso-ai"\n'
                    'auth = "password"\n')
    with pytest.raises(SettingsError, match=r"providers\.azure\.auth"):
        build_routing(Settings.load(path, {}), {"MTD_PROVIDER_AZURE_KEY": "secret"})


async def test_foundry_gets_claude_codes_betas_as_its_native_foundry_mode_sends_them(
        start_gateway: StartGateway, foundry: Served) -> None:
    """The web-search beta joins Claude Code's (tests/test_providers_native_betas.py records
    it from Claude Code itself); every other beta and the body go on as they came."""
    gw = await start_gateway(providers={"azure": entra_provider(foundry)})
    key = await gw.developer()
    body = orjson.dumps(BODY)
    for sent_betas, received in [
            ("claude-code-20250219, effort-2025-11-24",
             "claude-code-20250219,web-search-2025-03-05,effort-2025-11-24"),
            ("effort-2025-11-24", "effort-2025-11-24")]:
        resp = await gw.client.post("/v1/messages", data=body, headers={
            "x-api-key": key, "anthropic-beta": sent_betas})
        assert resp.status == 200, await resp.text()
        sent = foundry.fake.recorded[-1]
        assert sent["headers"]["anthropic-beta"] == received and sent["body"] == body
