"""The increase flow in headless Chromium: a developer refused by their cap follows the link in
the 429 message, asks for more, an admin approves a smaller raise, the next request goes
through, and the developer sees the decision on their page and gets it by email."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from yarl import URL

from ledger import grants
from ledger.alerts import Destinations
from ledger.money import parse_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.test_alerts import Sink, smtp  # noqa: F401  (a fixture)
from tests.test_dashboard_browser import _sign_in, chromium  # noqa: F401  (a fixture)

PUBLIC = "https://gw.example.com"


async def _ask_claude(key: str, base: str) -> Any:
    async with anthropic.AsyncAnthropic(api_key=key, base_url=base, max_retries=0) as sdk:
        return await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                         messages=[{"role": "user", "content": "hi"}])


@pytest.mark.timeout(180)
async def test_a_refused_developer_asks_for_more_and_an_admin_approves_it(
        start_dashboard: Any, chromium: Any, smtp: tuple[Sink, int]) -> None:  # noqa: F811
    sink, port = smtp
    dashboard: Dashboard = await start_dashboard(public_url=PUBLIC)
    gw = dashboard.gateway
    base = gw.url
    key = await gw.developer("Ada", "platform")
    catalog = gw.admin.catalog
    await gw.change(catalog.set_budget, "developer", "ada@example.com", "monthly", 1)
    await gw.admin.db(Destinations(catalog).add, "org", "", "mail",
                      f"mailto://127.0.0.1:{port}?from=meterd@example.com"
                      "&to=leads@example.com&mode=insecure", ["increase", "developer"])
    await dashboard.account("alice", "admin")

    with pytest.raises(anthropic.RateLimitError) as refused:
        await _ask_claude(key, base)
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    link = URL(message.rsplit("request an increase at ", 1)[1])
    assert str(link).startswith(PUBLIC)

    dev = await (await chromium.new_context()).new_page()
    await dev.goto(f"{base}/admin/signin")
    await dev.fill("#signin-key input[name=key]", key)
    await dev.click("#signin-key button[type=submit]")
    await dev.wait_for_url(f"{base}/admin/me")
    await dev.goto(f"{base}{link.path}#{link.fragment}")
    await dev.fill("#ask-increase input[name=amount]", "40")
    await dev.fill("#ask-increase input[name=days]", "3")
    await dev.fill("#ask-increase input[name=reason]", "a big refactor")
    await dev.click("#ask-increase button[type=submit]")
    await dev.wait_for_selector(".flash:has-text('Request sent')")
    assert await dev.inner_text("#my-increases tbody tr td:nth-child(3)") == "pending"
    assert [to for to, _ in sink.mail] == [["leads@example.com"]]

    admin = await (await chromium.new_context()).new_page()
    await _sign_in(admin, base, "alice", PASSWORDS["admin"])
    await admin.click("nav >> text=Increases")
    row = admin.locator("#increase-requests tr[data-status=pending]")
    assert "a big refactor" in await row.inner_text()
    await row.locator("form.approve input[name=amount]").fill("30")
    await row.locator("form.approve input[name=days]").fill("2")
    await row.locator("form.approve button[type=submit]").click()
    await admin.wait_for_selector(".flash:has-text('Approved')")
    assert "Approved: Ada's cap is raised." in await admin.inner_text(".flash")
    assert await admin.locator("#increase-requests tr[data-status=approved]").count() == 1

    budgets = [(b["scope"], b["amount_micros"]) for b in await gw.admin.db(catalog.budgets)]
    assert budgets == [("developer", 1)]  # the cap stays; a grant runs beside it
    running = await gw.admin.db(grants.active, catalog)
    assert [(g["scope"], g["period"], g["amount_micros"]) for g in running] == [
        ("developer", "monthly", parse_usd("30"))]
    await gw.proxy.refresh_policy()
    assert (await _ask_claude(key, base)).usage.output_tokens > 0

    await dev.goto(f"{base}/admin/me")
    decision = await dev.inner_text("#my-increases tbody tr")
    assert "approved" in decision and "+$30.00" in decision
    to, mail = sink.mail[-1]
    assert to == ["ada@example.com"] and "Subject: Budget increase approved" in mail
    actions = {a["action"] for a in await gw.admin.db(catalog.audit)}
    assert {"increase.request", "increase.approve", "grant.create"} <= actions
