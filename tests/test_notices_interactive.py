"""Real Claude Code (the pinned version), interactive in tmux, signed in to meterd: past 75 %
and past 95 % of the developer's cap its footer says "You've used NN% of your usage credits ·
resets …" (from the `anthropic-ratelimit-unified-*` headers), not before; and `/usage` shows
the cap in dollars (from GET /api/oauth/usage).

The notice exists only on screen (`claude -p` never prints it, gateway protocol notes), so the
pane is what is read. The spend that carries the developer past each threshold is made
elsewhere, by the test: Claude Code's own requests cost 4,500 µ$ on the mock but each holds a
~130,000 µ$ reservation while it runs, so a cap sized for its prompts alone would hang on the
client version's request size."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ledger.money import format_usd, parse_usd
from tests.claude_code import CLAUDE, need_claude
from tests.conftest import need
from tests.sso import BODY, SSO

pytest_plugins = ("tests.sso_fixtures",)

CAP = parse_usd("10")  # daily, the developer's own
ANSWER = "Hello from the meterd mock upstream"
NOTICE = re.compile(r"You've used (\d+)% of your usage credits · resets 12am \(UTC\)")


class Pane:
    """Claude Code running in a tmux session of its own server (socket in the test's tmp)."""

    def __init__(self, home: Path) -> None:
        self.socket = home / "tmux.sock"
        self.conf = home / "tmux.conf"
        # Else Claude Code's hint to turn it on takes the footer, and a spend notice waits.
        self.conf.write_text("set -g focus-events on\n")

    async def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-S", str(self.socket), "-f", str(self.conf), *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def screen(self) -> str:
        return await self.tmux("capture-pane", "-p", "-J", "-t", "cc")

    async def history(self) -> str:
        return await self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "cc")

    async def type(self, text: str) -> None:
        await self.tmux("send-keys", "-t", "cc", "-l", text)
        await asyncio.sleep(0.3)  # the input box takes the text before Enter submits it
        await self.tmux("send-keys", "-t", "cc", "Enter")

    async def wait_for(self, pattern: re.Pattern[str] | str, seconds: float,
                       history: bool = False) -> re.Match[str]:
        """The first match of `pattern` on the screen (with `history`, in the scrollback
        too) within `seconds`; fails with what the pane showed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            text = await (self.history() if history else self.screen())
            found = re.search(pattern, text)
            if found:
                return found
            assert loop.time() < deadline, f"no {pattern!r} within {seconds} s:\n{text}"
            await asyncio.sleep(0.2)

    async def wait_gone(self, pattern: re.Pattern[str], seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while re.search(pattern, text := await self.screen()):
            assert loop.time() < deadline, f"{pattern!r} still there after {seconds} s:\n{text}"
            await asyncio.sleep(0.2)


@pytest.fixture
async def claude_in_tmux(sso: SSO, tmp_path: Path) -> AsyncIterator[tuple[Pane, dict[str, Any]]]:
    """A signed-in developer's interactive Claude Code in gateway mode, past its first-run
    screens, and the token answer it signed in with."""
    need(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux; "
                                           ".ci/run installs it)")
    need_claude()
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    home, project = tmp_path / "home", tmp_path / "project"
    config = home / ".claude"
    config.mkdir(parents=True)
    project.mkdir()
    # What the theme picker, the security notes and the folder-trust question save once
    # answered (the pinned version asks nothing more with these).
    (config / ".claude.json").write_bytes(orjson.dumps({
        "hasCompletedOnboarding": True, "lastOnboardingVersion": "2.1.332",
        "projects": {str(project): {"hasTrustDialogAccepted": True}}}))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CLAUDE_CONFIG_DIR": str(config),
           "TERM": "xterm-256color", "TZ": "UTC", "CLAUDE_CODE_USE_GATEWAY": "1",
           "ANTHROPIC_BASE_URL": sso.url, "ANTHROPIC_AUTH_TOKEN": answer["access_token"],
           "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    pane = Pane(tmp_path)
    # The tmux server starts with `env`, and the session's command inherits it.
    await pane.tmux("new-session", "-d", "-s", "cc", "-x", "120", "-y", "40", "-c", str(project),
                    str(CLAUDE), "--model", "claude-sonnet-4-6", env=env)
    try:
        await pane.wait_for("Cloud gateway", 20)  # signed in to a gateway, input box ready
        await pane.wait_for("shift\\+tab to cycle", 10)
        yield pane, answer
    finally:
        await pane.tmux("kill-server")


async def spend(sso: SSO, bearer: str, output_tokens: int) -> None:
    """One request of the developer's elsewhere (another session) that costs a lot."""
    async with aiohttp.ClientSession() as s, s.post(
            sso.url + "/v1/messages", data=BODY, headers={
                "Authorization": f"Bearer {bearer}", "content-type": "application/json",
                "x-mock-usage": orjson.dumps({"input_tokens": 0,
                                              "output_tokens": output_tokens}).decode()}) as r:
        assert r.status == 200, await r.text()


async def spent(sso: SSO, count: int) -> int:
    events = await sso.gateway.settled(count)
    assert len(events) == count and all(e["status"] == "200" for e in events), events
    return sum(int(e["cost_micros"]) for e in events)


async def ask(pane: Pane, prompt: str, answers: int) -> None:
    """Type a prompt; wait until the pane holds `answers` answers."""
    await pane.type(prompt)
    await pane.wait_for(f"(?s)({re.escape(ANSWER)}.*){{{answers}}}", 15, history=True)


async def notice(pane: Pane) -> int:
    """The percent the footer notice says (it shows for about 8 s)."""
    return int((await pane.wait_for(NOTICE, 10)).group(1))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_the_interactive_screen_says_past_75_and_95_percent_and_usage_shows_dollars(
        sso: SSO, claude_in_tmux: tuple[Pane, dict[str, Any]]) -> None:
    pane, signed_in = claude_in_tmux
    bearer = signed_in["access_token"]
    gateway = sso.gateway
    await gateway.change(gateway.admin.catalog.set_budget, "developer", signed_in["email"],
                         "daily", CAP)

    # Well below the cap (its own reservation, ~1 %): an answer, and no notice with it.
    await ask(pane, "Say hello", 1)
    assert await spent(sso, 1) == 4_500  # the mock's default usage on claude-sonnet-4-6
    assert not NOTICE.search(await pane.screen())

    # Spent elsewhere to 78 % of the cap: the next prompt's answer passes 75 %.
    await spend(sso, bearer, 520_000)
    before = await spent(sso, 2)
    assert before * 100 // CAP == 78
    await ask(pane, "Say hello again", 2)
    # the spend before it plus the prompt's own reservation (Claude Code's ~95 KB request
    # holds ~1.3 % of $10 until it settles)
    assert 78 <= await notice(pane) < 80
    # The pinned version drops a new notice while one is on screen (one "rate-limit-warning"
    # notification at a time), and shows a text once: the next comes after this one.
    await pane.wait_gone(NOTICE, 15)

    # Spent to 96 %: the next prompt passes 95 %.
    await spend(sso, bearer, 120_000)
    before = await spent(sso, 4)
    assert before * 100 // CAP == 96
    await ask(pane, "Say hello once more", 3)
    assert 96 <= await notice(pane) < 98

    # /usage: the cap in dollars, as GET /api/oauth/usage gives them (the client draws the
    # bar from the headers alone, and the dollars only when that endpoint answers).
    total = await spent(sso, 5)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    await pane.type("/usage")
    await pane.wait_for("Spend limit", 10)
    await pane.wait_for(re.escape(f"{format_usd(total)} / {format_usd(CAP)} spent today · "
                                  f"Resets {tomorrow:%b} {tomorrow.day}, 12am (UTC)"), 5)
