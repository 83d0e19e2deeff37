"""The dashboard pages, driven as a browser would (forms, redirects, cookies) and checked
structurally."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable

import orjson
import pytest

from dashboard.accounts import Accounts
from dashboard.rollout import SIGNED_IN_TELEMETRY
from ledger.money import format_usd, parse_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import (
    Browser,
    Dashboard,
    attr,
    break_teams,
    logged_error,
    one,
    parse,
)

MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 10,
           "messages": [{"role": "user", "content": "hi"}]}


async def _send(dash: Dashboard, key: str, n: int = 1, **headers: str) -> list[int]:
    statuses = []
    for _ in range(n):
        async with dash.client.post("/v1/messages", json=MESSAGE,
                                    headers={"x-api-key": key, **headers}) as r:
            await r.read()
            statuses.append(r.status)
    return statuses


async def _team_id(dash: Dashboard, name: str = "platform") -> str:
    admin = dash.gateway.admin
    return next(t["id"] for t in await admin.db(admin.catalog.teams) if t["name"] == name)


async def test_empty_dashboard_says_what_to_do_next(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    page = await admin.page("/admin/")
    empty = one(page, ".empty")
    assert "Nothing to show yet" in empty.get_text()
    assert one(empty, "a[href='/admin/teams']") is not None
    page = await admin.page("/admin/teams")
    assert "No teams yet" in one(page, ".empty").get_text()
    assert one(page, "form#create-team") is not None
    page = await admin.page("/admin/developers")
    assert "create a team" in one(page, ".empty").get_text()
    page = await admin.page("/admin/requests")
    assert "No requests yet" in one(page, ".empty").get_text()


async def test_finance_sees_no_forms(dashboard: Dashboard) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    finance = await dashboard.signed_in("finance")
    team = await _team_id(dashboard)
    for path in ("/admin/teams", f"/admin/teams/{team}", "/admin/developers", "/admin/access"):
        page = await finance.page(path)
        posts = [f for f in page.select("main form[method=post]")]
        assert posts == [], path


async def test_team_budget_set_through_the_form_is_audited_and_shown(
        dashboard: Dashboard) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    team = await _team_id(dashboard)
    await dashboard.account("carol", "admin")
    admin = dashboard.browser()
    await admin.sign_in("carol", "correct horse battery")
    page = await admin.page(f"/admin/teams/{team}")
    form = one(page, "#pool form")
    assert form["action"] == f"/admin/teams/{team}/budget"
    status, _, headers = await admin.post(form["action"], {
        "scope": "team", "amount": "1,250.50", "period": "monthly", "mode": "strict"})
    assert (status, headers["Location"]) == (303, f"/admin/teams/{team}")
    page = await admin.page(headers["Location"])
    assert "Team budget saved." in one(page, ".flash").get_text()
    cells = [td.get_text(" ", strip=True) for td in page.select("#pool-budgets tbody td")]
    assert cells[:3] == ["monthly", "$1,250.50 strict", "$0.00"]
    assert one(page, "#pool-budgets svg.meter") is not None
    gw = dashboard.gateway.admin
    budget = (await gw.db(gw.catalog.budgets))[0]
    assert (budget["scope"], budget["amount_micros"], budget["mode"]) == (
        "team", parse_usd("1250.50"), "strict")
    audit = (await gw.db(gw.catalog.audit))[0]
    assert (audit["actor"], audit["action"]) == ("carol", "budget.set")


@pytest.mark.parametrize(("owner", "scope", "page", "saved"), [
    ("developer", "developer", "/admin/developers/{dev}", "Personal cap saved."),
    ("team", "team_member", "/admin/teams/{team}", "Per-member cap saved."),
    ("org", "org", "/admin/teams", "Organization budget saved."),
])
async def test_every_budget_form_saves_and_returns_to_its_page(
        dashboard: Dashboard, owner: str, scope: str, page: str, saved: str) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    gw = dashboard.gateway.admin
    ids = {"dev": (await gw.db(gw.catalog.developers))[0]["id"],
           "team": await _team_id(dashboard)}
    admin = await dashboard.signed_in("admin")
    action = {"developer": "/admin/developers/{dev}/budget", "team": "/admin/teams/{team}/budget",
              "org": "/admin/org/budget"}[owner].format(**ids)
    status, _, headers = await admin.post(action, {
        "scope": scope, "amount": "75", "period": "weekly", "mode": "estimate"})
    assert (status, headers["Location"]) == (303, page.format(**ids))
    assert saved in one(await admin.page(headers["Location"]), ".flash").get_text()
    (budget,) = await gw.db(gw.catalog.budgets)
    assert (budget["scope"], budget["period"], budget["amount_micros"]) == (
        scope, "weekly", parse_usd("75"))


async def test_bad_amount_is_explained_not_saved(dashboard: Dashboard) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    team = await _team_id(dashboard)
    admin = await dashboard.signed_in("admin")
    await admin.page(f"/admin/teams/{team}")
    status, _, headers = await admin.post(
        f"/admin/teams/{team}/budget", {"amount": "lots", "period": "monthly"},
        headers={"Referer": str(dashboard.client.make_url(f"/admin/teams/{team}"))})
    assert (status, headers["Location"]) == (303, f"/admin/teams/{team}")
    page = await admin.page(headers["Location"])
    assert "in dollars" in one(page, ".flash-error").get_text()
    gw = dashboard.gateway.admin
    assert await gw.db(gw.catalog.budgets) == []


async def test_key_issued_in_the_browser_is_shown_once_and_works(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    dev = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    admin = await dashboard.signed_in("admin")
    await admin.page(f"/admin/developers/{dev}")
    status, _, headers = await admin.post(f"/admin/developers/{dev}/keys", {"expires": ""})
    assert status == 303  # post/redirect/get: the secret is on the next page
    shown = headers["Location"]
    status, text = await admin.get(shown)
    assert status == 200
    secret = one(parse(text), "#new-key-secret").get_text(strip=True)
    assert secret.startswith("mtd_")
    # Shown once: the same address again shows no secret and issues no key.
    status, again = await admin.get(shown)
    assert status == 303 and secret not in again
    assert len(await gw.admin.db(gw.admin.catalog.keys)) == 2
    await gw.proxy.refresh_policy()
    assert await _send(dashboard, secret) == [200]
    page = await admin.page(f"/admin/developers/{dev}")
    assert secret not in str(page)
    rows = page.select("#keys tbody tr")
    assert len(rows) == 2 and all("active" in r.get_text() for r in rows)
    # Revoke it from the page: the proxy refuses it.
    key_id = next(r["data-key-id"] for r in rows if secret[:8] in r.get_text())
    status, _, _ = await admin.post(f"/admin/keys/{key_id}/revoke", {})
    assert status == 303
    await gw.proxy.refresh_policy()
    assert await _send(dashboard, secret) == [401]
    page = await admin.page(f"/admin/developers/{dev}")
    assert "revoked" in one(page, f"tr[data-key-id={key_id}]").get_text()


async def test_key_expiry_set_on_the_page(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    key = (await gw.admin.db(gw.admin.catalog.keys))[0]
    admin = await dashboard.signed_in("admin")
    await admin.page(f"/admin/developers/{key['developer_id']}")
    status, _, _ = await admin.post(f"/admin/keys/{key['id']}/expire", {"expires": "2099-01-31"})
    assert status == 303
    row = (await gw.admin.db(gw.admin.catalog.keys))[0]
    assert row["expires_at"].isoformat() == "2099-01-31T23:59:59"
    status, _, headers = await admin.post(f"/admin/keys/{key['id']}/expire",
                                          {"expires": "2000-01-01"})
    assert status == 303
    page = await admin.page(headers["Location"])
    assert "cannot be in the past" in one(page, ".flash-error").get_text()


async def test_usage_shows_on_overview_and_budget_near_cap_is_flagged(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    assert await _send(dashboard, key) == [200]
    cost = int((await gw.settled(1))[0]["cost_micros"])
    # A cap of exactly what was spent: reached, and the next request is refused.
    await gw.change(gw.admin.catalog.set_budget, "team", "platform", "monthly", cost)
    assert await _send(dashboard, key) == [429]
    await dashboard.roll_up()
    finance = await dashboard.signed_in("finance")
    page = await finance.page("/admin/")
    today = int(attr(one(page, "#spent-today"), "data-micros"))
    assert today > 0
    team_rows = page.select("#by-team tbody tr")
    assert [one(r, "td").get_text(strip=True) for r in team_rows] == ["platform"]
    watch = page.select("#budget-watch tbody tr")
    assert len(watch) == 1 and "level-over" in watch[0]["class"]
    assert "Team platform" in watch[0].get_text()
    chart = one(page, "figure.chart-wrap svg.chart")
    assert len(chart.select("rect.bar")) == 30
    assert one(chart.select("rect.bar")[-1], "title").get_text().endswith(format_usd(today))


async def test_requests_log_filters_and_pages(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    assert await _send(dashboard, key, 52, **{"x-claude-code-session-id": "sess-1"}) == \
        [200] * 52
    assert await _send(dashboard, key, 1, **{"x-mock-status": "529"}) == [529]
    await dashboard.roll_up()
    finance = await dashboard.signed_in("finance")
    page = await finance.page("/admin/requests")
    assert len(page.select("#requests tbody tr")) == 50
    assert "Page 1 of 2" in one(page, ".pager").get_text()
    older = attr(one(page, ".pager a[rel=next]"), "href")
    page = await finance.page(older)
    assert len(page.select("#requests tbody tr")) == 3
    page = await finance.page("/admin/requests?status=error")
    rows = page.select("#requests tbody tr")
    assert len(rows) == 1 and "529" in rows[0].get_text()
    page = await finance.page("/admin/requests?session=sess-1&status=ok")
    assert "(52 match)" in one(page, ".page-head").get_text()
    page = await finance.page("/admin/requests?model=claude-opus-4-8")
    assert "No request matches" in one(page, ".empty").get_text()


async def test_report_csv_totals_match_the_page(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    ada = await gw.developer("Ada", "platform")
    bob = await gw.developer("Bob", "mobile")
    await _send(dashboard, ada, 3)
    await _send(dashboard, bob, 2)
    await dashboard.roll_up()
    finance = await dashboard.signed_in("finance")
    page = await finance.page("/admin/reports?dimension=developer&grain=day")
    total = int(attr(one(page, "#report-total"), "data-micros"))
    shown = one(page, "#report-total").get_text(strip=True)
    assert len(page.select("#report tbody tr")) == 2
    status, text = await finance.get(attr(one(page, "#download-csv"), "href"))
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["name"] for r in rows) == ["Ada", "Bob"]
    assert sum(int(r["cost_micros"]) for r in rows) == total
    assert format_usd(sum(int(r["cost_micros"]) for r in rows)) == shown
    status, body = await finance.get(attr(one(page, "#download-parquet"), "href"))
    assert status == 200 and body.startswith("PAR1")


async def test_report_by_project_shows_each_project_and_the_untagged_rest(
        dashboard: Dashboard) -> None:
    key = await dashboard.gateway.developer("Ada", "platform")
    for tags in ({"project": "apollo"}, {"project": "apollo"}, {"project": "zephyr"}, None):
        body = {**MESSAGE, **({"tags": tags} if tags else {})}
        async with dashboard.client.post("/v1/messages", json=body,
                                         headers={"x-api-key": key}) as r:
            assert r.status == 200
    await dashboard.roll_up()
    finance = await dashboard.signed_in("finance")
    page = await finance.page("/admin/reports?dimension=project&grain=month")
    # The pivot: the project, a cell per period, then requests and the total.
    rows = {tr.select("td")[0].get_text(strip=True): tr.select("td")[-2].get_text(strip=True)
            for tr in page.select("#report tbody tr")}
    assert rows == {"apollo": "2", "zephyr": "1", "(no project)": "1"}
    status, text = await finance.get(attr(one(page, "#download-csv"), "href"))
    assert status == 200
    costs = {r["name"]: int(r["cost_micros"]) for r in csv.DictReader(io.StringIO(text))}
    assert costs["apollo"] == 2 * costs["zephyr"] == 2 * costs["(no project)"] > 0
    assert sum(costs.values()) == int(attr(one(page, "#report-total"), "data-micros"))


async def test_rollout_page_generates_managed_settings(dashboard: Dashboard) -> None:
    developer = await dashboard.signed_in("developer")
    page = await developer.page("/admin/rollout")
    managed = orjson.loads(one(page, "#managed-settings").get_text())
    proxy_url = dashboard.gateway.admin.proxy_url
    assert managed == {"env": {"ANTHROPIC_BASE_URL": proxy_url, "CLAUDE_CODE_USE_GATEWAY": "1"},
                       "apiKeyHelper": "/usr/local/bin/meterd-key"}
    assert one(page, "#proxy-url").get_text() == proxy_url
    assert "meterd doctor" in page.get_text()
    status, text = await developer.get("/admin/rollout/managed-settings.json")
    assert status == 200 and orjson.loads(text) == managed


async def test_rollout_page_shows_the_login_settings_next_to_the_static_key_ones(
        start_dashboard: Callable[..., Awaitable[Dashboard]]) -> None:
    dashboard = await start_dashboard(public_url="http://gw.example.com:8080")
    finance = await dashboard.signed_in("finance")
    page = await finance.page("/admin/rollout")
    login = orjson.loads(one(page, "#managed-login #managed-settings-login").get_text())
    # The keys and value Claude Code's /login reads from managed settings (2.1.332).
    assert login == {"forceLoginMethod": "gateway",
                     "forceLoginGatewayUrl": "http://gw.example.com:8080",
                     "env": SIGNED_IN_TELEMETRY}
    static = orjson.loads(one(page, "#managed-key #managed-settings").get_text())
    assert static["env"] == {"ANTHROPIC_BASE_URL": "http://gw.example.com:8080",
                             "CLAUDE_CODE_USE_GATEWAY": "1"}
    # No identity provider here: the page says so beside the file.
    assert "oidc_issuer" in one(page, "#managed-login .flash-error").get_text()
    status, text = await finance.get(attr(one(page, "#managed-login a[download]"), "href"))
    assert status == 200 and orjson.loads(text) == login
    status, text = await finance.get(attr(one(page, "#managed-key a[download]"), "href"))
    assert status == 200 and orjson.loads(text) == static
    assert (await finance.get("/admin/rollout/managed-settings.json?variant=nope"))[0] == 400


async def test_rollout_page_points_static_key_telemetry_at_the_gateway(
        dashboard: Dashboard) -> None:
    page = await (await dashboard.signed_in("developer")).page("/admin/rollout")
    telemetry = orjson.loads(one(page, "#telemetry-settings").get_text())
    assert telemetry["env"] == {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": dashboard.gateway.admin.proxy_url}
    helper = one(page, "#otel-helper").get_text()
    assert telemetry["otelHeadersHelper"] in helper and "/usr/local/bin/meterd-key" in helper


async def test_settings_page_lists_prices_and_policies(dashboard: Dashboard) -> None:
    finance = await dashboard.signed_in("finance")
    page = await finance.page("/admin/settings")
    rows = {one(tr, "td code").get_text(): [td.get_text(strip=True)
                                                 for td in tr.select("td.num")]
            for tr in page.select("#prices tbody tr")}
    assert rows["claude-sonnet-4-6"][:2] == ["$3.00", "$15.00"]
    assert one(page, "#outage-policy").get_text() == "fail_open"
    assert one(page, "#upstream-url").get_text() == dashboard.gateway.upstream.url


async def test_account_created_with_generated_password_can_sign_in(
        dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    await admin.page("/admin/access")
    status, text, _ = await admin.post("/admin/access/users", {"name": "fiona",
                                                                "role": "finance"})
    assert status == 201
    password = one(parse(text), "#new-password").get_text(strip=True)
    fiona = dashboard.browser()
    assert await fiona.sign_in("fiona", password) == 303
    page = await fiona.page("/admin/")
    assert one(page, ".who .badge").get_text() == "finance"


async def test_admin_key_made_in_the_browser_works_on_the_api(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    await admin.page("/admin/access")
    status, text, _ = await admin.post("/admin/access/keys", {"role": "ro", "label": "bi"})
    assert status == 201
    secret = one(parse(text), "#new-admin-key").get_text(strip=True)
    async with dashboard.client.get("/admin/api/v1/teams",
                                    headers={"Authorization": f"Bearer {secret}"}) as r:
        assert r.status == 200
    page = await admin.page("/admin/access")
    assert secret not in str(page)
    keys = await dashboard.gateway.admin.db(
        Accounts(dashboard.gateway.admin.catalog).admin_keys)
    assert [(k["role"], k["label"]) for k in keys] == [("ro", "bi")]


async def test_audit_page_shows_who_changed_what(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    await admin.page("/admin/teams")
    await admin.post("/admin/teams", {"name": "research"})
    page = await admin.page("/admin/audit")
    first = one(page, "#audit tbody tr")
    cells = [td.get_text(" ", strip=True) for td in first.select("td")]
    assert cells[1].startswith("admin") and cells[2] == "team.create"
    assert "name research" in cells[4]


async def test_developer_self_service_page(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    await gw.change(gw.admin.catalog.set_budget, "team_member", "platform", "daily",
                    parse_usd("10"))
    await _send(dashboard, key, 2)
    await dashboard.roll_up()
    me = dashboard.browser()
    assert await me.sign_in_key(key) == 303
    page = await me.page("/admin/me")
    caps = [td.get_text(strip=True) for td in page.select("#caps-table tbody td")]
    assert caps[:3] == ["Each member of platform", "daily", "$10.00"]
    assert len(page.select("#recent-requests tbody tr")) == 2
    assert "this session" in one(page, "#keys").get_text()
    assert [a.get_text() for a in page.select("nav.nav a")] == ["My usage", "Rollout"]


async def _nav(browser: Browser) -> list[str]:
    page = await browser.page("/admin/rollout")
    return [a.get_text() for a in page.select("nav.nav a")]


async def test_navigation_matches_the_role(dashboard: Dashboard) -> None:
    anonymous = dashboard.browser()
    status, text = await anonymous.get("/admin/signin")
    assert status == 200 and parse(text).select("nav.nav a") == []
    # No account yet: the sign-in page says how to make the first admin.
    assert "meterd user create NAME --role admin" in one(parse(text), ".hint").get_text()
    finance = await dashboard.signed_in("finance")
    assert "Access" in await _nav(finance) and "My usage" not in await _nav(finance)
    status, text = await anonymous.get("/admin/signin")
    assert "meterd user create" not in parse(text).get_text()


async def test_every_form_that_posts_carries_the_csrf_token(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    await gw.developer("Ada", "platform")
    await gw.change(gw.admin.catalog.set_budget, "team", "platform", "monthly", 10**9)
    team = await _team_id(dashboard)
    dev = (await gw.admin.db(gw.admin.catalog.developers))[0]["id"]
    admin = await dashboard.signed_in("admin")
    await dashboard.admin_key("ro")
    forms = 0
    for path in ("/admin/", "/admin/teams", f"/admin/teams/{team}", "/admin/developers",
                 f"/admin/developers/{dev}", "/admin/access", "/admin/signin"):
        page = await admin.page(path)
        for form in page.select("form[method=post]"):
            token = form.select_one("input[name=csrf]")
            assert token is not None and attr(token, "value") == admin.csrf, (path, form)
            forms += 1
    assert forms > 15


async def test_a_bug_on_a_page_is_the_error_page_with_a_request_id_and_nothing_internal(
        dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    admin = await dashboard.signed_in("admin")
    break_teams(monkeypatch, RuntimeError("duckdb: /var/lib/meterd/meterd.duckdb is locked"))
    async with admin.session.get("/admin/teams") as r:
        assert (r.status, r.content_type) == (500, "text/html")
        request_id = r.headers["request-id"]
        html = await r.text()
    page = parse(html)
    assert one(page, "h1").get_text(strip=True) == "Something went wrong"
    assert one(page, ".status-code").get_text(strip=True) == "500"
    assert one(page, ".request-id").get_text(strip=True) == request_id
    assert one(page, ".who-name").get_text(strip=True).startswith("admin")  # still signed in
    for internal in ("duckdb", "RuntimeError", "Traceback", "teams.py"):
        assert internal not in html
    assert logged_error(caplog, request_id) is RuntimeError
