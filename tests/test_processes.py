"""Behaviour across processes: a second `meterd proxy`, and Claude Code itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.claude_code import QUIET, claude_p
from tests.conftest import MOCK_KEY, Gateway

REAL_ONLY = pytest.mark.parametrize("redis_url", ["real"], indirect=True)
BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                     "messages": [{"role": "user", "content": "Hi"}]})


async def seconds_until_refused(gateway: Gateway, proxy_url: str, key: str,
                                change: Callable[[], Awaitable[object]]) -> tuple[int, float]:
    """Wait until `proxy_url` (another process) serves `key`, make `change` in the catalog,
    and time how long until that process refuses the key: (status, seconds)."""
    async with aiohttp.ClientSession() as s:
        async def status() -> int:
            async with s.post(proxy_url + "/v1/messages", data=BODY,
                              headers={"x-api-key": key}) as r:
                await r.read()
                return r.status

        deadline = time.monotonic() + 5
        while await status() != 200:  # the new key reaches the other process too
            assert time.monotonic() < deadline, "key never accepted by the second proxy"
            await asyncio.sleep(0.05)
        await change()
        await gateway.admin.publish()
        changed_at = time.monotonic()
        while (code := await status()) == 200:
            await asyncio.sleep(0.02)
        return code, time.monotonic() - changed_at


@REAL_ONLY
async def test_revoked_key_is_refused_by_another_process_within_one_second(
        gateway: Gateway, second_proxy: str) -> None:
    key = await gateway.developer()
    catalog = gateway.admin.catalog

    async def revoke() -> None:
        key_id = (await gateway.admin.db(catalog.keys))[0]["id"]
        await gateway.admin.db(catalog.revoke_key, key_id)

    code, elapsed = await seconds_until_refused(gateway, second_proxy, key, revoke)
    assert code == 401
    assert elapsed < 1.0, f"revocation took {elapsed:.2f}s to reach the second process"


async def test_claude_code_request_is_forwarded_and_metered_to_its_developer(
        gateway: Gateway, tmp_path: Path) -> None:
    key = await gateway.developer("Grace Hopper", "compilers")
    run = await claude_p(tmp_path / "home", {**QUIET, "ANTHROPIC_BASE_URL": gateway.url,
                                             "ANTHROPIC_AUTH_TOKEN": key}, cwd=tmp_path)
    assert run.code == 0, run.output[-2000:]
    assert "Hello from the meterd mock upstream" in run.output
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

    async def lower_cap() -> None:
        await gateway.admin.db(gateway.admin.catalog.set_budget, "team", "platform", "daily", 0)

    code, elapsed = await seconds_until_refused(gateway, second_proxy, key, lower_cap)
    assert code == 429
    assert elapsed < 1.0, f"the new cap took {elapsed:.2f}s to reach the second process"
