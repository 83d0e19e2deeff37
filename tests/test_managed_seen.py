"""CLAUDE_CODE_GATEWAY_HINT_HEADERS: the managed-settings checksum each machine sends on model
requests is recorded per developer and credential (never in the access log or the usage
events), and the dashboard lists machines as current, stale, edited or unmanaged."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.managed import ManagedSettings, checksum
from proxy.access_log import AccessLog
from proxy.managed_seen import HEADER, SEEN
from tests.claude_code import CLAUDE, need_claude
from tests.conftest import Gateway, need

HINTS = {"env": {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"}}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]}


async def _flushed(gw: Gateway) -> dict[str, dict[str, Any]]:
    """Write what the proxy noted, and read the hash back."""
    proxy = gw.proxy
    await gw.app[SEEN].flush(proxy.redis, proxy.keyspace.managed_seen)
    raw = await proxy.redis.hgetall(proxy.keyspace.managed_seen)
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


async def _send(gw: Gateway, key: str, sent: str | None, session: str = "s-1") -> int:
    headers = {"x-api-key": key, "x-claude-code-session-id": session}
    if sent is not None:
        headers[HEADER] = sent
    async with gw.client.post("/v1/messages", json=BODY, headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.timeout(240)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_real_claude_code_sends_the_checksum_meterd_serves(
        gateway: Gateway, tmp_path: Path) -> None:
    need_claude()
    need(subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0,
         "no mount namespaces here (unshare -m)")
    key = await gateway.developer("Ada", "platform")
    served = {**HINTS, "permissions": {"deny": ["WebFetch"]}}
    await gateway.change(ManagedSettings(gateway.admin.catalog).set, "org", served)
    home = tmp_path / "home"
    home.mkdir()
    # Claude Code fetches /managed/settings only over https (the TLS work serves it), so the
    # machine gets the document meterd serves as its managed-settings file instead, at the
    # system path, in a mount namespace of its own: the host's /etc is left alone.
    async with gateway.client.get("/managed/settings", headers={"x-api-key": key}) as r:
        document = await r.json()
    etc = tmp_path / "etc"
    (etc / "claude-code").mkdir(parents=True)
    (etc / "claude-code" / "managed-settings.json").write_bytes(
        orjson.dumps(document["settings"], option=orjson.OPT_INDENT_2))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "CLAUDE_CONFIG_DIR": str(home / ".claude"), "CLAUDE_CODE_USE_GATEWAY": "1",
           "ANTHROPIC_BASE_URL": gateway.url, "ANTHROPIC_AUTH_TOKEN": key,
           "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    command = ("mount -t overlay overlay -o lowerdir=\"$0\":/etc /etc && exec \"$@\"",
               str(etc), str(CLAUDE), "-p", "Say hello", "--model", "claude-sonnet-4-6")
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-m", "sh", "-c", *command, cwd=home, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, (out + err).decode()[-2000:]
    seen = await _flushed(gateway)
    [value] = seen.values()
    assert value["checksum"] == checksum(served), value
    assert value["client"].startswith("claude-cli/") and value["session_id"]


async def test_the_checksum_is_recorded_but_never_in_the_access_log_or_events(
        gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    lines = io.StringIO()
    gateway.proxy.access_log = AccessLog(lines)
    sent = "sha256:" + "ab" * 32
    assert await _send(gateway, key, sent, session="s-ada") == 200
    [event] = await gateway.settled(1)
    gateway.proxy.access_log.flush()
    seen = await _flushed(gateway)
    [(field, value)] = seen.items()
    assert value["checksum"] == sent and value["session_id"] == "s-ada"
    assert field == f"{event['developer_id']} {event['key_id']}"
    assert lines.getvalue().count("\n") == 1 and "ab" * 32 not in lines.getvalue()
    assert "ab" * 32 not in orjson.dumps(event).decode()


async def test_an_unchanged_checksum_is_not_written_again(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    proxy = gateway.proxy
    for _ in range(5):
        assert await _send(gateway, key, "sha256:one") == 200
    assert len(await _flushed(gateway)) == 1
    await proxy.redis.delete(proxy.keyspace.managed_seen)
    assert await _send(gateway, key, "sha256:one") == 200
    assert await _flushed(gateway) == {}  # nothing new: no write
    assert await _send(gateway, key, None) == 200  # the machine lost its settings
    [value] = (await _flushed(gateway)).values()
    assert value["checksum"] == ""
