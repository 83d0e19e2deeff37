"""The whole sign-in with real parts: a person in headless Chromium approves the device on the
verification page after signing in at the identity provider; real Claude Code in gateway mode
then works with the bearer, metered to the developer that sign-in provisioned, until the
sign-in is revoked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.claude_code import QUIET, claude_p
from tests.sso import SSO, claims

pytest_plugins = ("tests.sso_fixtures",)


async def _approve_in_browser(sso: SSO, chromium: Any, verification_uri_complete: str,
                              user_code: str) -> str:
    """A person opens the link Claude Code printed, presses Continue, signs in at the
    provider, and presses Approve; returns what the last page says."""
    page = await (await chromium.new_context()).new_page()
    await page.goto(verification_uri_complete)
    code = page.locator("#device-code input[name=user_code]")
    assert await code.input_value() == user_code
    assert page.url == verification_uri_complete  # filled in, not submitted
    await page.click("#device-code button[type=submit]")
    await page.wait_for_selector("#approve")  # back from the provider
    assert await page.inner_text("#approve-code") == user_code
    assert await page.inner_text("#approve-team") == "platform"
    await page.click("#approve-form button[value=approve]")
    await page.wait_for_selector("#device-message")
    return str(await page.inner_text("#device-message"))


async def _claude(gw_url: str, bearer: str, home: Path) -> tuple[int, str]:
    run = await claude_p(home, {**QUIET, "CLAUDE_CODE_USE_GATEWAY": "1",
                                "ANTHROPIC_BASE_URL": gw_url, "ANTHROPIC_AUTH_TOKEN": bearer})
    return run.code, run.output



@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_browser_sign_in_then_claude_code_in_gateway_mode_is_metered_until_revoked(
        sso: SSO, chromium: Any, tmp_path: Path) -> None:
    sso.idp.add_user("u-ada", "ada@example.com", ["eng-platform"], name="Ada Lovelace")
    sso.idp.sign_in("u-ada")
    async with sso.browser() as cli:
        code = await sso.device_code(cli)
        said = await _approve_in_browser(sso, chromium, code["verification_uri_complete"],
                                         code["user_code"])
        assert "Signed in as ada@example.com" in said
        status, answer = await sso.poll(cli, code["device_code"])
    assert status == 200 and answer["email"] == "ada@example.com"
    bearer = answer["access_token"]

    returncode, out = await _claude(sso.url, bearer, tmp_path / "home")
    assert returncode == 0, out[-2000:]
    assert "Hello from the meterd mock upstream" in out
    admin = sso.gateway.admin
    [dev] = await admin.db(admin.catalog.developers)
    assert (dev["name"], dev["team_name"]) == ("Ada Lovelace", "platform")
    served = [e for e in await sso.gateway.settled(1) if e["status"] == "200"]
    assert served and all(e["developer_id"] == dev["id"] and e["session_id"] and
                          e["key_id"] == claims(bearer)["sid"] and int(e["cost_micros"]) > 0
                          for e in served)

    async with sso.browser() as s, s.post(sso.url + "/oauth/revoke",
                                          data={"token": bearer}) as r:
        assert r.status == 200
    await sso.refused_within(bearer, 1.0)
    returncode, out = await _claude(sso.url, bearer, tmp_path / "home")
    assert returncode != 0 and "revoked" in out, out[-2000:]
