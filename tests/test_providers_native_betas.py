"""Claude Code's native Bedrock and Vertex modes against the recording fakes, and Claude
Code through meterd's translation: the provider receives the same betas and body fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.gateways import Served, StartGateway, bedrock_provider, vertex_provider
from tests.test_providers_claude_code import run_claude

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures


def bedrock_sent(bedrock: Served) -> list[tuple[frozenset[str], frozenset[str]]]:
    """(betas, body fields) of every model call the fake Bedrock received."""
    out = []
    for r in bedrock.fake.recorded:
        if r["path"].endswith("/count-tokens"):
            continue
        doc: dict[str, Any] = orjson.loads(r["body"])
        out.append((frozenset(doc.get("anthropic_beta", [])), frozenset(doc)))
    return out


def vertex_sent(vertex: Served) -> list[tuple[frozenset[str], frozenset[str]]]:
    out = []
    for r in vertex.fake.recorded:
        if "Predict" not in r["path"] or "count-tokens" in r["path"]:
            continue
        betas = {b.strip() for b in r["headers"].get("anthropic-beta", "").split(",") if b}
        out.append((frozenset(betas), frozenset(orjson.loads(r["body"]))))
    return out


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_bedrock_receives_what_claude_codes_bedrock_mode_sends(
        start_gateway: StartGateway, bedrock: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    key = await gw.developer()
    await run_claude(gw, tmp_path, key, CLAUDE_CODE_USE_BEDROCK="1",
                     ANTHROPIC_BEDROCK_BASE_URL=gw.url + "/bedrock",
                     CLAUDE_CODE_SKIP_BEDROCK_AUTH="1", AWS_REGION="us-east-1")
    native = bedrock_sent(bedrock)
    bedrock.fake.recorded.clear()
    await run_claude(gw, tmp_path, key, ANTHROPIC_BASE_URL=gw.url)
    translated = bedrock_sent(bedrock)
    assert native and translated
    assert translated[-1] == native[-1]


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_vertex_receives_what_claude_codes_vertex_mode_sends(
        start_gateway: StartGateway, vertex: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    key = await gw.developer()
    await run_claude(gw, tmp_path, key, CLAUDE_CODE_USE_VERTEX="1",
                     ANTHROPIC_VERTEX_BASE_URL=gw.url + "/vertex/v1",
                     CLAUDE_CODE_SKIP_VERTEX_AUTH="1",
                     ANTHROPIC_VERTEX_PROJECT_ID="laptop-project", CLOUD_ML_REGION="us-east5")
    native = vertex_sent(vertex)
    vertex.fake.recorded.clear()
    await run_claude(gw, tmp_path, key, ANTHROPIC_BASE_URL=gw.url)
    translated = vertex_sent(vertex)
    assert native and translated
    assert translated[-1] == native[-1]
