"""Grants: a cap raised live until the grant expires, on a frozen clock, through the proxy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from dashboard.accounts import Accounts
from ledger import grants
from ledger.catalog import Catalog, connect
from ledger.grants import GrantInvalid, create_grant, revoke_grant
from ledger.policy import Policy
from tests.conftest import Gateway
from tests.test_budgets import COST, FixedClock, new_session, send

# The catalog mirrors only grants that have not expired on the real clock, so the frozen
# clocks here are in the future.
NOW = datetime(2030, 3, 12, 9, 0, tzinfo=UTC)
# Half a minute into a minute of tomorrow morning (UTC): the whole test is inside one day.
AT = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=41, second=30,
                                                    microsecond=0)


def small_catalog() -> Catalog:
    catalog = Catalog(connect(":memory:"))
    catalog.create_team("platform")
    catalog.create_developer("Ada", "ada@example.com", "platform")
    return catalog


def caps_of_ada(catalog: Catalog) -> dict[tuple[str, str], tuple[int, int]]:
    """(scope, period) → (amount, granted) of Ada's caps as they stand at NOW."""
    secret = catalog.issue_key("ada@example.com").secret
    docs = catalog.policy_documents()
    policy = Policy(1, *({k: orjson.loads(v) for k, v in docs[name].items()} for name in (
        "keys", "devs", "teams", "budgets", "limits", "tokens", "managed", "models", "grants")))
    return {(c.scope, c.period): (c.at(NOW.timestamp()).amount, c.at(NOW.timestamp()).granted)
            for c in policy.principal(secret).caps}


def test_a_grant_raises_the_caps_of_its_scope_and_period_only() -> None:
    catalog = small_catalog()
    for scope, ref in (("developer", "Ada"), ("team_member", "platform"), ("team", "platform")):
        for period in ("daily", "monthly"):
            catalog.set_budget(scope, ref, period, 1_000_000)
    later = NOW + timedelta(hours=2)
    # Every period of Ada's own caps; only the monthly per-member cap; nothing of the team's.
    create_grant(catalog, "developer", "Ada", 250_000, later, "admin", "launch week", now=NOW)
    create_grant(catalog, "team_member", "platform", 40_000, later, "admin", "demo",
                 period="monthly", now=NOW)
    create_grant(catalog, "developer", "Ada", 5_000, later, "admin", "more", period="daily",
                 now=NOW)
    assert caps_of_ada(catalog) == {
        ("developer", "daily"): (1_255_000, 255_000),
        ("developer", "monthly"): (1_250_000, 250_000),
        ("team_member", "daily"): (1_000_000, 0),
        ("team_member", "monthly"): (1_040_000, 40_000),
        ("team", "daily"): (1_000_000, 0),
        ("team", "monthly"): (1_000_000, 0),
    }


def test_a_grant_is_audited_and_a_revoked_one_raises_nothing() -> None:
    catalog = small_catalog()
    catalog.set_budget("org", "", "daily", 1_000_000)
    row = create_grant(catalog, "org", "", 70_000, NOW + timedelta(days=1), "lee@example.com",
                       "quarter close", now=NOW)
    assert caps_of_ada(catalog)[("org", "daily")] == (1_070_000, 70_000)
    revoke_grant(catalog, row["id"], "lee@example.com", now=NOW)
    assert caps_of_ada(catalog)[("org", "daily")] == (1_000_000, 0)
    audit = [a for a in catalog.audit() if a["action"].startswith("grant.")]
    assert [(a["actor"], a["action"], a["target"]) for a in audit] == [
        ("lee@example.com", "grant.revoke", row["id"]),
        ("lee@example.com", "grant.create", row["id"])]
    assert orjson.loads(audit[1]["after"])["reason"] == "quarter close"


@pytest.mark.parametrize(("scope", "amount", "expires", "reason", "period", "says"), [
    ("galaxy", 1, NOW + timedelta(hours=1), "x", None, "scope must be one of"),
    ("org", 0, NOW + timedelta(hours=1), "x", None, "positive amount"),
    ("org", -5, NOW + timedelta(hours=1), "x", None, "positive amount"),
    ("org", 5, NOW, "x", None, "expire in the future"),
    ("org", 5, NOW + timedelta(hours=1), "  ", None, "say why"),
    ("org", 5, NOW + timedelta(hours=1), "a\nb", None, "say why"),
    ("org", 5, NOW + timedelta(hours=1), "x", "hourly", "period must be one of"),
    ("org", 5, NOW.replace(tzinfo=None) + timedelta(hours=1), "x", None, "time zone"),
])
def test_a_bad_grant_is_refused_with_the_reason(scope: str, amount: int, expires: datetime,
                                                reason: str, period: str | None,
                                                says: str) -> None:
    catalog = small_catalog()
    with pytest.raises(GrantInvalid, match=says):
        create_grant(catalog, scope, "", amount, expires, "admin", reason, period=period,
                     now=NOW)
    assert grants.active(catalog, NOW) == []


async def test_a_grant_raises_a_cap_live_and_ends_at_its_expiry(gateway: Gateway) -> None:
    clock = gateway.proxy.gate.clock = FixedClock(AT)
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    async with new_session() as s:
        assert (await send(s, gateway.url, key))[0] == 200  # spends COST = 4500 µ$ today
        await gateway.proxy.drain()
        await gateway.change(cat.set_budget, "developer", "Ada", "daily", COST)
        status, doc = await send(s, gateway.url, key)
        assert status == 429 and "spend limit reached (developer Ada, daily)" in \
            doc["error"]["message"]

        expiry = AT + timedelta(hours=1)
        await gateway.change(create_grant, cat, "developer", "Ada", 20_000, expiry,
                             "admin", "release day", now=AT)
        status, _ = await send(s, gateway.url, key)
        assert status == 200  # 4500 spent + ~6100 reserved ≤ 4500 + 20000
        await gateway.proxy.drain()
        async with s.get(gateway.url + "/meterd/v1/me", headers={"x-api-key": key}) as r:
            (budget,) = (await r.json())["budgets"]
        assert (budget["amount_micros"], budget["granted_micros"], budget["spent_micros"],
                budget["remaining_micros"]) == (24_500, 20_000, 9_000, 15_500)

        clock.at = expiry - timedelta(seconds=1)  # the same policy: no refresh ends it
        assert (await send(s, gateway.url, key))[0] == 200
        await gateway.proxy.drain()
        clock.at = expiry
        status, doc = await send(s, gateway.url, key)
    assert status == 429 and "developer Ada, daily" in doc["error"]["message"]
    day = gateway.proxy.keyspace.counter("developer", (await gateway.admin.db(cat.developers))[
        0]["id"], "daily", AT)
    assert int(await gateway.proxy.redis.hget(day, "spent")) == 3 * COST


@pytest.mark.parametrize(("doc", "says"), [
    ({"scope": "org", "amount_micros": -1, "expires_at": "2099-01-01", "reason": "x"},
     "amount_micros must be a whole number"),
    ({"scope": "org", "amount_usd": "5", "expires_at": "2099-01-01", "reason": " "},
     "say why"),
    ({"scope": "org", "amount_usd": "5", "expires_at": "2000-01-01", "reason": "x"},
     "expire in the future"),
    ({"scope": "developer", "target": "nobody", "amount_usd": "5", "expires_at": "2099-01-01",
      "reason": "x"}, "nobody"),
])
async def test_the_api_refuses_a_bad_grant_in_the_error_envelope(
        gateway: Gateway, doc: dict[str, object], says: str) -> None:
    _, secret = await gateway.admin.db(Accounts(gateway.admin.catalog).issue_admin_key, "rw",
                                       "")
    async with new_session() as s, s.post(gateway.url + "/admin/api/v1/grants", json=doc,
                                          headers={"x-api-key": str(secret)}) as r:
        body = await r.json()
    assert r.status in (400, 404) and body["type"] == "error"
    assert says in body["error"]["message"]
    assert await gateway.admin.db(grants.active, gateway.admin.catalog) == []
