"""A grant made in the dashboard shows beside the cap it raises, and the proxy applies it; a
per-model cap is listed with the other caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from ledger.grants import create_grant
from ledger.model_caps import ModelCaps
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.test_dashboard_browser import _sign_in, chromium

__all__ = ["chromium"]  # the fixture, used by name


@pytest.mark.timeout(120)
async def test_a_grant_shows_beside_the_cap_and_the_proxy_applies_it(
        dashboard: Dashboard, chromium: Any) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    cat = gw.admin.catalog
    await gw.change(cat.set_budget, "developer", "Ada", "daily", 10_000_000)
    await gw.change(ModelCaps(cat).set, "developer", "Ada", "weekly", ["opus"], 2_000_000)
    dev_id = (await gw.admin.db(cat.developers))[0]["id"]
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])

    await page.goto(f"{gw.url}/admin/developers/{dev_id}")
    until = (datetime.now(UTC) + timedelta(days=3)).date()
    await page.fill("#grant-form input[name=amount]", "5.25")
    await page.fill("#grant-form input[name=until]", until.isoformat())
    await page.fill("#grant-form input[name=reason]", "<b>release</b> week")
    await page.click("#grant-form button[type=submit]")
    await page.wait_for_selector(".flash:has-text('Grant saved')")
    rows = await page.locator("#caps-table tbody tr").all_inner_texts()
    (row,) = [r for r in rows if "granted" in r]
    # The per-model cap is listed with the others, named for its models.
    (opus,) = [r for r in rows if "Developer Ada on opus" in r]
    assert "$2.00" in opus and "granted" not in opus
    # $10 cap + $5.25 granted = $15.25, until the end of that UTC day.
    assert "+$5.25 granted until" in row and "$15.25" in row, row
    assert f"{until.isoformat()} 23:59" in row

    await gw.proxy.refresh_policy()
    async with aiohttp.ClientSession() as s, s.get(
            gw.url + "/meterd/v1/me", headers={"x-api-key": key}) as r:
        budgets = (await r.json())["budgets"]
    (budget,) = [b for b in budgets if not b["models"]]
    assert (budget["amount_micros"], budget["granted_micros"]) == (15_250_000, 5_250_000)
    (audit,) = [a for a in await gw.admin.db(cat.audit) if a["action"] == "grant.create"]
    assert audit["actor"] == "alice"

    # A team's pool shows its grant beside the cap on the team page: $100 + $7.50.
    team_id = (await gw.admin.db(cat.teams))[0]["id"]
    await gw.change(cat.set_budget, "team", "platform", "monthly", 100_000_000)
    await gw.change(create_grant, cat, "team", "platform", 7_500_000,
                    datetime.now(UTC) + timedelta(days=1), "alice", "hackathon")
    await page.goto(f"{gw.url}/admin/teams/{team_id}")
    pool = await page.inner_text("#pool-budgets tbody tr")
    assert "$107.50" in pool and "incl. +$7.50 granted" in pool, pool
