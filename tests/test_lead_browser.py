"""A team lead in headless Chromium: from the report's chart to its own team's requests (never
a 403), the team page's blocked list and badges, and editing a cap in place."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dashboard import sessions
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard
from tests.test_budgets import new_session, send
from tests.test_dashboard_browser import chromium  # noqa: F401


async def _lead_page(dashboard: Dashboard, chromium: Any) -> Any:  # noqa: F811
    """A Chromium page signed in as the lead of "platform" (the session an SSO sign-in
    starts, dashboard_fixtures.Dashboard.sso_session)."""
    lead = await dashboard.signed_in("team_lead")
    cookie = next(c for c in lead.session.cookie_jar if c.key == sessions.COOKIE)
    context = await chromium.new_context()
    await context.add_cookies([{"name": sessions.COOKIE, "value": cookie.value,
                                "url": f"{dashboard.gateway.url}/admin/"}])
    return await context.new_page()


@pytest.mark.timeout(120)
async def test_lead_clicks_a_report_bar_through_to_its_own_teams_requests(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    ada, zed = await gw.developer("Ada", "platform"), await gw.developer("Zed", "elsewhere")
    async with new_session() as s:
        for key in (ada, zed, zed):
            assert (await send(s, gw.url, key))[0] == 200
    await dashboard.roll_up()
    teams = {t["name"]: t["id"] for t in await gw.admin.db(gw.admin.catalog.teams)}
    page = await _lead_page(dashboard, chromium)
    await page.goto(f"{gw.url}/admin/reports?dimension=developer")
    today = datetime.now(UTC).date().isoformat()
    async with page.expect_navigation() as nav:
        await page.click(f"a.column[data-day='{today}']")
    assert (await nav.value).status == 200
    assert f"team={teams['platform']}" in page.url and f"start={today}" in page.url
    rows = page.locator("#requests tbody tr")
    assert await rows.count() == 1  # Ada's; Zed's two are another team's
    assert "Ada" in await rows.first.inner_text()
    # The navigation has the log; without a team it is the lead's own team's.
    await page.click("nav >> text=Requests")
    assert await page.locator("#requests tbody tr").count() == 1
    # The filters offer its own team only; another team's log is refused.
    options = await page.locator("select[name=team] option").all_inner_texts()
    assert "elsewhere" not in options
    refused = await page.goto(f"{gw.url}/admin/requests?team={teams['elsewhere']}")
    assert refused is not None and refused.status == 403


@pytest.mark.timeout(120)
async def test_lead_edits_the_per_member_cap_in_place_and_sees_who_it_blocks(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    cat = gw.admin.catalog
    ada = await gw.developer("Ada", "platform")
    await gw.developer("Bo", "platform")
    await gw.change(cat.set_budget, "team_member", "platform", "daily", 20_000_000)
    async with new_session() as s:
        assert (await send(s, gw.url, ada))[0] == 200  # Ada: 4,500 µ$ today
    await gw.proxy.drain()
    team = (await gw.admin.db(cat.teams))[0]["id"]
    page = await _lead_page(dashboard, chromium)
    await page.goto(f"{gw.url}/admin/teams/{team}")
    assert await page.locator("#blocked-table").count() == 0  # nobody yet
    await page.click("#member-cap .edit-cap summary")
    amount = page.locator("#member-cap .edit-cap input[name=amount]")
    assert await amount.input_value() == "20.00"
    await amount.fill("0.004")  # below Ada's 4,500 µ$: the confirmation names her
    await page.click("#member-cap .edit-cap button[type=submit]")
    await page.wait_for_selector("#cap-confirm")
    assert [t.split("\t")[0] for t in
            await page.locator("#blocked tbody tr").all_inner_texts()] == ["Ada"]
    await page.click("#cap-confirm button[type=submit]")
    await page.wait_for_selector(".flash:has-text('Per-member cap saved')")
    [cap] = await gw.admin.db(cat.budgets)
    assert (cap["scope"], cap["period"], cap["amount_micros"]) == ("team_member", "daily", 4_000)
    # Back on the team page: Ada is blocked by it until midnight, with the badge.
    blocked = await page.locator("#blocked-table tbody tr").all_inner_texts()
    assert len(blocked) == 1 and blocked[0].startswith("Ada")
    assert "each member of platform, daily" in blocked[0]
    assert await page.locator("#members .badge-blocked").count() == 1
