"""A grant made in the dashboard shows beside the cap it raises, and the proxy applies it; a
per-model cap is listed with the other caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from ledger.grants import active, create_grant
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
    (row,) = [r for r in rows if "granted" in r and "opus" not in r]
    # The per-model cap is listed with the others, named for its models; a grant without a
    # period raises every cap of its scope, this one too, as admission applies it.
    (opus,) = [r for r in rows if "Developer Ada on opus" in r]
    assert "+$5.25 granted until" in opus and "$7.25" in opus, opus
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


@pytest.mark.timeout(120)
async def test_model_caps_are_set_and_removed_and_a_grant_revoked_from_the_pages(
        dashboard: Dashboard, chromium: Any) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    cat = gw.admin.catalog
    await gw.change(cat.set_budget, "developer", "Ada", "monthly", 10_000_000)
    dev_id = (await gw.admin.db(cat.developers))[0]["id"]
    team_id = (await gw.admin.db(cat.teams))[0]["id"]
    grant = await gw.change(create_grant, cat, "developer", dev_id, 4_000_000,
                            datetime.now(UTC) + timedelta(days=2), "seed", "launch",
                            period="monthly")
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the forms' "Remove this…?" confirms
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])

    async def me() -> list[dict[str, Any]]:
        await gw.proxy.refresh_policy()
        async with aiohttp.ClientSession() as s, s.get(
                gw.url + "/meterd/v1/me", headers={"x-api-key": key}) as r:
            return list((await r.json())["budgets"])

    async def cap(form: dict[str, str]) -> None:
        for name, value in form.items():
            if name in ("scope", "period", "mode"):
                await page.select_option(f"#model-cap-form select[name={name}]", value)
            else:
                await page.fill(f"#model-cap-form input[name={name}]", value)
        await page.click("#model-cap-form button[type=submit]")
        await page.wait_for_selector(".flash:has-text('Model cap saved')")

    await page.goto(f"{gw.url}/admin/developers/{dev_id}")
    await cap({"models": "Opus, claude-haiku-*", "amount": "3", "period": "weekly",
               "mode": "strict"})
    rows = await page.locator("#model-caps-table tbody tr").all_inner_texts()
    assert len(rows) == 1 and "opus, claude-haiku-*" in rows[0] and "$3.00" in rows[0]
    assert "weekly" in rows[0] and "strict" in rows[0]
    (opus,) = [b for b in await me() if b["models"]]
    assert (opus["models"], opus["amount_micros"], opus["period"]) == (
        ["opus", "claude-haiku-*"], 3_000_000, "weekly")

    # The running grant, revoked: the cap is $10 again at once.
    (monthly,) = [b for b in await me() if not b["models"]]
    assert (monthly["amount_micros"], monthly["granted_micros"]) == (14_000_000, 4_000_000)
    await page.click(f"#grants-table tr[data-id='{grant['id']}'] button")
    await page.wait_for_selector(".flash:has-text('Grant revoked')")
    assert await page.locator("#grants-table").count() == 0
    (monthly,) = [b for b in await me() if not b["models"]]
    assert (monthly["amount_micros"], monthly["granted_micros"]) == (10_000_000, 0)

    await page.click("#model-caps-table tbody tr button")
    await page.wait_for_selector(".flash:has-text('Model cap removed')")
    assert await page.locator("#model-caps-table").count() == 0
    assert [b for b in await me() if b["models"]] == []

    # Each member of the team, and the organization.
    await page.goto(f"{gw.url}/admin/teams/{team_id}")
    await cap({"models": "opus", "amount": "20", "scope": "team_member"})
    assert "each member" in await page.inner_text("#model-caps-table tbody tr")
    await page.goto(f"{gw.url}/admin/teams")
    await cap({"models": "sonnet", "amount": "500", "period": "daily"})
    assert sorted((c["scope"], c["scope_id"], c["amount_micros"], c["period"])
                  for c in await gw.admin.db(ModelCaps(cat).all)) == [
        ("org", "", 500_000_000, "daily"), ("team_member", team_id, 20_000_000, "monthly")]
    assert sorted((b["models"][0], b["amount_micros"]) for b in await me() if b["models"]) \
        == [("opus", 20_000_000), ("sonnet", 500_000_000)]
    assert [a["actor"] for a in await gw.admin.db(cat.audit)
            if a["action"] in ("model_budget.set", "model_budget.delete", "grant.revoke")] \
        == ["alice"] * 5


async def test_model_cap_and_grant_forms_need_their_csrf_token(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    cat = gw.admin.catalog
    dev_id = (await gw.admin.db(cat.developers))[0]["id"]
    capped = await gw.change(ModelCaps(cat).set, "org", "", "daily", ["opus"], 1_000_000)
    grant = await gw.change(create_grant, cat, "org", "", 1_000_000,
                            datetime.now(UTC) + timedelta(days=1), "seed", "x")
    admin = await dashboard.signed_in("admin")
    form = {"models": "opus", "amount": "5"}
    for path, body in ((f"/admin/developers/{dev_id}/model_caps", form),
                       ("/admin/org/model_caps", form),
                       (f"/admin/model_caps/{capped['id']}/delete", {}),
                       (f"/admin/grants/{grant['id']}/revoke", {})):
        status, _, _ = await admin.post(path, body, csrf=False)
        assert status == 403, path
    assert [c["id"] for c in await gw.admin.db(ModelCaps(cat).all)] == [capped["id"]]
    assert [g["id"] for g in await gw.admin.db(active, cat)] == [grant["id"]]
