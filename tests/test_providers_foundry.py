"""Claude on Microsoft Foundry as a provider kind: an Anthropic-format endpoint under the
resource's `/anthropic` path, its API key from the environment, priced with its multiplier."""

from __future__ import annotations

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
from tests.fakes.gateways import Served, StartGateway, bedrock_provider
from tests.provider_requests import BODY
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
