"""Claude Code's native Bedrock, Vertex and Foundry modes against the recording fakes, and
Claude Code through meterd's translation: the provider receives the same betas and body
fields."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.gateways import Served, StartGateway, bedrock_provider, vertex_provider
from tests.test_providers_claude_code import run_claude
from tests.test_providers_foundry import entra_provider

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures


Sent = list[tuple[frozenset[str], frozenset[str]]]


def bedrock_sent(bedrock: Served) -> Sent:
    """(betas, body fields) of every model call the fake Bedrock received."""
    out = []
    for r in bedrock.fake.recorded:
        if r["path"].endswith("/count-tokens"):
            continue
        doc: dict[str, Any] = orjson.loads(r["body"])
        out.append((frozenset(doc.get("anthropic_beta", [])), frozenset(doc)))
    return out


def header_sent(records: list[dict[str, Any]]) -> Sent:
    """(betas, body fields) of model calls with the betas in the `anthropic-beta` header."""
    out = []
    for r in records:
        betas = {b.strip() for b in r["headers"].get("anthropic-beta", "").split(",") if b}
        out.append((frozenset(betas), frozenset(orjson.loads(r["body"]))))
    return out


def vertex_sent(vertex: Served) -> Sent:
    return header_sent([r for r in vertex.fake.recorded
                        if "Predict" in r["path"] and "count-tokens" not in r["path"]])


def foundry_sent(foundry: Served) -> Sent:
    return header_sent(foundry.fake.recorded)  # it records Messages calls only


FOUNDRY_KEY = "foundry-resource-key"  # the fake Foundry's API key, for the native run


# Per provider kind: its provider table, what it received, and Claude Code's native mode for it
# (given meterd's URL and the fake): Bedrock and Vertex modes pointed at meterd's passthrough
# paths, Foundry mode (which meterd serves on its Anthropic path, translated) at the fake.
NATIVE: dict[str, tuple[Callable[[Served], dict[str, Any]], Callable[[Served], Sent],
                        Callable[[str, Served], dict[str, str]]]] = {
    "bedrock": (bedrock_provider, bedrock_sent, lambda url, fake: {
        "CLAUDE_CODE_USE_BEDROCK": "1", "ANTHROPIC_BEDROCK_BASE_URL": url + "/bedrock",
        "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1", "AWS_REGION": "us-east-1"}),
    "vertex": (vertex_provider, vertex_sent, lambda url, fake: {
        "CLAUDE_CODE_USE_VERTEX": "1", "ANTHROPIC_VERTEX_BASE_URL": url + "/vertex/v1",
        "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1", "ANTHROPIC_VERTEX_PROJECT_ID": "laptop-project",
        "CLOUD_ML_REGION": "us-east5"}),
    "foundry": (entra_provider, foundry_sent, lambda url, fake: {
        "CLAUDE_CODE_USE_FOUNDRY": "1", "ANTHROPIC_FOUNDRY_BASE_URL": fake.url + "/anthropic",
        "ANTHROPIC_FOUNDRY_API_KEY": FOUNDRY_KEY}),
}


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize("kind", list(NATIVE))
async def test_the_provider_receives_what_claude_codes_native_mode_sends(
        start_gateway: StartGateway, bedrock: Served, vertex: Served, foundry: Served,
        tmp_path: Path, kind: str) -> None:
    fake = {"bedrock": bedrock, "vertex": vertex, "foundry": foundry}[kind]
    provider, sent, native_env = NATIVE[kind]
    gw = await start_gateway(providers={kind: provider(fake)})
    key = await gw.developer()
    foundry.fake.api_key = FOUNDRY_KEY
    await run_claude(gw, tmp_path, key, **native_env(gw.url, fake))
    native = sent(fake)
    fake.fake.recorded.clear()
    await run_claude(gw, tmp_path, key, ANTHROPIC_BASE_URL=gw.url)
    translated = sent(fake)
    assert native and translated
    assert translated[-1] == native[-1]
