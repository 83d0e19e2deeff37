"""Real Claude Code (pinned, gateway mode) names its project: with `attributionProject` in its
settings and meterd's bearer carrying the `billing_group_tag` claim, its requests are recorded
under that project, and the upstream never sees `tags` or their beta."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from tests.claude_code import QUIET, claude_p
from tests.conftest import Upstream
from tests.sso import SSO

pytest_plugins = ("tests.sso_fixtures",)


async def _claude(gw_url: str, bearer: str, home: Path, settings: dict[str, str]) -> str:
    config = home / ".claude"
    config.mkdir(parents=True, exist_ok=True)
    (config / "settings.json").write_bytes(orjson.dumps(settings))
    run = await claude_p(home, {**QUIET, "CLAUDE_CODE_USE_GATEWAY": "1",
                                "ANTHROPIC_BASE_URL": gw_url, "ANTHROPIC_AUTH_TOKEN": bearer})
    assert run.code == 0, run.output[-2000:]
    return run.output



@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize(("tag", "project"), [("project", "payments"), ("", "")])
async def test_claude_code_with_attribution_project_is_recorded_under_that_project(
        start_sso: Callable[..., Awaitable[SSO]], upstream: Upstream, tmp_path: Path,
        tag: str, project: str) -> None:
    """Without the claim (billing_group_tag = ""), Claude Code sends no tags: no project."""
    sso = await start_sso(billing_group_tag=tag)
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    await sso.gateway.proxy.refresh_policy()
    out = await _claude(sso.url, answer["access_token"], tmp_path / "home",
                        {"attributionProject": "payments"})
    assert "Hello from the meterd mock upstream" in out
    sent = [r for r in upstream.recorded if r["path_qs"].startswith("/v1/messages")]
    assert sent
    for r in sent:
        assert "tags" not in orjson.loads(r["body"])
        assert not any("request-tags-" in v for k, v in r["headers"]
                       if k.lower() == "anthropic-beta")
    served = [e for e in await sso.gateway.settled(1) if e["status"] == "200"]
    assert served and all(e["project"] == project for e in served)
