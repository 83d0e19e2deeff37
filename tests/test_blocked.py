"""Who is blocked right now: the overview and a team's page list the caps refusing someone,
until when, count the gateway's refusals, badge members' cap use and show grants beside caps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from dashboard import blocked
from ledger import status
from ledger.grants import create_grant
from ledger.model_caps import ModelCaps
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, one
from tests.test_budgets import new_session, send


@pytest.mark.parametrize(("spent", "amount", "near", "state"), [
    (4_000, 4_000, 75, status.BLOCKED),  # reached: admission refuses from here
    (4_500, 4_000, 75, status.BLOCKED),
    (0, 0, 75, status.BLOCKED),  # a $0 cap refuses everyone
    (3_999, 4_000, 75, status.NEAR),
    (3_000, 4_000, 75, status.NEAR),  # exactly 75%
    (2_999, 4_000, 75, ""),
    (9_000, 10_000, 95, ""),
])
def test_one_rule_says_blocked_and_near(spent: int, amount: int, near: int,
                                        state: str) -> None:
    assert status.standing_of(spent, amount, near) == state


DAY_END, MONTH_END = datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)


def use(cap: str, state: str, spent: int, amount: int, resets_at: datetime,
        developer: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row of status.cap_use, as blocked.member_badges reads it."""
    return {"cap": cap, "state": state, "spent_micros": spent, "amount_micros": amount,
            "resets_at": resets_at, "developer": developer}


ADA = {"id": "ada", "name": "Ada"}


@pytest.mark.parametrize(("rows", "badged"), [
    # blocked before near, however full the near one is
    ([use("pool", status.NEAR, 99, 100, MONTH_END), use("own", status.BLOCKED, 5, 5, DAY_END, ADA)],
     "own"),
    # two blocking: the one that resets last (as the 429 names it), not the more overspent
    ([use("own", status.BLOCKED, 900, 100, DAY_END, ADA),
      use("pool", status.BLOCKED, 100, 100, MONTH_END)], "pool"),
    # none blocking: the highest share
    ([use("own", status.NEAR, 80, 100, MONTH_END, ADA), use("pool", "", 50, 100, DAY_END)],
     "own"),
])
def test_a_member_is_badged_by_the_cap_a_refusal_would_name(
        rows: list[dict[str, Any]], badged: str) -> None:
    assert blocked.member_badges(rows, [ADA])["ada"]["cap"] == badged


async def _scene(dash: Dashboard) -> tuple[str, str, str]:
    """Ada (platform) blocked by her daily cap after one refusal; Bob (platform) at 90% of
    the per-member cap; the pool raised by a grant. Returns (Ada's id, Bob's id, team id)."""
    gw = dash.gateway
    cat = gw.admin.catalog
    ada, bob = await gw.developer("Ada", "platform"), await gw.developer("Bob", "platform")
    async with new_session() as s:
        assert (await send(s, gw.url, ada))[0] == 200  # 4,500 µ$
        for _ in range(2):
            assert (await send(s, gw.url, bob))[0] == 200  # 9,000 µ$
    await gw.proxy.drain()
    await gw.change(cat.set_budget, "developer", "Ada", "daily", 4_000)
    await gw.change(cat.set_budget, "team_member", "platform", "daily", 10_000)
    await gw.change(cat.set_budget, "team", "platform", "monthly", 10_000)
    await gw.change(create_grant, cat, "team", "platform", 1_000_000,
                    datetime.now(UTC) + timedelta(days=2), "admin", "launch")
    async with new_session() as s:
        assert (await send(s, gw.url, ada))[0] == 429  # refused by her daily cap
    await dash.roll_up()
    devs = {d["name"]: d for d in await gw.admin.db(cat.developers)}
    return devs["Ada"]["id"], devs["Bob"]["id"], devs["Ada"]["team_id"]


async def test_overview_lists_who_is_blocked_by_which_cap_until_when(
        dashboard: Dashboard) -> None:
    await _scene(dashboard)
    admin = await dashboard.signed_in("admin")
    page = await admin.page("/admin/")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    rows = [[td.get_text(" ", strip=True) for td in tr.select("td")]
            for tr in page.select("#blocked-table tbody tr")]
    # Only Ada: the pool (13,500 of 1,010,000 µ$ with the grant) and Bob (9,000 of 10,000)
    # are not refusing.
    assert rows == [["Ada blocked", "developer Ada, daily", "$0.00", "$0.00",
                     f"{tomorrow} 00:00 UTC"]]  # the org zone named
    assert one(page, "#refused-count").get_text(" ", strip=True).startswith(
        "1 refused by the gateway today · 1 since")
    link = one(page, "#refused-count a")["href"]
    assert "status=refused" in str(link)


async def test_team_page_badges_members_and_shows_the_grant_beside_the_pool(
        dashboard: Dashboard) -> None:
    _, _, team = await _scene(dashboard)
    lead = await dashboard.signed_in("team_lead")
    page = await lead.page(f"/admin/teams/{team}")
    assert [tr.select_one("td").get_text(" ", strip=True)  # type: ignore[union-attr]
            for tr in page.select("#blocked-table tbody tr")] == ["Ada blocked"]
    assert one(page, "#refused-count").get_text(strip=True).startswith(
        "1 refused by the gateway today")
    members = {tr.select_one("a").get_text(strip=True):  # type: ignore[union-attr]
               one(tr, "td.cap-use") for tr in page.select("#members tbody tr")}
    # Ada: 4,500 of her 4,000 daily cap → 112%, blocked until midnight.
    assert members["Ada"].select_one(".badge-blocked") is not None
    assert members["Ada"].get_text(" ", strip=True).startswith("112% of developer Ada, daily")
    # Bob: 9,000 of the 10,000 per-member cap → 90%, near (from the 75% threshold).
    assert members["Bob"].select_one(".badge-near") is not None
    assert members["Bob"].get_text(" ", strip=True).startswith(
        "90% of each member of platform, daily")
    # The pool's cap includes the running grant, and says until when.
    pool = one(page, "#pool-budgets tbody tr").get_text(" ", strip=True)
    assert "$1.01 incl. +$1.00 granted until" in pool


async def test_overview_budget_tables_show_the_grant_beside_the_pool(
        dashboard: Dashboard) -> None:
    await _scene(dashboard)
    admin = await dashboard.signed_in("admin")
    page = await admin.page("/admin/")
    pool = [tr.get_text(" ", strip=True) for tr in page.select("#forecast tbody tr")
            if tr.get_text().startswith("Team platform")]
    # $0.01 pool + the $1.00 grant: the cap as admission applies it.
    assert len(pool) == 1 and "$1.01 incl. +$1.00 granted until" in pool[0]


# An Opus request: 20,000 in × $5/MTok + 400 out × $25/MTok = 100,000 + 10,000 µ$.
OPUS = orjson.dumps({"model": "claude-opus-4-8", "max_tokens": 400,
                     "messages": [{"role": "user", "content": "Hello"}]})
OPUS_USAGE = {"x-mock-usage": '{"input_tokens": 20000, "output_tokens": 400}'}
OPUS_COST = 110_000


async def _opus_scene(dash: Dashboard, cap: int) -> tuple[str, str]:
    """Ada (platform) spends 110,000 µ$ on Opus and 4,500 µ$ on Sonnet (which her Opus cap
    does not count) under a monthly Opus cap of `cap` µ$; Bob has no cap. The cap is set high
    first so the request is admitted and settles on the cap's own counter, then lowered.
    Returns (Ada's gateway key, the team id)."""
    gw = dash.gateway
    cat = gw.admin.catalog
    ada = await gw.developer("Ada", "platform")
    await gw.developer("Bob", "platform")
    await gw.change(ModelCaps(cat).set, "developer", "Ada", "monthly", ["opus"], 10_000_000)
    async with new_session() as s:
        assert (await send(s, gw.url, ada, OPUS_USAGE, OPUS))[0] == 200
        assert (await send(s, gw.url, ada))[0] == 200  # Sonnet: 4,500 µ$
    await gw.proxy.drain()
    await gw.change(ModelCaps(cat).set, "developer", "Ada", "monthly", ["opus"], cap)
    await dash.roll_up()
    devs = {d["name"]: d for d in await gw.admin.db(cat.developers)}
    return ada, devs["Ada"]["team_id"]


def _next_month() -> str:
    now = datetime.now(UTC)
    return f"{(now.replace(day=1) + timedelta(days=32)).replace(day=1):%Y-%m-%d} 00:00 UTC"


def _blocked_rows(page: Any) -> list[list[str]]:
    return [[td.get_text(" ", strip=True) for td in tr.select("td")]
            for tr in page.select("#blocked-table tbody tr")]


def _cap_use(page: Any) -> dict[str, Any]:
    return {tr.select_one("a").get_text(strip=True): one(tr, "td.cap-use")
            for tr in page.select("#members tbody tr")}


async def test_a_developer_at_their_opus_cap_is_listed_and_badged_by_that_cap(
        dashboard: Dashboard) -> None:
    ada, team = await _opus_scene(dashboard, OPUS_COST)  # reached: refused from here
    async with new_session() as s:
        status_code, refusal = await send(s, dashboard.gateway.url, ada, OPUS_USAGE, OPUS)
    # The proxy refuses her with the cap named as the dashboard names it.
    assert status_code == 429
    assert "developer Ada on opus, monthly" in refusal["error"]["message"]
    admin = await dashboard.signed_in("admin")
    page = await admin.page("/admin/")
    # 110,000 of 110,000 µ$: her Opus counter alone, not her 114,500 µ$ of all spend.
    assert _blocked_rows(page) == [["Ada blocked", "developer Ada on opus, monthly", "$0.11",
                                    "$0.11", _next_month()]]
    lead = await dashboard.signed_in("team_lead")
    members = _cap_use(await lead.page(f"/admin/teams/{team}"))
    assert members["Ada"].get_text(" ", strip=True).startswith(
        "100% of developer Ada on opus, monthly")
    assert one(members["Ada"], ".badge-blocked").get_text(strip=True).startswith(
        "blocked on opus until")
    assert members["Bob"].get_text(strip=True) == "no cap"


async def test_a_developer_under_their_opus_cap_is_not_listed(dashboard: Dashboard) -> None:
    _, team = await _opus_scene(dashboard, OPUS_COST + 1)
    admin = await dashboard.signed_in("admin")
    assert _blocked_rows(await admin.page("/admin/")) == []
    lead = await dashboard.signed_in("team_lead")
    members = _cap_use(await lead.page(f"/admin/teams/{team}"))
    # 110,000 of 110,001 µ$ → 99%: near, not blocked.
    assert members["Ada"].select_one(".badge-blocked") is None
    assert members["Ada"].select_one(".badge-near") is not None
    assert members["Ada"].get_text(" ", strip=True).startswith(
        "99% of developer Ada on opus, monthly")


async def test_a_grant_lifting_the_opus_cap_unblocks_the_developer(
        dashboard: Dashboard) -> None:
    ada, team = await _opus_scene(dashboard, OPUS_COST)
    admin = await dashboard.signed_in("admin")
    assert [r[0] for r in _blocked_rows(await admin.page("/admin/"))] == ["Ada blocked"]
    gw = dashboard.gateway
    await gw.change(create_grant, gw.admin.catalog, "developer", "Ada", 90_000,
                    datetime.now(UTC) + timedelta(days=2), "admin", "release week",
                    period="monthly")
    assert _blocked_rows(await admin.page("/admin/")) == []
    lead = await dashboard.signed_in("team_lead")
    members = _cap_use(await lead.page(f"/admin/teams/{team}"))
    # 110,000 of 110,000 + 90,000 µ$ → 55%: under the 75% threshold, no badge.
    ada_use = members["Ada"]
    assert ada_use.get_text(" ", strip=True) == (
        "55% of developer Ada on opus, monthly incl. +$0.09 granted")
    # The developer page shows the Opus cap as admission applies it: $0.11 + $0.09 granted.
    dev_id = await gw.admin.db(gw.admin.catalog.developer_id, "ada@example.com")
    row = next(tr for tr in (await admin.page(f"/admin/developers/{dev_id}")).select("tr")
               if "on opus" in tr.get_text())
    text = row.get_text(" ", strip=True)
    assert "+$0.09 granted until" in text and "$0.20" in text, text
    async with new_session() as s:  # admission applies the grant as the dashboard does
        assert (await send(s, gw.url, ada, OPUS_USAGE, OPUS))[0] == 200
