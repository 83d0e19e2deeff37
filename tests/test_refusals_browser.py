"""In Chromium, as the people who use them: finance finds a refused request in the request
log with the cap that refused it; an admin reloads the key page and sees no second key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.test_budgets import new_session, send
from tests.test_dashboard_browser import _sign_in, chromium  # noqa: F401


@pytest.mark.timeout(120)
async def test_finance_filters_the_request_log_to_refused_requests(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    await gw.change(gw.admin.catalog.set_budget, "developer", "Ada", "daily", 0)
    async with new_session() as s:
        assert (await send(s, gw.url, key))[0] == 429
    await dashboard.roll_up()
    await dashboard.account("fred", "finance")

    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "fred", PASSWORDS["finance"])
    await page.click("nav >> text=Requests")
    await page.select_option("select[name=status]", "refused")
    await page.click("form button[type=submit]:has-text('Filter')")
    await page.wait_for_url("**status=refused**")
    rows = page.locator("#requests tbody tr")
    assert await rows.count() == 1
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    text = await rows.first.inner_text()
    assert "429 refused" in text
    assert f"budget: developer Ada, daily $0.00 · until {tomorrow:%Y-%m-%d} 00:00 UTC" in text
    assert "$0.00" in await rows.first.locator("td.num[data-sort]").nth(4).inner_text()
    # The developer's page counts it and links to it.
    ada = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    await page.goto(f"{gw.url}/admin/developers/{ada}")
    assert (await page.inner_text("#refused-count")).startswith("1 refused by the gateway")
    await page.click("#refused-count a")
    await page.wait_for_url("**status=refused**")
    assert await page.locator("#requests tbody tr").count() == 1
    # Failed requests are another filter: the refusal is not among them.
    await page.select_option("select[name=status]", "error")
    await page.click("form button[type=submit]:has-text('Filter')")
    await page.wait_for_url("**status=error**")
    assert await page.locator("#requests tbody tr").count() == 0


@pytest.mark.timeout(120)
async def test_admin_reloads_the_key_page_and_gets_no_second_key(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    dev = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])
    await page.goto(f"{gw.url}/admin/developers/{dev}")
    await page.click("#issue-key button[type=submit]")
    secret = (await page.inner_text("#new-key-secret")).strip()
    assert secret.startswith("mtd_")
    await page.reload()
    assert await page.locator("#new-key-secret").count() == 0
    assert secret not in await page.content()
    assert "shown once only" in await page.inner_text(".flash")
    assert len(await gw.admin.db(gw.admin.catalog.keys)) == 2  # Ada's first, and this one


@pytest.mark.timeout(120)
async def test_admin_confirms_a_cap_that_blocks_a_developer_before_it_is_saved(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    async with new_session() as s:
        assert (await send(s, gw.url, key))[0] == 200  # Ada spent 4500 µ$ today
    await gw.proxy.drain()
    ada = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])
    await page.goto(f"{gw.url}/admin/developers/{ada}")
    form = page.locator(f"form[action$='/developers/{ada}/budget']")
    await form.locator("input[name=amount]").fill("0.004")  # below what she spent
    await form.locator("select[name=period]").select_option("daily")
    await form.locator("button[type=submit]").click()
    # Not saved yet: the page names who it blocks now, with what they spent.
    await page.wait_for_selector("#cap-confirm")
    assert await gw.admin.db(gw.admin.catalog.budgets) == []
    assert await page.locator("#blocked tbody tr").all_inner_texts() == [
        "Ada\tplatform\t$0.00"]
    await page.click("#cap-confirm button[type=submit]")
    await page.wait_for_selector(".flash:has-text('Personal cap saved')")
    [cap] = await gw.admin.db(gw.admin.catalog.budgets)
    assert (cap["scope"], cap["period"], cap["amount_micros"]) == ("developer", "daily", 4000)


@pytest.mark.timeout(120)
async def test_admin_undoes_a_removed_cap_from_the_audit_page(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    cat = gw.admin.catalog
    await gw.developer("Ada", "platform")
    cap = await gw.change(cat.set_budget, "team", "platform", "monthly", 250_000_000)
    await gw.change(cat.delete_budget, cap["id"])
    assert await gw.admin.db(cat.budgets) == []
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])
    await page.goto(f"{gw.url}/admin/audit")
    row = page.locator("#audit tbody tr", has_text="budget.delete")
    # Names and dollars, not ids and µ$.
    text = await row.inner_text()
    assert "$250.00" in text and "platform" in text
    assert "250000000" not in text and cap["scope_id"] not in text
    await row.locator("form.undo button").click()
    await page.wait_for_selector(".flash:has-text('Removed cap restored')")
    [back] = await gw.admin.db(cat.budgets)
    assert (back["scope"], back["scope_id"], back["period"], back["amount_micros"],
            back["mode"]) == ("team", cap["scope_id"], "monthly", 250_000_000, cap["mode"])
    # The undo is audited, under the admin who pressed it.
    [latest] = await gw.admin.db(cat.audit, 1)
    assert (latest["actor"], latest["action"]) == ("alice", "budget.set")
