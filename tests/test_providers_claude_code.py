"""Claude Code itself through meterd to Bedrock and Vertex: in the Anthropic format (the
gateway translates) and in the providers' own formats (CLAUDE_CODE_USE_BEDROCK / _VERTEX)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.claude_code import CLAUDE, need_claude
from tests.conftest import Gateway
from tests.fakes.gateways import (
    AWS_TOKEN,
    Served,
    StartGateway,
    bedrock_provider,
    vertex_provider,
)

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures


async def run_claude(gw: Gateway, tmp_path: Path, key: str, ok: bool = True,
                     **env: str) -> str:
    need_claude()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANTHROPIC_AUTH_TOKEN": key,
            "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    proc = await asyncio.create_subprocess_exec(
        str(CLAUDE), "-p", "Say hello", "--model", "claude-sonnet-4-6", cwd=tmp_path,
        env={**base, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    if not ok:  # what it shows for a failed request
        assert proc.returncode != 0, out.decode()[-2000:]
        return (out + err).decode()
    assert proc.returncode == 0, (out + err).decode()[-2000:]
    return out.decode()


def assert_metered(events: list[dict[str, str]], provider: str) -> None:
    mine = [e for e in events if e["status"] == "200"]
    assert mine, events
    for event in mine:
        assert event["provider"] == provider and event["session_id"]
        assert event["input_tokens"] == "1200" and event["output_tokens"] == "60"
        assert event["estimated"] == "0" and int(event["cost_micros"]) > 0


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_through_meterd_to_bedrock_sees_a_normal_stream(
        start_gateway: StartGateway, bedrock: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, ANTHROPIC_BASE_URL=gw.url)
    assert "Hello from the fake provider" in out
    assert_metered(await gw.settled(1), "bedrock")
    assert bedrock.fake.recorded and not bedrock.fake.rejected


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_bedrock_mode_is_served_and_metered(
        start_gateway: StartGateway, bedrock: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, CLAUDE_CODE_USE_BEDROCK="1",
                           ANTHROPIC_BEDROCK_BASE_URL=gw.url + "/bedrock",
                           CLAUDE_CODE_SKIP_BEDROCK_AUTH="1", AWS_REGION="us-east-1")
    assert "Hello from the fake provider" in out
    assert_metered(await gw.settled(1), "bedrock")
    sent = bedrock.fake.recorded
    assert sent and all(r["path"].startswith("/model/us.anthropic.claude-sonnet-4-6/")
                        for r in sent)
    assert not bedrock.fake.rejected  # signed by the gateway, with the org's credentials


BEDROCK_MODE = {"CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
                "AWS_REGION": "us-east-1"}


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_bedrock_mode_moves_past_a_refused_credential(
        start_gateway: StartGateway, wrong_secret_bedrock: Served, bedrock: Served,
        tmp_path: Path) -> None:
    gw = await start_gateway(providers={"bedrock-a": bedrock_provider(wrong_secret_bedrock),
                                        "bedrock": bedrock_provider(bedrock)})
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, ANTHROPIC_BEDROCK_BASE_URL=gw.url + "/bedrock",
                           **BEDROCK_MODE)
    assert "Hello from the fake provider" in out
    assert_metered(await gw.settled(1), "bedrock")
    assert wrong_secret_bedrock.fake.rejected and not bedrock.fake.rejected


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize(("fail", "shown"), [
    ("", "the gateway's log has its message"),
    # Bedrock's words reach it, so it knows the prompt is too long (and would compact).
    ("Input is too long.", "Prompt is too long"),
])
async def test_claude_code_in_bedrock_mode_sees_no_provider_text_but_what_it_reads(
        start_gateway: StartGateway, bedrock: Served, tmp_path: Path, fail: str,
        shown: str) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    b = bedrock.fake.behaviour
    b.status, b.message = 400, fail or f"Malformed input request for session {AWS_TOKEN}"
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, ok=False,
                           ANTHROPIC_BEDROCK_BASE_URL=gw.url + "/bedrock", **BEDROCK_MODE)
    assert shown in out and AWS_TOKEN not in out


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_bedrock_mode_reads_a_stream_whose_exception_was_re_encoded(
        start_gateway: StartGateway, bedrock: Served, tmp_path: Path) -> None:
    """Claude Code's decoder takes the exception frame meterd re-encoded (CRCs and all): a
    frame it cannot decode fails the run."""
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    b = bedrock.fake.behaviour
    b.fail = "exception"
    b.exception = ("validationException", f"Malformed input request for session {AWS_TOKEN}")
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, ANTHROPIC_BEDROCK_BASE_URL=gw.url + "/bedrock",
                           **BEDROCK_MODE)
    assert out.startswith("Hello from the fake provider") and AWS_TOKEN not in out
    # It read the exception as the stream's failure and asked again without streaming; the
    # failed stream is billed for what it used, as on every path.
    events = sorted(await gw.settled(2), key=lambda e: e["stream"])
    assert [(e["stream"], e["error_type"], e["input_tokens"]) for e in events] == [
        ("0", "", "1200"), ("1", "invalid_request_error", "1200")]


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_vertex_mode_is_served_and_metered(
        start_gateway: StartGateway, vertex: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    key = await gw.developer()
    out = await run_claude(gw, tmp_path, key, CLAUDE_CODE_USE_VERTEX="1",
                           ANTHROPIC_VERTEX_BASE_URL=gw.url + "/vertex/v1",
                           CLAUDE_CODE_SKIP_VERTEX_AUTH="1",
                           ANTHROPIC_VERTEX_PROJECT_ID="laptop-project",
                           CLOUD_ML_REGION="us-east5")
    assert "Hello from the fake provider" in out
    assert_metered(await gw.settled(1), "vertex")
    assert vertex.fake.recorded and not vertex.fake.rejected
