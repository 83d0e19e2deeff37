"""Caps and rate limits are edited in place, their forms filled with the current values; the
form to add a cap says when the scope already has one, and so does the save of a second."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboard.formatting import amount_box
from ledger.grants import create_grant
from ledger.money import parse_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, attr, one


@pytest.mark.parametrize(("micros", "shown"), [
    (500_000_000, "500.00"), (99_500_000, "99.50"), (4_000, "0.004"), (0, "0.00"),
    (1_234_567, "1.234567")])
def test_an_amount_box_gives_back_the_exact_amount(micros: int, shown: str) -> None:
    assert amount_box(micros) == shown
    assert parse_usd(shown) == micros


async def test_team_caps_and_limits_are_filled_in_and_saved_in_place(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    cat = gw.admin.catalog
    await gw.developer("Ada", "platform")
    await gw.change(cat.set_budget, "team", "platform", "monthly", 500_000_000, "strict")
    await gw.change(cat.set_budget, "team_member", "platform", "daily", 20_500_000)
    await gw.change(cat.set_limits, "team", "platform", rpm=60, concurrency=4)
    await gw.change(create_grant, cat, "team", "platform", 100_000_000,
                    datetime.now(UTC) + timedelta(days=1), "admin", "launch")
    team = (await gw.admin.db(cat.teams))[0]["id"]
    admin = await dashboard.signed_in("admin")
    page = await admin.page(f"/admin/teams/{team}")
    pool = one(page, "#pool-budgets .edit-cap form")
    # The cap's own $500 (the running $100 grant is not part of it), its period and mode.
    assert attr(one(pool, "input[name=amount]"), "value") == "500.00"
    assert attr(one(pool, "input[name=period]"), "value") == "monthly"
    assert attr(one(pool, "input[name=scope]"), "value") == "team"
    assert one(pool, "select[name=mode] option[selected]").get_text() == "strict"
    member = one(page, "#member-cap .edit-cap form")
    assert attr(one(member, "input[name=amount]"), "value") == "20.50"
    assert attr(one(member, "input[name=scope]"), "value") == "team_member"
    limits = {attr(i, "name"): attr(i, "value") for i in
              page.select(f"form[action$='/teams/{team}/limits'] input[name!=csrf]")}
    assert limits == {"rpm": "60", "itpm": "", "otpm": "", "concurrency": "4"}
    # The form that adds a cap says the pool already has a monthly one.
    add = page.select(f"#pool form[action$='/teams/{team}/budget']")[-1]
    assert "Already capped: monthly." in one(add, ".second-period").get_text()
    # Saving the edit changes that cap; it adds none.
    status, _, headers = await admin.post(attr(pool, "action"), {
        "scope": "team", "period": "monthly", "amount": "650", "mode": "strict"})
    assert status == 303
    flash = await admin.page(headers["Location"])
    assert "now also has" not in flash.get_text()
    caps = {(b["scope"], b["period"]): (b["amount_micros"], b["mode"])
            for b in await gw.admin.db(cat.budgets)}
    assert caps == {("team", "monthly"): (650_000_000, "strict"),
                    ("team_member", "daily"): (20_500_000, "estimate")}
    # A weekly pool beside it is a second cap, and the save says so.
    _, _, headers = await admin.post(attr(pool, "action"), {
        "scope": "team", "period": "weekly", "amount": "200"})
    back = await admin.page(headers["Location"])
    assert "This scope now also has a monthly cap" in back.get_text()


async def test_a_developers_own_cap_is_filled_in_to_the_micro_dollar(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    await gw.change(gw.admin.catalog.set_budget, "developer", "Ada", "daily", 4_000)
    await gw.change(gw.admin.catalog.set_budget, "team", "platform", "daily", 9_000_000)
    ada = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    lead = await dashboard.signed_in("team_lead")
    page = await lead.page(f"/admin/developers/{ada}")
    # Only her own cap has an edit form here (the pool is edited on the team's page).
    (form,) = page.select("#caps-table .edit-cap form")
    assert attr(one(form, "input[name=amount]"), "value") == "0.004"
    assert attr(one(form, "input[name=period]"), "value") == "daily"
    add = page.select(f"#caps form[action$='/developers/{ada}/budget']")[-1]
    assert "Already capped: daily." in one(add, ".second-period").get_text()
