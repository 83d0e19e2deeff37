"""Which caps apply to a developer and which spend each is compared with, from one table:
ledger/caps.py, the proxy's policy, the forecast and the dashboard's live budget rows must
all read it the same way."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest

from dashboard import live
from ledger import caps, reports
from ledger.catalog import Catalog, connect
from ledger.keyspace import KeySpace
from ledger.periods import period_start
from ledger.policy import Cap, Policy

# Ada and Bo are in platform, Cy in research; the table is read for Ada.
DEVS = {"ada": "platform", "bo": "platform", "cy": "research"}
TEAMS = {"platform": ["ada", "bo"], "research": ["cy"]}
NOW = datetime(2026, 3, 12, 18, 0, tzinfo=UTC)  # a Thursday: its week began on 9 March
# (developer, day, µ$): what each spent, on days inside the day, the week or only the month.
SPEND = [("ada", date(2026, 3, 12), 1_000), ("ada", date(2026, 3, 2), 4_000_000),
         ("bo", date(2026, 3, 12), 20_000), ("bo", date(2026, 3, 10), 500_000),
         ("cy", date(2026, 3, 12), 300_000), ("cy", date(2026, 3, 1), 60_000_000)]

# scope, scope id, period → caps Ada? the counter it reads for Ada, every counter it reads
TABLE: list[tuple[str, str, str, bool, tuple[str, str] | None, list[tuple[str, str]]]] = [
    ("developer", "ada", "daily", True, ("developer", "ada"), [("developer", "ada")]),
    ("developer", "bo", "weekly", False, None, [("developer", "bo")]),
    ("team", "platform", "weekly", True, ("team", "platform"), [("team", "platform")]),
    ("team", "research", "monthly", False, None, [("team", "research")]),
    ("team_member", "platform", "monthly", True, ("developer", "ada"),
     [("developer", "ada"), ("developer", "bo")]),
    ("team_member", "research", "daily", False, None, [("developer", "cy")]),
    ("org", "", "daily", True, ("org", ""), [("org", "")]),
    ("org", "", "monthly", True, ("org", ""), [("org", "")]),
]
APPLYING = {(scope, period, want) for scope, _, period, applies, want, _ in TABLE if applies}


def spent_on(counter: tuple[str, str], period: str) -> int:
    """The reference: what a counter holds for the period of NOW."""
    kind, ref = counter
    first = period_start(period, NOW).date()
    return sum(amount for dev, day, amount in SPEND if day >= first and (
        kind == "org" or (kind == "developer" and dev == ref)
        or (kind == "team" and DEVS[dev] == ref)))


def expected_spent(scope: str, scope_id: str, period: str) -> int:
    """What a list shows against a cap: the fullest of the counters it reads."""
    (*_, every), = [row for row in TABLE if row[:3] == (scope, scope_id, period)]
    return max(spent_on(c, period) for c in every)


@pytest.mark.parametrize(("scope", "scope_id", "period", "applies", "counter", "every"), TABLE)
def test_the_rule_reads_the_table(scope: str, scope_id: str, period: str, applies: bool,
                                  counter: tuple[str, str] | None,
                                  every: list[tuple[str, str]]) -> None:
    assert caps.applies(scope, scope_id, "ada", "platform") is applies
    if counter is not None:
        assert caps.counter(scope, scope_id, "ada") == counter
    assert caps.counters(scope, scope_id, TEAMS.get(scope_id, [])) == every


def catalog_of_the_table() -> Catalog:
    catalog = Catalog(connect(":memory:"))
    for team in TEAMS:
        catalog.conn.execute("INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)",
                             [team, team, NOW])
    for dev, team in DEVS.items():
        catalog.conn.execute(
            "INSERT INTO developers (id, name, email, team_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)", [dev, dev.title(), f"{dev}@example.com", team, NOW])
    for scope, scope_id, period, *_ in TABLE:
        catalog.set_budget(scope, scope_id, period, 10_000_000)
    return catalog


def caps_of_ada(catalog: Catalog) -> tuple[Cap, ...]:
    """The caps the proxy's policy gives a key of Ada's."""
    secret = catalog.issue_key("ada").secret
    docs = catalog.policy_documents()
    policy = Policy(1, *({k: orjson.loads(v) for k, v in docs[name].items()} for name in (
        "keys", "devs", "teams", "budgets", "limits", "tokens", "managed")))
    return policy.principal(secret).caps


def test_the_proxy_gives_a_key_the_caps_of_the_table() -> None:
    got = caps_of_ada(catalog_of_the_table())
    assert {(c.scope, c.period, c.counter_scope) for c in got} == APPLYING
    assert len(got) == len(APPLYING)


def test_the_forecast_compares_each_cap_with_the_counters_of_the_table() -> None:
    catalog = catalog_of_the_table()
    for dev, day, amount in SPEND:
        catalog.conn.execute(
            "INSERT INTO usage_daily VALUES (?, ?, ?, 'm', 1, 0, 0, 0, 0, 0, 0, 0, 0, ?, 0)",
            [day, dev, DEVS[dev], amount])
    rows = reports.forecast(catalog.conn, now=NOW)
    got = {(r["scope"], r["scope_id"], r["period"]): r["spent_micros"] for r in rows}
    assert got == {row[:3]: expected_spent(*row[:3]) for row in TABLE}
    assert len(set(got.values())) > 4  # the table tells the counters and periods apart


async def test_the_dashboard_compares_each_cap_with_the_live_counters_of_the_table(
        redis: Any) -> None:
    keyspace = KeySpace()
    every = {c for row in TABLE for c in row[5]} | {("team", t) for t in TEAMS}
    for period in {row[2] for row in TABLE}:
        for counter in every:
            await redis.hset(keyspace.counter(*counter, period, NOW), "spent",
                             spent_on(counter, period))
    forecast = [{"scope": scope, "scope_id": scope_id, "period": period, "label": scope_id,
                 "amount_micros": 10_000_000, "percent": 0}
                for scope, scope_id, period, *_ in TABLE]
    rows = await live.forecast_with_live_spend(redis, keyspace, forecast, TEAMS, NOW)
    got = {(r["scope"], r["scope_id"], r["period"]): r["spent_micros"] for r in rows}
    assert got == {row[:3]: expected_spent(*row[:3]) for row in TABLE}


def test_a_cap_is_named_alike_by_the_proxy_and_the_dashboard() -> None:
    """The proxy's refusal and the dashboard's budget list name a cap in the same words."""
    catalog = catalog_of_the_table()
    refused = {(c.scope, c.period): c.describe() for c in caps_of_ada(catalog)}
    # (a per-member cap's row adds whose spend it shows: " (highest: Bo)")
    listed = {(r["scope"], r["period"]): live.title(r["scope"], r["label"]).split(" (")[0]
              for r in reports.forecast(catalog.conn, now=NOW) if r["scope_id"] in ("ada",
                                                                                  "platform", "")}
    assert refused == {
        ("developer", "daily"): "developer Ada, daily",
        ("team", "weekly"): "team platform, weekly",
        ("team_member", "monthly"): "each member of platform, monthly",
        ("org", "daily"): "organization, daily", ("org", "monthly"): "organization, monthly"}
    assert listed == {key: said[:1].upper() + said[1:].rsplit(",", 1)[0]
                      for key, said in refused.items()}
