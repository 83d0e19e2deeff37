"""Headless Chromium through the managed-settings editor: an admin edits the organization's
default as JSON, sees the diff before saving, and a save whose preview another change
overtook is refused with 409 and shown the diff against what is saved now."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.managed import ManagedSettings, checksum
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.test_dashboard_browser import _sign_in, chromium  # noqa: F401


def _changed(diff: str) -> list[str]:
    return [line for line in diff.splitlines()
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]


async def _preview(page: Any, text: str) -> None:
    await page.fill("#managed-editor textarea[name=settings]", text)
    await page.click("#managed-editor button[type=submit]")
    await page.wait_for_load_state()


async def _save(page: Any) -> int:
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await page.click("#managed-save button[type=submit]")
    await page.wait_for_load_state()
    return int((await answer.value).status)


@pytest.mark.timeout(180)
async def test_admin_previews_a_diff_saves_and_a_stale_preview_is_refused(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    admin_state = gw.admin
    managed = ManagedSettings(admin_state.catalog)
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])

    await page.click("nav >> text=Managed")
    await page.click("#managed-policies tr[data-scope=org] >> text=Edit")

    # Text that is not JSON: the browser will not send it.
    await page.fill("#managed-editor textarea[name=settings]", '{"env": ')
    assert "Not valid JSON" in await page.eval_on_selector(
        "#managed-editor textarea", "el => el.validationMessage")
    # JSON that Claude Code cannot load: the server says why, the text is kept.
    await _preview(page, '{"env": {"A": 1}}')
    assert '"env" maps' in await page.inner_text("#managed-error")
    assert await page.input_value("#managed-editor textarea") == '{"env": {"A": 1}}'

    await _preview(page, '{"env": {"A": "1"}}')
    assert _changed(await page.inner_text("#managed-diff")) == [
        "+{", '+  "env": {', '+    "A": "1"', "+  }", "+}"]
    assert await admin_state.db(managed.get, "org") is None  # a preview saves nothing
    assert await _save(page) == 303
    assert "managed settings saved" in await page.inner_text(".flash")
    assert (await admin_state.db(managed.get, "org"))["settings"] == {"env": {"A": "1"}}

    # Preview a change; meanwhile someone else saves another one (the API, the CLI).
    await page.click("#managed-policies tr[data-scope=org] >> text=Edit")
    await _preview(page, '{"env": {"A": "2"}}')
    assert _changed(await page.inner_text("#managed-diff")) == ['-    "A": "1"', '+    "A": "2"']
    await admin_state.db(managed.set, "org", {"env": {"A": "3"}}, actor="cli")
    assert await _save(page) == 409
    assert "changed these settings after your preview" in await page.inner_text(
        "#managed-error")
    assert _changed(await page.inner_text("#managed-diff")) == ['-    "A": "3"', '+    "A": "2"']
    assert (await admin_state.db(managed.get, "org"))["settings"] == {"env": {"A": "3"}}

    # Seen the new diff, the admin saves again: now it goes through.
    assert await _save(page) == 303
    assert "managed settings saved" in await page.inner_text(".flash")
    saved = await admin_state.db(managed.get, "org")
    assert saved["settings"] == {"env": {"A": "2"}}
    assert checksum({"env": {"A": "2"}})[:19] in await page.inner_text(
        "#managed-policies tr[data-scope=org]")
    audit = [(a["actor"], a["action"]) for a in await admin_state.db(
        admin_state.catalog.audit, 100) if a["action"].startswith("managed_settings")]
    assert audit == [("alice", "managed_settings.set"), ("cli", "managed_settings.set"),
                     ("alice", "managed_settings.set")]
