"""Real Claude Code (the pinned version) past a cap on meterd: it prints the 429's one sentence
(which cap, when it resets, where to ask for more) and stops, with a signed-in developer's
bearer token and with a gateway key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.money import parse_usd
from tests.sso import SSO
from tests.test_device_flow_claude_code import _claude

pytest_plugins = ("tests.sso_fixtures",)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_past_a_team_pool_prints_when_it_resets_and_what_to_do(
        sso: SSO, tmp_path: Path) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    gateway = sso.gateway
    returncode, out = await _claude(sso.url, answer["access_token"], tmp_path / "home")
    assert returncode == 0, out[-2000:]
    await gateway.settled(1)
    # what Claude Code just spent is the whole pool now: the next request is refused
    await gateway.change(gateway.admin.catalog.set_budget, "team", "engineering", "monthly",
                         parse_usd("0.000001"))
    returncode, out = await _claude(sso.url, answer["access_token"], tmp_path / "home")
    assert returncode != 0, out[-2000:]
    assert "spend limit reached (team engineering, monthly) · resets " in out, out[-2000:]
    assert "ask your meterd administrator for an increase" in out
    # Refused before the provider: each attempt is a $0 row of the request log naming the
    # pool, and nothing was served or metered.
    refused = [e for e in await gateway.events() if e["status"] != "200"]
    assert refused and all(
        e["status"] == "429" and e["cost_micros"] == "0"
        and e["refusal"].startswith("budget: team engineering") for e in refused), refused
