"""Asking for more: a request, its approval raising the developer's own cap until it expires
(then the cap it replaced is back), a denial with its reason; one decision per request; a lead
decides for its own team only; the forms need their CSRF token; everything is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import grants
from ledger.catalog import Catalog, connect
from ledger.increases import IncreaseError, Increases
from ledger.money import parse_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    catalog.create_team("platform")
    catalog.create_developer("Ada", "ada@example.com", "platform")
    return catalog


def _cap(catalog: Catalog, dev: str) -> Any:
    return [(b["period"], b["amount_micros"]) for b in catalog.budgets()
            if b["scope"] == "developer" and b["scope_id"] == dev]


def _granted(catalog: Catalog, dev: str, period: str, at: datetime) -> tuple[int, Any]:
    return grants.running(grants.active(catalog, at), "developer", dev, period)


def test_an_approval_is_a_grant_on_the_cap_until_it_expires(catalog: Catalog) -> None:
    dev = catalog.developer_id("ada@example.com")
    catalog.set_budget("developer", dev, "monthly", parse_usd("100"))
    increases = Increases(catalog)
    asked = increases.ask(dev, "monthly", parse_usd("50"), 7, "a migration", actor="dev:ada")
    assert asked["status"] == "pending"
    approved = increases.approve(asked["id"], parse_usd("30"), 2, actor="alice", now=NOW)
    assert approved["expires_at"] == datetime(2026, 12, 8, 12, 0)
    assert _cap(catalog, dev) == [("monthly", 100_000_000)]  # the cap itself stays
    ends = datetime(2026, 12, 8, 12, 0)
    assert _granted(catalog, dev, "monthly", NOW) == (30_000_000, ends)
    assert _granted(catalog, dev, "daily", NOW) == (0, None)  # the request's period only
    assert _granted(catalog, dev, "monthly", NOW + timedelta(days=2, seconds=-1)) \
        == (30_000_000, ends)
    assert _granted(catalog, dev, "monthly", NOW + timedelta(days=2)) == (0, None)
    actions = sorted((a["id"], a["actor"], a["action"]) for a in catalog.audit())
    assert [(actor, action) for _, actor, action in actions][-4:] == [
        ("cli", "budget.set"), ("dev:ada", "increase.request"), ("alice", "grant.create"),
        ("alice", "increase.approve")]
    assert approved["grant_id"] == grants.active(catalog, NOW)[0]["id"]


def test_a_request_is_decided_once(catalog: Catalog) -> None:
    dev = catalog.developer_id("ada@example.com")
    increases = Increases(catalog)
    asked = increases.ask(dev, "monthly", parse_usd("50"), 7, "why not", actor="dev:ada")
    denied = increases.deny(asked["id"], "not this quarter", actor="alice")
    assert (denied["status"], denied["decision_reason"]) == ("denied", "not this quarter")
    with pytest.raises(IncreaseError, match="already denied"):
        increases.approve(asked["id"], parse_usd("50"), 7)
    assert _cap(catalog, dev) == []


@pytest.mark.parametrize(("amount", "days", "reason", "error"), [
    (0, 7, "x", "more than \\$0"), (parse_usd("50"), 0, "x", "1 to 366 days"),
    (parse_usd("50"), 7, "  ", "say why")])
def test_a_bad_request_says_what_is_wrong(catalog: Catalog, amount: int, days: int,
                                          reason: str, error: str) -> None:
    dev = catalog.developer_id("ada@example.com")
    with pytest.raises(IncreaseError, match=error):
        Increases(catalog).ask(dev, "monthly", amount, days, reason, actor="dev:ada")


async def test_a_lead_decides_for_its_own_team_only(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    dev = await gw.admin.db(gw.admin.catalog.developer_id, "ada@example.com")
    asked = await gw.admin.db(Increases(gw.admin.catalog).ask, dev, "monthly",
                              parse_usd("20"), 3, "tests", actor="dev:ada")
    other = await dashboard.signed_in("lead_other")
    status, text = await other.get("/admin/increases")
    assert status == 200 and asked["id"] not in text
    status, _, _ = await other.post(f"/admin/increases/{asked['id']}/approve",
                                    {"amount": "20", "days": "3"})
    assert status == 403
    lead = await dashboard.signed_in("team_lead")
    page = await lead.page("/admin/increases")
    assert page.select_one(f"tr[data-id='{asked['id']}'] form.approve") is not None
    status, _, _ = await lead.post(f"/admin/increases/{asked['id']}/deny", {"reason": "no"})
    assert status == 303
    found = await gw.admin.db(Increases(gw.admin.catalog).get, asked["id"])
    assert (found["status"], found["decided_by"].startswith("sso:lead")) == ("denied", True)


async def test_increase_forms_need_their_csrf_token(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    developer = await dashboard.signed_in("developer")
    status, _, _ = await developer.post("/admin/me/increase", {
        "amount": "20", "period": "monthly", "days": "3", "reason": "x"}, csrf=False)
    assert status == 403
    assert await gw.admin.db(Increases(gw.admin.catalog).listing) == []
    await gw.developer("Ada", "platform")
    dev = await gw.admin.db(gw.admin.catalog.developer_id, "ada@example.com")
    asked = await gw.admin.db(Increases(gw.admin.catalog).ask, dev, "monthly",
                              parse_usd("20"), 3, "tests", actor="dev:ada")
    admin = await dashboard.signed_in("admin")
    for action, body in (("approve", {"amount": "20", "days": "3"}), ("deny", {"reason": "x"})):
        status, _, _ = await admin.post(f"/admin/increases/{asked['id']}/{action}", body,
                                        csrf=False)
        assert status == 403
    assert (await gw.admin.db(Increases(gw.admin.catalog).get, asked["id"]))["status"] == \
        "pending"
