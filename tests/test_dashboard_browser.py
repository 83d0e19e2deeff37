"""Headless Chromium through the whole rollout: an admin sets up a team, a developer, a budget
and a key in the dashboard; the key works through the proxy; the usage shows on the overview
after a rollup; finance downloads a CSV whose totals match the page."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from ledger.money import format_usd, parse_usd
from tests.conftest import need
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard, break_teams

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    need(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install chromium)")
    need(importlib.util.find_spec("playwright") is not None,
         "playwright is not installed (pip install playwright)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


async def _sign_in(page: Any, base: str, name: str, password: str) -> None:
    await page.goto(f"{base}/admin/signin")
    await page.fill("#signin-account input[name=name]", name)
    await page.fill("#signin-account input[name=password]", password)
    await page.click("#signin-account button[type=submit]")
    await page.wait_for_url(f"{base}/admin/")


@pytest.mark.timeout(180)
async def test_admin_rolls_out_a_key_and_finance_exports_matching_totals(
        dashboard: Dashboard, chromium: Any, tmp_path: Path) -> None:
    gw = dashboard.gateway
    base = gw.url
    await dashboard.account("alice", "admin")
    await dashboard.account("fred", "finance")

    admin = await (await chromium.new_context()).new_page()
    await _sign_in(admin, base, "alice", PASSWORDS["admin"])

    # A team, through its form.
    await admin.click("nav >> text=Teams")
    await admin.fill("#create-team input[name=name]", "platform")
    await admin.click("#create-team button[type=submit]")
    await admin.wait_for_selector("h1:has-text('platform')")
    assert "Team platform created" in await admin.inner_text(".flash")
    team_url = admin.url

    # Its budget, through the pool form.
    await admin.fill("#pool input[name=amount]", "250")
    await admin.select_option("#pool select[name=period]", "monthly")
    await admin.click("#pool button[type=submit]")
    await admin.wait_for_selector(".flash:has-text('Team budget saved')")
    assert (await admin.inner_text("#pool-budgets tbody tr td:nth-child(2)")).startswith(
        "$250.00")

    # A developer in it, then a key for them (shown once).
    await admin.fill("#add-member input[name=name]", "Ada Lovelace")
    await admin.fill("#add-member input[name=email]", "ada@example.com")
    await admin.click("#add-member button[type=submit]")
    await admin.wait_for_selector("#developer-name:has-text('Ada Lovelace')")
    await admin.click("#issue-key button[type=submit]")
    secret = (await admin.inner_text("#new-key-secret")).strip()
    assert secret.startswith("mtd_")

    budgets = await gw.admin.db(gw.admin.catalog.budgets)
    assert [(b["scope"], b["amount_micros"]) for b in budgets] == [("team", parse_usd("250"))]

    # The key works through the proxy, with the anthropic SDK.
    await gw.proxy.refresh_policy()
    async with anthropic.AsyncAnthropic(api_key=secret, base_url=base, max_retries=0) as sdk:
        for _ in range(2):
            reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                              messages=[{"role": "user", "content": "hi"}])
            assert reply.usage.output_tokens > 0
    await dashboard.roll_up()

    # The usage is on the overview.
    await admin.goto(f"{base}/admin/")
    teams = await admin.locator("#by-team tbody tr td:first-child").all_inner_texts()
    assert teams == ["platform"]
    spent = int(await admin.get_attribute("#spent-today", "data-micros") or 0)
    assert spent > 0
    assert await admin.inner_text("#spent-today") == format_usd(spent)
    # Sorting is progressive enhancement: a click on a header sorts and says so.
    await admin.click("#by-team thead th:nth-child(2)")
    assert await admin.get_attribute("#by-team thead th:nth-child(2)", "aria-sort") == \
        "ascending"
    await admin.goto(team_url)
    assert await admin.locator("#pool-budgets svg.meter").count() == 1

    # Finance, in its own browser profile: a report and its CSV agree.
    finance = await (await chromium.new_context(accept_downloads=True)).new_page()
    await _sign_in(finance, base, "fred", PASSWORDS["finance"])
    await finance.click("nav >> text=Reports")
    await finance.select_option("#report-form select[name=dimension]", "developer")
    await finance.click("#report-form button[type=submit]")
    await finance.wait_for_selector("#report-total")
    total = int(await finance.get_attribute("#report-total", "data-micros") or -1)
    shown = await finance.inner_text("#report-total")
    assert total == spent and shown == format_usd(total)
    async with finance.expect_download() as info:
        await finance.click("#download-csv")
    download = await info.value
    target = tmp_path / download.suggested_filename
    await download.save_as(target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [(r["name"], r["email"], r["team"]) for r in rows] == [
        ("Ada Lovelace", "ada@example.com", "platform")]
    assert sum(int(r["cost_micros"]) for r in rows) == total
    assert int(rows[0]["requests"]) == 2
    # Finance sees no forms that change anything.
    await finance.goto(team_url)
    assert await finance.locator("main form[method=post]").count() == 0


async def test_pages_fit_a_phone_screen(dashboard: Dashboard, chromium: Any) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    await dashboard.account("alice", "admin")
    context = await chromium.new_context(viewport={"width": 390, "height": 844},
                                         is_mobile=True)
    page = await context.new_page()
    base = dashboard.gateway.url
    await _sign_in(page, base, "alice", PASSWORDS["admin"])
    for path in ("/admin/", "/admin/teams", "/admin/developers", "/admin/requests",
                 "/admin/reports", "/admin/rollout", "/admin/settings", "/admin/access"):
        await page.goto(base + path)
        # Wide tables and charts scroll inside their card; the page itself never does.
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, path


async def test_a_bug_shows_the_error_page_with_a_request_id_and_a_way_back(
        dashboard: Dashboard, chromium: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    base = dashboard.gateway.url
    await _sign_in(page, base, "alice", PASSWORDS["admin"])
    break_teams(monkeypatch, RuntimeError("duckdb: /var/lib/meterd/meterd.duckdb is locked"))
    async with page.expect_response(f"{base}/admin/teams") as answer:
        await page.click("nav >> text=Teams")
    response = await answer.value
    assert response.status == 500
    await page.wait_for_selector("h1:has-text('Something went wrong')")
    assert await page.title() == "Something went wrong · meterd"
    assert await page.inner_text(".request-id") == response.headers["request-id"]
    assert "duckdb" not in await page.content()
    monkeypatch.undo()
    await page.click("text=Back to the dashboard")
    await page.wait_for_url(f"{base}/admin/")
    assert await page.locator(".error-card").count() == 0
