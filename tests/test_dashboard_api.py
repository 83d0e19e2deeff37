"""The admin JSON API: admin API keys and their roles, usage reports, Anthropic-shaped spend
limits (through the real anthropic SDK), and the account commands of the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import duckdb
import orjson
import pytest

from dashboard.accounts import Accounts
from dashboard.commands import add_account_commands
from meterd.client import call
from meterd.settings import Settings
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, break_teams, logged_error
from tests.test_hostile_input import run_cli, serve_socket


async def _team(dash: Dashboard) -> str:
    await dash.gateway.developer("Ada", "platform")
    return str((await dash.gateway.admin.db(dash.gateway.admin.catalog.teams))[0]["id"])


async def test_rw_key_changes_and_is_audited_under_its_id(dashboard: Dashboard) -> None:
    key = await dashboard.admin_key("rw", "terraform")
    async with dashboard.client.post("/admin/api/v1/teams", json={"name": "infra"},
                                     headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 201
        team = await r.json()
    admin = dashboard.gateway.admin
    row = (await admin.db(admin.catalog.audit))[0]
    key_id = (await admin.db(Accounts(admin.catalog).admin_keys))[0]["id"]
    assert (row["action"], row["target"], row["actor"]) == (
        "team.create", team["id"], f"api-key:{key_id}")


async def test_ro_key_reads_but_cannot_change(dashboard: Dashboard) -> None:
    key = {"x-api-key": await dashboard.admin_key("ro")}
    async with dashboard.client.get("/admin/api/v1/teams", headers=key) as r:
        assert r.status == 200
    async with dashboard.client.post("/admin/api/v1/teams", json={"name": "x"},
                                     headers=key) as r:
        assert r.status == 403
        assert (await r.json())["error"]["type"] == "permission_error"


async def test_unknown_or_revoked_admin_key_is_401(dashboard: Dashboard) -> None:
    key = await dashboard.admin_key("rw")
    admin = dashboard.gateway.admin
    accounts = Accounts(admin.catalog)
    for bad in ("mtda_nope", "mtd_a-gateway-key-is-not-an-admin-key"):
        async with dashboard.client.get("/admin/api/v1/teams",
                                        headers={"Authorization": f"Bearer {bad}"}) as r:
            assert r.status == 401
    key_id = (await admin.db(accounts.admin_keys))[0]["id"]
    await admin.db(accounts.revoke_admin_key, key_id)
    async with dashboard.client.get("/admin/api/v1/teams", headers={"x-api-key": key}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "authentication_error"


async def test_budgets_accept_the_admin_api_spend_limit_shape(dashboard: Dashboard) -> None:
    team = await _team(dashboard)
    key = {"x-api-key": await dashboard.admin_key("rw")}
    async with dashboard.client.post("/admin/api/v1/budgets", headers=key, json={
            "scope": {"type": "user", "user_id": "ada@example.com"}, "amount": "2550",
            "period": "daily"}) as r:
        assert r.status == 201
        row = await r.json()
    assert (row["scope"], row["period"], row["amount_micros"]) == ("developer", "daily",
                                                                   25_500_000)
    async with dashboard.client.post("/admin/api/v1/budgets", headers=key, json={
            "scope": {"type": "workspace", "workspace_id": "platform"}, "amount": "50000",
            "period": "monthly"}) as r:
        row = await r.json()
    assert (row["scope"], row["scope_id"], row["amount_micros"]) == ("team", team,
                                                                     500_000_000)
    async with dashboard.client.post("/admin/api/v1/budgets", headers=key, json={
            "scope": {"type": "user", "user_id": "ada@example.com"}, "amount": "12.50"}) as r:
        assert r.status == 400  # whole cents only


async def test_anthropic_sdk_manages_spend_limits(dashboard: Dashboard) -> None:
    team = await _team(dashboard)
    client = anthropic.AsyncAnthropic(api_key=await dashboard.admin_key("rw"),
                                      base_url=dashboard.gateway.url + "/admin/api",
                                      max_retries=0)
    limits = client.beta.organization.spend_limits
    async with client:
        made = await limits.set(amount="50000", period="monthly",
                                scope={"type": "workspace", "workspace_id": team})
        assert (made.amount, made.period, made.currency) == ("50000", "monthly", "USD")
        assert made.scope.type == "workspace"
        assert getattr(made.scope, "workspace_id", None) == team
        await limits.set(amount="1000", period="daily", scope={"type": "organization"})
        listed = [s async for s in limits.list()]
        assert {(s.scope.type, s.amount) for s in listed} == {("workspace", "50000"),
                                                              ("organization", "1000")}
        again = await limits.retrieve(made.id)
        assert again.id == made.id and again.amount == "50000"
        await limits.set(amount="60000", period="monthly",
                         scope={"type": "workspace", "workspace_id": team})
        assert (await limits.retrieve(made.id)).amount == "60000"  # upsert keeps the id
        gone = await limits.delete(made.id)
        assert (gone.id, gone.type) == (made.id, "spend_limit_deleted")
        cleared = await limits.set(amount=None, period="daily", scope={"type": "organization"})
        assert cleared.amount is None
    admin = dashboard.gateway.admin
    assert await admin.db(admin.catalog.budgets) == []
    actions = [r["action"] for r in await admin.db(admin.catalog.audit)]
    assert actions[:5] == ["budget.delete", "budget.delete", "budget.set", "budget.set",
                           "budget.set"]


async def test_spend_limit_budget_is_enforced_by_the_proxy(dashboard: Dashboard) -> None:
    team = await _team(dashboard)
    key = await dashboard.gateway.developer("Bob", "platform")
    async with dashboard.client.post(
            "/admin/api/v1/organizations/spend_limits",
            headers={"x-api-key": await dashboard.admin_key("rw")},
            json={"scope": {"type": "workspace", "workspace_id": team}, "amount": "0",
                  "period": "daily"}) as r:
        assert r.status == 200
    await dashboard.gateway.proxy.refresh_policy()
    async with dashboard.client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "claude-sonnet-4-6", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 429
        assert (await r.json())["error"]["type"] == "billing_error"


async def test_usage_reports_after_a_rollup(dashboard: Dashboard) -> None:
    key = await dashboard.gateway.developer("Ada", "platform")
    for _ in range(3):
        async with dashboard.client.post("/v1/messages", headers={"x-api-key": key}, json={
                "model": "claude-sonnet-4-6", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
    events = await dashboard.gateway.settled(3)
    await dashboard.roll_up()
    cost = sum(int(e["cost_micros"]) for e in events)
    headers = {"x-api-key": await dashboard.admin_key("ro")}
    async with dashboard.client.get("/admin/api/v1/usage/totals", headers=headers) as r:
        totals = await r.json()
    assert (totals["requests"], totals["cost_micros"]) == (3, cost)
    async with dashboard.client.get("/admin/api/v1/usage?dimension=developer&grain=month",
                                    headers=headers) as r:
        rows = (await r.json())["data"]
    assert [(row["label"], row["cost_micros"]) for row in rows] == [("Ada", cost)]
    async with dashboard.client.get("/admin/api/v1/usage?format=csv", headers=headers) as r:
        assert r.content_type == "text/csv"
        assert (await r.text()).splitlines()[0].startswith("period,key,label,requests")
    async with dashboard.client.get("/admin/api/v1/requests?limit=2", headers=headers) as r:
        page = await r.json()
    assert (page["total"], len(page["data"])) == (3, 2)
    async with dashboard.client.get("/admin/api/v1/usage/top", headers=headers) as r:
        assert (await r.json())["data"][0]["label"] == "Ada"


async def test_first_admin_created_over_the_cli_socket_can_sign_in(
        make_settings: Callable[..., Settings], start_dashboard: Any) -> None:
    settings = make_settings()
    result = await call(settings, "POST", "users", {"name": "root", "role": "admin",
                                                    "password": "a strong first password"})
    assert result == {"name": "root", "role": "admin", "disabled": False}
    # The same data directory, now served: the account signs in.
    dash = await start_dashboard()
    browser = dash.browser()
    assert await browser.sign_in("root", "a strong first password") == 303
    audit = await dash.gateway.admin.db(dash.gateway.admin.catalog.audit)
    assert (audit[0]["action"], audit[0]["actor"]) == ("user.create", "cli")


def _parser(calls: list[tuple[str, str, Any]]) -> argparse.ArgumentParser:
    """The account commands on a parser shaped like meterd's, with a manage() that records."""
    parser = argparse.ArgumentParser(prog="meterd")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], None], help: str,
            parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        return p

    def manage(method: str, path: str, body: Callable[[argparse.Namespace], Any] | None = None,
               show: Callable[[Any], None] | None = None) -> Callable[[argparse.Namespace], None]:
        def run(args: argparse.Namespace) -> None:
            calls.append((method, path.format(**vars(args)), body(args) if body else None))
        return run

    add_account_commands(sub, add, manage)
    return parser


def test_cli_user_create_reads_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from a file, long enough\n")
    calls: list[tuple[str, str, Any]] = []
    args = _parser(calls).parse_args(["user", "create", "alice", "--role", "admin",
                                      "--password-file", str(secret)])
    args.fn(args)
    assert calls == [("POST", "users", {"name": "alice", "role": "admin",
                                        "password": "from a file, long enough"})]


def test_cli_refuses_a_short_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("short")
    calls: list[tuple[str, str, Any]] = []
    args = _parser(calls).parse_args(["user", "create", "bob", "--role", "finance",
                                      "--password-file", str(secret)])
    with pytest.raises(SystemExit, match="at least 12"):
        args.fn(args)


def test_cli_admin_key_commands(tmp_path: Path) -> None:
    calls: list[tuple[str, str, Any]] = []
    parser = _parser(calls)
    for argv in (["admin-key", "create", "--role", "ro", "--label", "exports"],
                 ["admin-key", "revoke", "akey_1"], ["admin-key", "list"]):
        args = parser.parse_args(argv)
        args.fn(args)
    assert calls == [("POST", "admin_keys", {"role": "ro", "label": "exports"}),
                     ("POST", "admin_keys/akey_1/revoke", None), ("GET", "admin_keys", None)]
    with pytest.raises(SystemExit):
        parser.parse_args(["admin-key", "create", "--role", "owner"])


def _end_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 23, 59, 59)


async def test_a_key_expiring_on_a_date_works_to_the_end_of_that_utc_day_on_every_path(
        start_dashboard: Callable[..., Awaitable[Dashboard]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    short_data_dir = str(tmp_path_factory.mktemp("d"))  # room for the Unix socket's path
    dash = await start_dashboard(data_dir=short_data_dir)
    await dash.gateway.developer("Ada", "platform")
    await serve_socket(dash, short_data_dir)
    admin, browser = dash.gateway.admin, await dash.signed_in("admin")
    headers = {"x-api-key": await dash.admin_key("rw")}
    dev = (await admin.db(admin.catalog.developers))[0]["id"]
    issue_day = datetime.now(UTC).date() + timedelta(days=200)
    expire_day = issue_day + timedelta(days=1)

    async def issued() -> list[Any]:
        return [k["expires_at"] for k in await admin.db(admin.catalog.keys)][1:]

    code, _, err = await run_cli("key", "issue", "ada@example.com", "--expires",
                                 issue_day.isoformat(), "--data-dir", short_data_dir)
    assert code == 0, err
    async with dash.client.post("/admin/api/v1/keys", headers=headers, json={
            "developer": "ada@example.com", "expires_at": issue_day.isoformat()}) as r:
        assert r.status == 201
    status, _, _ = await browser.post(f"/admin/developers/{dev}/keys",
                                      {"expires": issue_day.isoformat()})
    assert status == 303  # to the page that shows the secret once
    assert await issued() == [_end_of(issue_day)] * 3  # CLI, API, dashboard

    cli_key, api_key, page_key = [k["id"] for k in await admin.db(admin.catalog.keys)][1:]
    code, _, err = await run_cli("key", "expire", cli_key, "--at", expire_day.isoformat(),
                                 "--data-dir", short_data_dir)
    assert code == 0, err
    async with dash.client.post(f"/admin/api/v1/keys/{api_key}/expire", headers=headers,
                                json={"expires_at": expire_day.isoformat()}) as r:
        assert r.status == 200
    await browser.get(f"/admin/developers/{dev}")
    status, _, _ = await browser.post(f"/admin/keys/{page_key}/expire",
                                      {"expires": expire_day.isoformat()})
    assert status == 303
    assert await issued() == [_end_of(expire_day)] * 3

    # A date-time is that instant, on the API and the CLI alike.
    async with dash.client.post(f"/admin/api/v1/keys/{api_key}/expire", headers=headers,
                                json={"expires_at": f"{issue_day}T12:00:00+02:00"}) as r:
        assert (await r.json())["expires_at"] == f"{issue_day}T10:00:00"
    code, _, err = await run_cli("key", "expire", cli_key, "--at", f"{issue_day}T12:00",
                                 "--data-dir", short_data_dir)
    assert code == 0, err
    assert (await issued())[:2] == [datetime.combine(issue_day, datetime.min.time())
                                    + timedelta(hours=h) for h in (12, 10)]


async def test_a_key_issued_from_the_cli_to_expire_today_works_today(
        start_dashboard: Callable[..., Awaitable[Dashboard]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    short_data_dir = str(tmp_path_factory.mktemp("d"))  # room for the Unix socket's path
    dash = await start_dashboard(data_dir=short_data_dir)
    await dash.gateway.developer("Ada", "platform")
    await serve_socket(dash, short_data_dir)
    today = datetime.now(UTC).date().isoformat()
    code, out, err = await run_cli("key", "issue", "ada@example.com", "--expires", today,
                                   "--data-dir", short_data_dir)
    assert code == 0, err
    secret = next(word for word in out.split() if word.startswith("mtd_"))
    await dash.gateway.proxy.refresh_policy()
    async with dash.client.post("/v1/messages", headers={"x-api-key": secret}, json={
            "model": "claude-sonnet-4-6", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200, await r.text()


async def test_api_parquet_export_ends_the_day_before_end_like_every_api_range(
        dashboard: Dashboard, tmp_path: Path) -> None:
    """`meterd export --start 2026-10-01 --end 2026-11-01` is October: `end` is exclusive."""
    key = await dashboard.gateway.developer("Ada", "platform")
    async with dashboard.client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "claude-sonnet-4-6", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
    await dashboard.roll_up()
    headers = {"x-api-key": await dashboard.admin_key("ro")}
    today = datetime.now(UTC).date()
    for start, end, rows in ((today - timedelta(days=1), today, 0),
                             (today, today + timedelta(days=1), 1)):
        async with dashboard.client.get("/admin/api/v1/requests.parquet", headers=headers,
                                        params={"start": str(start), "end": str(end)}) as r:
            assert r.status == 200
            target = tmp_path / f"{start}.parquet"
            target.write_bytes(await r.read())
        found = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)",
                                         [str(target)]).fetchone()
        assert found == (rows,), (start, end)


@pytest.mark.parametrize(("method", "path", "body", "says"), [
    ("POST", "teams", {"name": ["infra"]}, "name must be a string"),
    ("POST", "developers", {"name": "Bo", "team": "platform"}, "email is required"),
    ("PUT", "rate_limits", {"scope": "team", "target": "platform", "rpm": "lots"},
     "rpm must be a whole number"),
    ("PUT", "rate_limits", {"scope": "team", "target": "platform", "rpm": [60]},
     "rpm must be a whole number"),
    ("POST", "budgets", {"scope": {"type": "user"}, "amount": "100"},
     "scope.user_id is required"),
    ("POST", "organizations/spend_limits",
     {"scope": {"type": "workspace", "workspace_id": 7}, "amount": "100"},
     "scope.workspace_id must be a string"),
])
async def test_a_bad_field_is_a_400_naming_it_and_changes_nothing(
        dashboard: Dashboard, method: str, path: str, body: dict[str, Any], says: str) -> None:
    await _team(dashboard)
    admin = dashboard.gateway.admin
    key = await dashboard.admin_key("rw")
    before = await admin.db(admin.catalog.audit)
    async with dashboard.client.request(method, f"/admin/api/v1/{path}", json=body,
                                        headers={"x-api-key": key}) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert says in error["message"]
    assert await admin.db(admin.catalog.audit) == before


async def test_a_bug_is_a_500_with_a_request_id_logged_with_its_traceback(
        dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    key = await dashboard.admin_key("ro")
    break_teams(monkeypatch, KeyError("internal_column"))
    async with dashboard.client.get("/admin/api/v1/teams", headers={"x-api-key": key}) as r:
        assert r.status == 500
        request_id = r.headers["request-id"]
        body = await r.text()
    assert request_id.startswith("merr_")
    assert orjson.loads(body) == {"type": "error", "error": {
        "type": "api_error", "message": f"internal error in meterd (request id {request_id})"}}
    assert "internal_column" not in body
    assert logged_error(caplog, request_id) is KeyError
