"""A developer's and a team's life: disable and re-enable (keys refused at once, by every
proxy), move to another team from a day (spend before it stays with the old team, in the
ledger, the rollups and the live team counters), rename and delete with a finance team's
rules, and keys with a label, last use, spend and who revoked them — through the ledger, the
admin API and the CLI."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dashboard import live
from ledger import reports
from ledger.catalog import Catalog, CatalogError
from ledger.lifecycle import Lifecycle
from ledger.models_allowed import AllowedModels
from ledger.rollup import Rollup
from tests.conftest import Gateway, Upstream
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.operator_cli import operator_cli
from tests.test_dashboard_browser import _sign_in, chromium  # noqa: F401
from tests.test_processes import BODY, REAL_ONLY, seconds_until_refused
from tests.test_rollup import KS, fresh_db, inline_db, make_events, send

API = "/admin/api/v1"


async def _status(gateway: Gateway, key: str) -> int:
    r = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    await r.read()
    return r.status


async def _until(gateway: Gateway, key: str, want: int) -> int:
    """The proxy's answer once its policy refresh (every 0.05 s here) has the change; the
    refresh is not forced, so this is what a client sees."""
    for _ in range(200):
        status = await _status(gateway, key)
        if status == want:
            return status
        await gateway.proxy.drain()
    return status


async def test_a_disabled_developer_is_refused_at_once_and_works_again_when_enabled(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    rw = {"x-api-key": await dashboard.admin_key("rw")}
    assert await _status(gw, key) == 200
    r = await gw.client.post(f"{API}/developers/ada@example.com/disable", headers=rw)
    assert r.status == 200 and (await r.json())["disabled"] is True
    assert await _until(gw, key, 401) == 401
    r = await gw.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert "disabled" in (await r.json())["error"]["message"]
    r = await gw.client.post(f"{API}/developers/ada@example.com/enable", headers=rw)
    assert r.status == 200 and (await r.json())["disabled"] is False
    assert await _until(gw, key, 200) == 200
    actions = [a["action"] for a in await gw.admin.db(gw.admin.catalog.audit)]
    assert actions[:2] == ["developer.enable", "developer.disable"]


@REAL_ONLY
async def test_a_disabled_developer_is_refused_by_another_proxy_process(
        gateway: Gateway, second_proxy: str) -> None:
    key = await gateway.developer()

    async def disable() -> None:
        await gateway.admin.db(Lifecycle(gateway.admin.catalog).set_disabled,
                               "ada@example.com", True)

    code, _ = await seconds_until_refused(gateway, second_proxy, key, disable)
    assert code == 401


def _ledger_with_ada() -> tuple[Catalog, dict[str, str]]:
    catalog = Catalog(fresh_db())
    ids = {n: catalog.create_team(n)["id"] for n in ("platform", "research")}
    ids["ada"] = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    # In platform since the start of the year.
    catalog.conn.execute("UPDATE memberships SET valid_from = DATE '2026-01-01'")
    return catalog, ids


def _events(ids: dict[str, str], *spends: tuple[str, int]) -> list[dict[str, Any]]:
    """One request of Ada's per (UTC start, µ$), recorded under platform as the proxy would
    have admitted it before the move."""
    out = []
    for n, (when, micros) in enumerate(spends):
        (e,) = make_events(1, seed=n, prefix=f"mreq_{when}_",
                           developers=[(ids["ada"], ids["platform"])])
        e.update(ts_ms=int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() * 1000),
                 cost_micros=micros, status=200, error_type="")
        out.append(e)
    return out


async def test_spend_before_a_move_stays_with_the_old_team(redis: Any) -> None:
    catalog, ids = _ledger_with_ada()
    await send(redis, _events(ids, ("2026-03-05T10:00:00", 1_000_000),
                              ("2026-03-09T23:59:59", 2_500_000),
                              ("2026-03-10T00:00:00", 4_000_000),
                              ("2026-03-12T08:00:00", 300_000)))
    rollup = Rollup(redis, KS, catalog.conn, inline_db, rebuild=False)
    assert await rollup.run_once() == 4
    moved = Lifecycle(catalog).move("ada@example.com", "research", date(2026, 3, 10),
                                    actor="alice", today=date(2026, 3, 15))
    assert moved["from_team_id"] == ids["platform"] and moved["team_id"] == ids["research"]
    # Admitted under platform before the move reached the proxy, settled after it.
    await send(redis, _events(ids, ("2026-03-11T09:00:00", 50_000)))
    assert await rollup.run_once() == 1
    await rollup.close()

    by_team = {r["label"]: r["cost_micros"] for r in reports.spend(
        catalog.conn, start=date(2026, 3, 1), end=date(2026, 4, 1), grain="month")}
    # platform: 1.00 + 2.50; research: 4.00 + 0.30 + 0.05 (dollars).
    assert by_team == {"platform": 3_500_000, "research": 4_350_000}
    per_day = catalog.conn.execute(
        "SELECT day::VARCHAR, team_id, cost_micros FROM usage_daily ORDER BY day").fetchall()
    assert per_day == [("2026-03-05", ids["platform"], 1_000_000),
                       ("2026-03-09", ids["platform"], 2_500_000),
                       ("2026-03-10", ids["research"], 4_000_000),
                       ("2026-03-11", ids["research"], 50_000),
                       ("2026-03-12", ids["research"], 300_000)]
    assert [(m["team_name"], str(m["valid_from"]), m["valid_to"] and str(m["valid_to"]))
            for m in Lifecycle(catalog).memberships(ids["ada"])] == [
        ("research", "2026-03-10", None), ("platform", "2026-01-01", "2026-03-10")]
    (audit,) = [a for a in catalog.audit() if a["action"] == "developer.move"]
    assert audit["actor"] == "alice"


async def test_a_first_stay_began_with_the_first_request_when_that_came_earlier(
        redis: Any) -> None:
    """Usage older than the developer's record (imported, or a ledger from before
    memberships): a move can start within it, and the old stay is dated from it."""
    catalog = Catalog(fresh_db())
    ids = {n: catalog.create_team(n)["id"] for n in ("platform", "research")}
    ids["ada"] = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    today = datetime.now(UTC).date()
    await send(redis, _events(ids, (f"{today - timedelta(days=10)}T12:00:00", 600_000),
                              (f"{today - timedelta(days=2)}T12:00:00", 90_000)))
    rollup = Rollup(redis, KS, catalog.conn, inline_db, rebuild=False)
    assert await rollup.run_once() == 2
    await rollup.close()
    Lifecycle(catalog).move("Ada", "research", today - timedelta(days=5))
    assert [(m["team_name"], m["valid_from"], m["valid_to"])
            for m in Lifecycle(catalog).memberships("Ada")] == [
        ("research", today - timedelta(days=5), None),
        ("platform", today - timedelta(days=10), today - timedelta(days=5))]
    by_team = {r["label"]: r["cost_micros"] for r in reports.spend(
        catalog.conn, start=today - timedelta(days=30), end=today, grain="month")}
    assert by_team == {"platform": 600_000, "research": 90_000}


def test_a_move_cannot_start_before_the_current_stay_nor_go_nowhere() -> None:
    catalog, _ = _ledger_with_ada()
    lifecycle = Lifecycle(catalog)
    with pytest.raises(CatalogError, match="since 2026-01-01"):
        lifecycle.move("Ada", "research", date(2025, 12, 31), today=date(2026, 3, 15))
    with pytest.raises(CatalogError, match="already in team platform"):
        lifecycle.move("Ada", "platform", date(2026, 3, 1), today=date(2026, 3, 15))


async def test_a_move_to_a_later_day_is_scheduled_starts_that_day_and_can_be_cancelled(
        redis: Any) -> None:
    catalog, ids = _ledger_with_ada()
    lifecycle = Lifecycle(catalog)

    def team_now() -> str:
        return str(catalog.developers()[0]["team_id"])

    moved = lifecycle.move("Ada", "research", date(2026, 4, 1), today=date(2026, 3, 15))
    assert moved["scheduled"] and moved["moved"] == {}
    assert team_now() == ids["platform"]  # nothing changes before the day
    assert lifecycle.start_due_moves(today=date(2026, 3, 31)) == 0
    # A new move replaces the scheduled one; a move back to platform cancels it.
    lifecycle.move("Ada", "research", date(2026, 4, 2), today=date(2026, 3, 15))
    cancelled = lifecycle.move("Ada", "platform", date(2026, 3, 15), today=date(2026, 3, 15))
    assert cancelled["cancelled"] and str(cancelled["since"]) == "2026-04-02"
    assert [(m["team_id"], m["valid_to"]) for m in lifecycle.memberships("Ada")] == [
        (ids["platform"], None)]
    lifecycle.move("Ada", "research", date(2026, 4, 1), today=date(2026, 3, 15))
    assert lifecycle.start_due_moves(today=date(2026, 4, 1)) == 1
    assert team_now() == ids["research"]
    assert lifecycle.start_due_moves(today=date(2026, 4, 1)) == 0
    # A request of 31 March that settles after the move started stays with platform.
    await send(redis, _events(ids, ("2026-03-31T23:59:00", 700_000),
                              ("2026-04-01T00:01:00", 20_000)))
    rollup = Rollup(redis, KS, catalog.conn, inline_db, rebuild=False)
    assert await rollup.run_once() == 2
    await rollup.close()
    by_team = {r["label"]: r["cost_micros"] for r in reports.spend(
        catalog.conn, start=date(2026, 3, 1), end=date(2026, 5, 1), grain="month")}
    assert by_team == {"platform": 700_000, "research": 20_000}
    actions = [a["action"] for a in catalog.audit()]
    assert actions[:2] == ["developer.move.start", "developer.move"]
    assert "developer.move.cancel" in actions


async def test_a_move_from_today_moves_today_s_spend_between_the_live_team_counters(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    research = (await gw.admin.db(gw.admin.catalog.create_team, "research"))["id"]
    platform = next(t["id"] for t in await gw.admin.db(gw.admin.catalog.teams)
                    if t["name"] == "platform")
    dev = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    for _ in range(2):
        assert await _status(gw, key) == 200
    await gw.settled(2)
    now = datetime.now(UTC)
    scopes = [(s, i, "daily") for s, i in (("developer", dev), ("team", platform),
                                          ("team", research))]
    before = await live.spent(gw.proxy.redis, gw.proxy.keyspace, scopes, now) or {}
    spent = before[("developer", dev, "daily")]
    assert spent > 0 and before[("team", platform, "daily")] == spent
    rw = {"x-api-key": await dashboard.admin_key("rw")}
    r = await gw.client.post(f"{API}/developers/{dev}/move", headers=rw,
                             json={"team": "research"})
    assert r.status == 200, await r.text()
    assert (await r.json())["moved"]["daily"]["spent"] == spent
    after = await live.spent(gw.proxy.redis, gw.proxy.keyspace, scopes, now) or {}
    assert after[("team", platform, "daily")] == 0
    assert after[("team", research, "daily")] == spent
    # The rolled-up rows moved with it.
    rows = await gw.admin.db(reports.spend, gw.admin.catalog.conn, start=now.date(),
                             end=date.fromordinal(now.date().toordinal() + 1))
    assert [(row["label"], row["cost_micros"]) for row in rows] == [("research", spent)]
    r = await gw.client.post(f"{API}/developers/{dev}/move", headers=rw,
                             json={"team": "platform", "since": "2026-13-01"})
    assert r.status == 400 and "not a date" in (await r.json())["error"]["message"]


async def test_rename_and_delete_follow_a_finance_team_s_rules(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    await gw.developer("Bo", "platform")
    rw = {"x-api-key": await dashboard.admin_key("rw")}
    assert await _status(gw, key) == 200
    await dashboard.roll_up()
    ada, bo = (d["id"] for d in await gw.admin.db(gw.admin.catalog.developers))
    team = (await gw.admin.db(gw.admin.catalog.teams))[0]["id"]

    r = await gw.client.patch(f"{API}/teams/{team}", headers=rw, json={"name": "core"})
    assert r.status == 200 and (await r.json())["name"] == "core"
    r = await gw.client.get(f"{API}/usage?dimension=team", headers=rw)
    assert [row["label"] for row in (await r.json())["data"]] == ["core"]
    r = await gw.client.patch(f"{API}/developers/{ada}", headers=rw, json={"name": "Ada L."})
    assert (await r.json())["name"] == "Ada L."

    r = await gw.client.delete(f"{API}/teams/{team}", headers=rw)
    assert r.status == 400 and "has 2 members" in (await r.json())["error"]["message"]
    r = await gw.client.delete(f"{API}/developers/{bo}", headers=rw)  # never used
    assert (await r.json())["outcome"] == "deleted"
    r = await gw.client.delete(f"{API}/developers/{ada}", headers=rw)
    body = await r.json()
    assert body["outcome"] == "archived" and body["disabled"] is True
    assert await _until(gw, key, 401) == 401
    (kept,) = await gw.admin.db(gw.admin.catalog.keys, ada)
    assert kept["revoked_at"] is not None and kept["revoked_by"].startswith("api-key:")
    listed = await (await gw.client.get(f"{API}/developers", headers=rw)).json()
    assert listed["data"] == []
    listed = await (await gw.client.get(f"{API}/developers?archived=1", headers=rw)).json()
    assert [(d["name"], d["archived_at"] is not None) for d in listed["data"]] == [
        ("Ada L.", True)]
    # The team now has history and no members: archived, its spend still reported.
    r = await gw.client.delete(f"{API}/teams/{team}", headers=rw)
    assert (await r.json())["outcome"] == "archived"
    r = await gw.client.get(f"{API}/usage?dimension=team", headers=rw)
    assert [row["label"] for row in (await r.json())["data"]] == ["core"]
    assert (await (await gw.client.get(f"{API}/teams", headers=rw)).json())["data"] == []
    teams = (await (await gw.client.get(f"{API}/teams?archived=1", headers=rw)).json())["data"]
    assert [t["name"] for t in teams] == ["core"]
    # An unused team is erased whole, with its model list.
    spare = (await gw.admin.db(gw.admin.catalog.create_team, "spare"))["id"]
    await gw.admin.db(AllowedModels(gw.admin.catalog).set, spare, ["claude-haiku-4-5"])
    r = await gw.client.delete(f"{API}/teams/{spare}", headers=rw)
    assert (await r.json())["outcome"] == "deleted"
    assert await gw.admin.db(AllowedModels(gw.admin.catalog).all) == []
    actions = {a["action"] for a in await gw.admin.db(gw.admin.catalog.audit)}
    assert {"team.rename", "developer.rename", "developer.delete", "developer.archive",
            "team.archive"} <= actions


async def test_keys_show_label_last_use_spend_and_who_revoked_them(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    rw = {"x-api-key": await dashboard.admin_key("rw")}
    r = await gw.client.post(f"{API}/keys", headers=rw,
                             json={"developer": "ada@example.com", "label": "CI runner"})
    issued = await r.json()
    assert r.status == 201 and issued["label"] == "CI runner"
    await gw.proxy.refresh_policy()
    for _ in range(3):
        assert await _status(gw, issued["secret"]) == 200
    await dashboard.roll_up()
    costs = await gw.admin.db(lambda: gw.admin.catalog.conn.execute(
        "SELECT sum(cost_micros), max(ts) FROM requests WHERE key_id = ?",
        [issued["id"]]).fetchone())
    listed = {k["id"]: k for k in (await (await gw.client.get(
        f"{API}/keys?developer=ada@example.com", headers=rw)).json())["data"]}
    key = listed[issued["id"]]
    assert key["label"] == "CI runner" and key["requests"] == 3
    assert key["spent_micros"] == costs[0] > 0
    assert key["last_used_at"] == costs[1].isoformat()
    r = await gw.client.post(f"{API}/keys/{issued['id']}/revoke", headers=rw)
    assert (await r.json())["revoked_by"].startswith("api-key:")


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
def test_cli_disables_moves_renames_and_deletes(tmp_path: Path, upstream: Upstream,
                                                redis_url: str) -> None:
    cli = operator_cli(tmp_path / "data")

    cli("team", "create", "platform")
    cli("team", "create", "research")
    cli("dev", "create", "Ada", "--email", "ada@example.com", "--team", "platform")
    cli("key", "issue", "ada@example.com", "--label", "laptop")
    assert "laptop" in cli("key", "list")
    assert "disabled: True" in cli("dev", "disable", "ada@example.com")
    assert "disabled: False" in cli("dev", "enable", "ada@example.com")
    today = datetime.now(UTC).date().isoformat()
    cli("dev", "move", "ada@example.com", "--team", "research", "--since", today)
    assert cli("dev", "teams", "ada@example.com").splitlines()[1].split()[1] == "research"
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert "scheduled: True" in cli("dev", "move", "ada@example.com", "--team", "platform",
                                    "--since", tomorrow)
    assert "cancelled: True" in cli("dev", "move", "ada@example.com", "--team", "research")
    assert "name: Ada Lovelace" in cli("dev", "rename", "ada@example.com", "Ada Lovelace")
    assert "name: core" in cli("team", "rename", "research", "core")
    assert "has 1 member" in cli("team", "delete", "core", code=2)
    # Ada never made a request: erased, and with her the teams' only history.
    assert "outcome: deleted" in cli("dev", "delete", "ada@example.com")
    assert "outcome: deleted" in cli("team", "delete", "core")
    assert "core" not in cli("team", "list")


@pytest.mark.timeout(180)
async def test_admin_offboards_moves_renames_and_deletes_in_the_browser(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    await gw.developer("Bo", "platform")
    await gw.admin.db(gw.admin.catalog.create_team, "research")
    await gw.admin.db(gw.admin.catalog.create_team, "spare")
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    confirmations: list[str] = []

    async def accept(dialog: Any) -> None:
        confirmations.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])

    # Offboard Ada: asked first, then her key is refused; re-enabled, it works again.
    assert await _status(gw, key) == 200
    await page.goto(f"{gw.url}/admin/developers")
    await page.click("text=Ada")
    await page.click("#set-disabled button")
    await page.wait_for_selector(".flash:has-text('Ada disabled')")
    assert confirmations and "Disable Ada?" in confirmations[-1]
    assert await page.is_visible("#developer-disabled")
    assert await _until(gw, key, 401) == 401
    await page.click("#set-disabled button:has-text('Re-enable')")
    await page.wait_for_selector(".flash:has-text('enabled again')")
    assert not await page.is_visible("#developer-disabled")
    assert await _until(gw, key, 200) == 200
    await dashboard.roll_up()

    # In platform for a week; moved to research from yesterday: today's spend goes with her.
    today = datetime.now(UTC).date()
    await gw.admin.db(gw.admin.catalog.conn.execute,
                      "UPDATE memberships SET valid_from = ?", [today - timedelta(days=7)])
    await page.reload()
    await page.select_option("#move-developer select[name=team]", label="research")
    await page.fill("#move-developer input[name=since]", (today - timedelta(days=1)).isoformat())
    await page.click("#move-developer button")
    await page.wait_for_selector(".flash:has-text('Moved to team research')")
    stays = await page.locator("#memberships tbody tr td:first-child").all_inner_texts()
    assert stays == ["research", "platform"]
    dev_url = page.url
    spent = await gw.admin.db(lambda: gw.admin.catalog.conn.execute(
        "SELECT sum(cost_micros) FROM requests").fetchone()[0])
    await page.goto(f"{gw.url}/admin/teams")
    today_by_team = dict(zip(
        await page.locator("#teams tbody tr td:first-child").all_inner_texts(),
        [int(v) for v in await page.locator("#teams tbody tr td:nth-child(3)").evaluate_all(
            "cells => cells.map(c => c.dataset.sort)")], strict=True))
    assert today_by_team == {"platform": 0, "research": spent, "spare": 0}
    await page.goto(dev_url)

    # A move to spare tomorrow is scheduled, and cancelled.
    await page.select_option("#move-developer select[name=team]", label="spare")
    await page.fill("#move-developer input[name=since]", (today + timedelta(days=1)).isoformat())
    await page.click("#move-developer button")
    await page.wait_for_selector(".flash:has-text('Moves to team spare on')")
    assert "scheduled" in await page.inner_text("#memberships tbody tr:first-child")
    await page.click("#cancel-move button")
    await page.wait_for_selector(".flash:has-text('is cancelled')")
    stays = await page.locator("#memberships tbody tr td:first-child").all_inner_texts()
    assert stays == ["research", "platform"]

    # Rename her; the key list shows the key's use (the refused requests were not served).
    await page.fill("#rename-developer input[name=name]", "Ada Lovelace")
    await page.click("#rename-developer button")
    await page.wait_for_selector("#developer-name:has-text('Ada Lovelace')")
    assert await page.inner_text("#keys tbody tr .key-requests") == "2"

    # Teams: platform (Bo still in it) cannot be deleted; spare (never used) can.
    await page.goto(f"{gw.url}/admin/teams")
    await page.click("main >> text=platform")
    await page.fill("#rename-team input[name=name]", "core")
    await page.click("#rename-team button")
    await page.wait_for_selector(".flash:has-text('Team renamed to core')")
    await page.click("#delete-team button")
    await page.wait_for_selector("text=has 1 member")
    await page.goto(f"{gw.url}/admin/teams")
    await page.click("main >> text=spare")
    await page.click("#delete-team button")
    await page.wait_for_selector(".flash:has-text('Team spare deleted')")
    assert "spare" not in await page.inner_text("#teams")

    # Deleting Ada, who has spend, archives her.
    await page.goto(dev_url)
    await page.click("#delete-developer button")
    await page.wait_for_selector(".flash:has-text('archived')")
    assert await page.is_visible("#developer-archived")
    assert "revoked" in await page.inner_text("#keys tbody tr")
    await page.goto(f"{gw.url}/admin/developers")
    assert "Ada" not in await page.inner_text("#developers")
    await page.click("#archived-developers >> text=Ada Lovelace")
    assert await page.is_visible("#developer-archived")
    last_days = await page.locator("#memberships tbody tr td:nth-child(3)").all_inner_texts()
    assert last_days == ["still a member", (today - timedelta(days=2)).isoformat()]


async def test_the_admin_starts_a_scheduled_move_on_its_day_and_every_proxy_hears_of_it(
        start_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await start_gateway(rollup_interval=0.1)
    key = await gw.developer("Ada", "platform")
    await gw.change(gw.admin.catalog.create_team, "research")
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    moved = await gw.admin.db(Lifecycle(gw.admin.catalog).move, "Ada", "research",
                              tomorrow.date())
    assert moved["scheduled"]
    assert gw.proxy.policy.principal(key).team_name == "platform"
    monkeypatch.setattr("ledger.lifecycle._now", lambda: tomorrow.replace(tzinfo=None))
    for _ in range(200):  # the rollup tick (every 0.1 s here) starts it and publishes
        await gw.proxy.refresh_policy()
        if gw.proxy.policy.principal(key).team_name == "research":
            break
        await asyncio.sleep(0.05)
    assert gw.proxy.policy.principal(key).team_name == "research"
    (started,) = [a for a in await gw.admin.db(gw.admin.catalog.audit)
                  if a["action"] == "developer.move.start"]
    assert started["actor"] == "scheduler"
