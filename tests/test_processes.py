"""Behaviour across processes: a second `meterd proxy`, and Claude Code itself."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import MOCK_KEY, Gateway, need

REAL_ONLY = pytest.mark.parametrize("redis_url", ["real"], indirect=True)
BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                     "messages": [{"role": "user", "content": "Hi"}]})
CLAUDE = Path(os.environ.get("MTD_CLAUDE_BIN", Path.home() / ".cache/meterd/claude-code/"
                             "node_modules/.bin/claude"))


@REAL_ONLY
async def test_revoked_key_is_refused_by_another_process_within_one_second(
        gateway: Gateway, second_proxy: str) -> None:
    key = await gateway.developer()
    async with aiohttp.ClientSession() as s:
        async def status() -> int:
            async with s.post(second_proxy + "/v1/messages", data=BODY,
                              headers={"x-api-key": key}) as r:
                await r.read()
                return r.status

        deadline = time.monotonic() + 5
        while await status() != 200:  # the new key reaches the other process too
            assert time.monotonic() < deadline, "key never accepted by the second proxy"
            await asyncio.sleep(0.05)
        key_id = (await gateway.admin.db(gateway.admin.catalog.keys))[0]["id"]
        await gateway.admin.db(gateway.admin.catalog.revoke_key, key_id)
        await gateway.admin.publish()
        revoked_at = time.monotonic()
        while (code := await status()) == 200:
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - revoked_at
    assert code == 401
    assert elapsed < 1.0, f"revocation took {elapsed:.2f}s to reach the second process"


async def test_claude_code_request_is_forwarded_and_metered_to_its_developer(
        gateway: Gateway, tmp_path: Path) -> None:
    need(CLAUDE.exists(), f"Claude Code is not installed at {CLAUDE} (.ci/run installs "
                          "@anthropic-ai/claude-code there; or set MTD_CLAUDE_BIN)")
    need(shutil.which("node") is not None or CLAUDE.resolve().suffix != ".js",
         "node is not installed")
    key = await gateway.developer("Grace Hopper", "compilers")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "ANTHROPIC_BASE_URL": gateway.url, "ANTHROPIC_AUTH_TOKEN": key,
           "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    proc = await asyncio.create_subprocess_exec(
        str(CLAUDE), "-p", "Say hello", "--model", "claude-sonnet-4-6",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "Hello from the meterd mock upstream" in out.decode()
    events = await gateway.settled(1)
    mine = [e for e in events if e["status"] == "200"]
    assert mine, events
    dev = (await gateway.admin.db(gateway.admin.catalog.developers))[0]
    for event in mine:
        assert event["developer_id"] == dev["id"]
        assert event["session_id"]  # Claude Code names its session on every request
        assert int(event["input_tokens"]) == 1200 and int(event["cost_micros"]) > 0
    forwarded = [r for r in gateway.upstream.recorded if r["path_qs"].startswith("/v1/messages")]
    assert forwarded and all(
        dict((k.lower(), v) for k, v in r["headers"])["x-api-key"] == MOCK_KEY
        for r in forwarded)


@REAL_ONLY
async def test_lowered_cap_is_enforced_by_another_process_within_one_second(
        gateway: Gateway, second_proxy: str) -> None:
    key = await gateway.developer()
    async with aiohttp.ClientSession() as s:
        async def status() -> int:
            async with s.post(second_proxy + "/v1/messages", data=BODY,
                              headers={"x-api-key": key}) as r:
                await r.read()
                return r.status

        deadline = time.monotonic() + 5
        while await status() != 200:
            assert time.monotonic() < deadline, "key never accepted by the second proxy"
            await asyncio.sleep(0.05)
        await gateway.admin.db(gateway.admin.catalog.set_budget, "team", "platform", "daily", 0)
        await gateway.admin.publish()
        changed_at = time.monotonic()
        while (code := await status()) == 200:
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - changed_at
    assert code == 429
    assert elapsed < 1.0, f"the new cap took {elapsed:.2f}s to reach the second process"
