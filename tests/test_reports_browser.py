"""Reports, forecasts and self-service in headless Chromium, as the role that uses each:
finance (pivot, presets, click-through, exports that follow the filters, the statement), an
admin (the forecast list) and a developer (own range, export, session view, revoking a
leaked key). Usage is written straight into the ledger with amounts chosen by hand."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.money import format_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.request_rows import insert_request
from tests.test_dashboard_browser import _sign_in, chromium  # noqa: F401

TODAY = datetime.now(UTC).date()
YESTERDAY = TODAY - timedelta(days=1)


async def _seed(dashboard: Dashboard) -> dict[str, str]:
    """Ada and Bo (platform), Cy (research); usage yesterday and today, one session of Ada's
    with a subagent."""
    gw = dashboard.gateway
    keys = {n: await gw.developer(n, t) for n, t in
            (("Ada", "platform"), ("Bo", "platform"), ("Cy", "research"))}
    cat = gw.admin.catalog
    devs = {d["name"]: d for d in await gw.admin.db(cat.developers)}
    usage = [  # day, developer, model, cost µ$
        (YESTERDAY, "Ada", "claude-opus-4-8", 3_000_000),
        (TODAY, "Ada", "claude-sonnet-4-6", 500_000),
        (YESTERDAY, "Bo", "claude-sonnet-4-6", 1_200_000),
        (TODAY, "Cy", "claude-haiku-4-5", 40_000),
    ]

    rollup = "VALUES (?, ?, ?, ?, 1, 0, 0, 100, 50, 0, 0, 0, 0, ?, 0)"

    def write() -> None:
        for day, name, model, cost in usage:
            d = devs[name]
            cat.conn.execute(
                f"INSERT INTO usage_daily {rollup}",
                [day, d["id"], d["team_id"], model, cost])
            cat.conn.execute(
                f"INSERT INTO usage_sessions {rollup}",
                [day, f"sess-{name.lower()}", d["id"], d["team_id"], cost])
            ts = datetime.combine(day, datetime.min.time()) + timedelta(hours=1)
            insert_request(cat.conn, id=f"r-{name}-{day}", ts=ts, developer_id=d["id"],
                           team_id=d["team_id"], model=model, status=200, cost_micros=cost,
                           input_tokens=100, output_tokens=50,
                           session_id=f"sess-{name.lower()}")
        # A subagent of Ada's session, ten minutes later.
        ada = devs["Ada"]
        insert_request(cat.conn, id="r-sub", ts=datetime.combine(
            YESTERDAY, datetime.min.time()) + timedelta(hours=1, minutes=10),
            developer_id=ada["id"], team_id=ada["team_id"], model="claude-haiku-4-5",
            status=200, cost_micros=7_000, output_tokens=20, session_id="sess-ada",
            agent_id="agent-sub", parent_agent_id="agent-main")

    await gw.admin.db(write)
    return {"ada_key": keys["Ada"], "ada": devs["Ada"]["id"]}


@pytest.mark.timeout(180)
async def test_finance_pivots_clicks_through_and_exports_what_is_on_screen(
        dashboard: Dashboard, chromium: Any, tmp_path: Path) -> None:  # noqa: F811
    await _seed(dashboard)
    await dashboard.account("fred", "finance")
    base = dashboard.gateway.url
    page = await (await chromium.new_context(accept_downloads=True)).new_page()
    await _sign_in(page, base, "fred", PASSWORDS["finance"])
    await page.goto(f"{base}/admin/reports")
    await page.click("#presets a[data-preset='7d']")
    await page.wait_for_selector("#presets a[data-preset='7d'][aria-current]")
    await page.select_option("#report-form select[name=dimension]", "developer")
    await page.click("#report-form button[type=submit]")
    await page.wait_for_selector("#report tbody tr")
    # Rows × periods: 7 day columns, costliest developer first, totals by hand.
    assert await page.locator("#report thead th.num").count() == 7 + 2
    names = await page.locator("#report tbody tr td:first-child a").all_inner_texts()
    assert names == ["Ada", "Bo", "Cy"]
    assert await page.inner_text("#report tfoot td:last-child") == format_usd(4_740_000)
    assert await page.locator("#legend li").count() == 3
    assert await page.locator("#others-row").count() == 0

    # Filtered to a team, the CSV holds that team's developers with names and emails.
    platform = await page.locator("#report-form select[name=team] option",
                                  has_text="platform").get_attribute("value")
    await page.select_option("#report-form select[name=team]", platform)
    await page.click("#report-form button[type=submit]")
    await page.wait_for_selector("#report tbody tr")
    async with page.expect_download() as info:
        await page.click("#download-csv")
    download = await info.value
    assert download.suggested_filename.startswith(
        f"meterd-spend-by-developer-per-day-team-{platform}-")
    rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
    assert sorted((r["name"], r["email"], r["team"], int(r["cost_micros"])) for r in rows) == [
        ("Ada", "ada@example.com", "platform", 500_000),
        ("Ada", "ada@example.com", "platform", 3_000_000),
        ("Bo", "bo@example.com", "platform", 1_200_000)]

    # A column of the chart opens that day's requests of the team.
    await page.click(f"svg.chart a.column[data-day='{YESTERDAY}']")
    await page.wait_for_url("**/requests?**")
    assert f"start={YESTERDAY}" in page.url and f"team={platform}" in page.url
    assert "1 match" not in await page.inner_text("main")  # Ada's two requests and Bo's one
    assert await page.locator("table.data tbody tr").count() == 3
    async with page.expect_download() as info:
        await page.click("#requests-csv")
    got = list(csv.DictReader(io.StringIO(Path(await (await info.value).path()).read_text())))
    assert sorted((r["developer"], r["email"], int(r["cost_micros"])) for r in got) == [
        ("Ada", "ada@example.com", 7_000), ("Ada", "ada@example.com", 3_000_000),
        ("Bo", "bo@example.com", 1_200_000)]

    # The chargeback statement of this month: team × model with totals.
    await page.goto(f"{base}/admin/reports/statement?month={TODAY.replace(day=1)}")
    if YESTERDAY.month == TODAY.month:
        assert await page.inner_text("#statement-total") == format_usd(4_740_000)
        assert await page.inner_text("tr.subtotal[data-team=platform] td:last-child") == \
            format_usd(4_700_000)


async def test_admin_sees_every_team_forecast(dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    await _seed(dashboard)
    await dashboard.account("alice", "admin")
    base = dashboard.gateway.url
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, base, "alice", PASSWORDS["admin"])
    assert await page.locator("#month-end-forecast tbody tr").count() == 3  # org + 2 teams
    await page.goto(f"{base}/admin/forecasts")
    scopes = await page.locator("#forecasts tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.scope === 'org' ? 'org' : r.cells[0].innerText)")
    assert scopes == ["org", "platform", "research"]


async def test_developer_serves_itself_and_revokes_a_leaked_key(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    seeded = await _seed(dashboard)
    gw = dashboard.gateway
    leaked = await gw.admin.db(gw.admin.catalog.issue_key, seeded["ada"])
    base = gw.url
    page = await (await chromium.new_context(accept_downloads=True)).new_page()
    await page.goto(f"{base}/admin/signin")
    await page.fill("#signin-key input[name=key]", seeded["ada_key"])
    await page.click("#signin-key button[type=submit]")
    await page.wait_for_selector("#my-range")
    await page.fill("#my-range-form input[name=start]", YESTERDAY.isoformat())
    await page.fill("#my-range-form input[name=end]", TODAY.isoformat())
    await page.click("#my-range-form button[type=submit]")
    await page.wait_for_selector("#my-models")
    # Ada: 3,000,000 + 500,000 in the rollups.
    assert await page.get_attribute("#my-range-total", "data-micros") == "3500000"
    async with page.expect_download() as info:
        await page.click("#my-csv")
    rows = list(csv.DictReader(io.StringIO(Path(await (await info.value).path()).read_text())))
    assert sorted(int(r["cost_micros"]) for r in rows) == [500_000, 3_000_000]

    # The session view from the session's link: both agents, cost by hand, 10 min 0 s.
    await page.click("#my-sessions a")
    await page.wait_for_selector("#session-cost")
    assert await page.get_attribute("#session-cost", "data-micros") == str(
        3_000_000 + 500_000 + 7_000)
    agents = await page.locator("#session-agents tbody tr td:first-child").all_inner_texts()
    assert agents == ["main", "agent-sub"]
    # Bo's session is not Ada's to see.
    response = await page.goto(f"{base}/admin/sessions/sess-bo")
    assert response is not None and response.status == 404

    # Revoking the leaked key: gone for the gateway, audited under Ada.
    await page.goto(f"{base}/admin/me")
    await page.click(f"tr[data-key='{leaked.display}'] form.revoke-own button")
    await page.wait_for_selector(".flash:has-text('revoked')")
    keys = {k["id"]: k for k in await gw.admin.db(gw.admin.catalog.keys, seeded["ada"])}
    assert keys[leaked.id]["revoked_at"] is not None
    assert sum(k["revoked_at"] is None for k in keys.values()) == 1  # her session's key
    audit = await gw.admin.db(gw.admin.catalog.audit, 5)
    assert audit[0]["target"] == leaked.id or leaked.id in str(audit[0])


async def test_request_log_fits_a_laptop_and_a_phone_shows_today_and_a_menu(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    await _seed(dashboard)
    await dashboard.account("alice", "admin")
    base = dashboard.gateway.url
    laptop = await (await chromium.new_context(viewport={"width": 1440, "height": 900})
                    ).new_page()
    await _sign_in(laptop, base, "alice", PASSWORDS["admin"])
    await laptop.goto(f"{base}/admin/requests")
    wrap = "#requests >> xpath=.."
    assert await laptop.locator(wrap).evaluate("w => w.scrollWidth - w.clientWidth") <= 0
    assert not await laptop.locator("#requests th.low").first.is_visible()

    phone = await (await chromium.new_context(viewport={"width": 390, "height": 844},
                                              is_mobile=True)).new_page()
    await _sign_in(phone, base, "alice", PASSWORDS["admin"])
    # The 30-day chart is wider than the phone: it opens on its right end, today's bar.
    fits = await phone.locator(".chart-wrap").first.evaluate(
        "w => { const bars = w.querySelectorAll('rect.bar'); const last = bars[bars.length - 1]"
        ".getBoundingClientRect(); const box = w.getBoundingClientRect();"
        " return [w.scrollWidth > w.clientWidth, last.right <= box.right + 1,"
        " last.left >= box.left]; }")
    assert fits == [True, True, True]
    # The navigation is a menu.
    assert not await phone.locator("nav.nav").is_visible()
    await phone.click("button.nav-toggle")
    await phone.click("nav.nav >> text=Reports")
    await phone.wait_for_url("**/reports")
