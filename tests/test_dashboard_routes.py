"""The route table: every route of the admin app, called by every role, gets the status it
should; finance, and a team lead of another team, change nothing; a team lead changes only its
own team's members.

The expectations are written out here, not derived from the handlers' @allow declarations, so
a handler that declares the wrong roles fails this test. A route added to the app without a row
here fails it too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.accounts import Accounts, hash_password
from dashboard.routes import API_ROUTES, PAGE_ROUTES
from ledger import grants
from ledger.alerts import Destinations
from ledger.increases import Increases
from ledger.managed import ManagedSettings
from ledger.model_caps import ModelCaps
from ledger.models_allowed import AllowedModels
from ledger.money import parse_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Browser, Dashboard
from tests.request_rows import insert_request

# team_lead leads the seeded team (the one every {team} and {dev} below belongs to);
# lead_other is a team lead of another team.
ROLES = ("anonymous", "developer", "team_lead", "lead_other", "finance", "admin")
TOMORROW = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()


def read(admin: int = 200, finance: int = 200) -> dict[str, int]:
    """A page finance and admins may read: anonymous goes to sign in, a developer and team
    leads are refused."""
    return {"anonymous": 303, "developer": 403, "team_lead": 403, "lead_other": 403,
            "finance": finance, "admin": admin}


def team_read() -> dict[str, int]:
    """A page of the seeded team: its lead reads it too, the lead of another team may not."""
    return {**read(), "team_lead": 200}


def change(admin: int = 303) -> dict[str, int]:
    """A form only an admin may submit."""
    return {"anonymous": 303, "developer": 403, "team_lead": 403, "lead_other": 403,
            "finance": 403, "admin": admin}


def team_change(admin: int = 303) -> dict[str, int]:
    """A form about the seeded team's members: an admin or that team's lead."""
    return {**change(admin), "team_lead": admin}


def api_read() -> dict[str, int]:
    """The JSON API takes admin API keys only: a session of any kind is no credential."""
    return {"anonymous": 401, "developer": 401, "team_lead": 401, "lead_other": 401,
            "finance": 200, "admin": 200}


def api_change(admin: int = 200) -> dict[str, int]:
    return {**api_read(), "finance": 403, "admin": admin}


EVERYONE_SIGNIN = {**dict.fromkeys(ROLES, 303), "anonymous": 200}
ROLLOUT = {**dict.fromkeys(ROLES, 200), "anonymous": 303}
SELF = {**dict.fromkeys(ROLES, 403), "anonymous": 303, "developer": 200}
ADMIN_ONLY = {**dict.fromkeys(ROLES, 403), "anonymous": 303, "admin": 200}
# This dashboard has no identity provider configured: the SSO routes answer 404 to all.
NO_SSO = dict.fromkeys(ROLES, 404)

# route name → (path with {ids} from the seed, form or JSON body, expected status per role)
PAGES: dict[str, tuple[str, dict[str, Any] | None, dict[str, int]]] = {
    "overview": ("/", None, read()),
    "signin": ("/signin", None, EVERYONE_SIGNIN),
    "signin_account": ("/signin", {"name": "nobody-{role}", "password": "not the password"},
                       dict.fromkeys(ROLES, 401)),
    "signin_key": ("/signin/key", {"key": "mtd_not-a-key"}, dict.fromkeys(ROLES, 401)),
    "signin_sso": ("/signin/sso", {}, NO_SSO),
    "signin_sso_callback": ("/signin/sso/callback?state=x&code=y", None, NO_SSO),
    "me": ("/me", None, SELF),
    "ask_increase": ("/me/increase", {"amount": "25", "period": "monthly", "days": "7",
                                      "reason": "a migration"}, {**SELF, "developer": 303}),
    # A lead of any team has the page, showing its own team's requests only.
    "increases": ("/increases", None, {**team_read(), "lead_other": 200}),
    "approve_increase": ("/increases/{increase_approve}/approve", {"amount": "25", "days": "7"},
                         team_change()),
    "deny_increase": ("/increases/{increase_deny}/deny", {"reason": "not this month"},
                      team_change()),
    "alerts": ("/alerts", None, read()),
    "add_alert_destination": ("/alerts/destinations", {
        "label": "hook", "url": "json://127.0.0.1:9/hook", "events": "blocked"}, change()),
    "set_alert_thresholds": ("/alerts/thresholds", {"budget": "{budget_read}",
                                                    "thresholds": "50, 80"}, change()),
    "remove_alert_destination": ("/alerts/destinations/{dest_remove}/delete", {}, change()),
    "test_alert_destination": ("/alerts/destinations/{dest_test}/test", {}, change()),
    "me_csv": ("/me/usage.csv", None, SELF),
    # Another developer's key: refused with the form's error message (a redirect back), and
    # the snapshot below shows nothing changed; its own key: test_reports_browser.py.
    "revoke_own_key": ("/me/keys/{key_html}/revoke", {}, {**SELF, "developer": 303}),
    "teams": ("/teams", None, read()),
    "create_team": ("/teams", {"name": "made-by-admin"}, change()),
    "team": ("/teams/{team}", None, team_read()),
    # The per-member cap (a lead may set it; the pool only an admin: test_dashboard_sso.py).
    "set_team_budget": ("/teams/{team}/budget",
                        {"scope": "team_member", "period": "monthly", "amount": "500"},
                        team_change()),
    "set_team_limits": ("/teams/{team}/limits", {"rpm": "60"}, change()),
    "set_team_models": ("/teams/{team}/models", {"models": "claude-haiku-*"}, change()),
    "clear_team_models": ("/teams/{team}/models/clear", {}, change()),
    "set_org_budget": ("/org/budget", {"period": "monthly", "amount": "10000"}, change()),
    "set_org_models": ("/org/models", {"models": "claude-sonnet-4-6"}, change()),
    "clear_org_models": ("/org/models/clear", {}, change()),
    "delete_budget": ("/budgets/{budget_html}/delete", {}, team_change()),
    "developers": ("/developers", None, read()),
    "create_developer": ("/developers", {"name": "New Dev", "email": "new.dev@example.com",
                                         "team": "{team}"}, change()),
    "developer": ("/developers/{dev}", None, team_read()),
    "issue_key": ("/developers/{dev}/keys", {"expires": ""}, team_change()),
    # A token that holds no secret: who may ask is redirected to the developer's page.
    "key_issued": ("/developers/{dev}/keys/issued/not-a-token", None, team_change()),
    "set_developer_budget": ("/developers/{dev}/budget", {"amount": "50"}, team_change()),
    "grant_to_developer": ("/developers/{dev}/grant", {"amount": "5", "until": TOMORROW,
                                                       "reason": "on call"}, change()),
    "set_developer_model_cap": ("/developers/{dev}/model_caps", {
        "models": "opus", "amount": "50", "period": "monthly", "mode": "strict"}, change()),
    "set_team_model_cap": ("/teams/{team}/model_caps", {
        "models": "opus", "amount": "50", "scope": "team_member"}, change()),
    "set_org_model_cap": ("/org/model_caps", {"models": "claude-haiku-*", "amount": "500"},
                          change()),
    "delete_model_cap": ("/model_caps/{model_budget_html}/delete", {}, change()),
    "revoke_grant_form": ("/grants/{grant_html}/revoke", {}, change()),
    "set_developer_limits": ("/developers/{dev}/limits", {"concurrency": "3"},
                             team_change()),
    "set_developer_disabled": ("/developers/{dev_life}/disabled", {"disabled": "1"},
                               change()),
    "move_developer": ("/developers/{dev_move}/move", {"team": "{team_other}"}, change()),
    "rename_developer": ("/developers/{dev_life}/rename", {"name": "Renamed Dev"}, change()),
    "delete_developer": ("/developers/{dev_delete}/delete", {}, change()),
    "rename_team": ("/teams/{team_life}/rename", {"name": "renamed-team"}, change()),
    "delete_team": ("/teams/{team_delete}/delete", {}, change()),
    "revoke_key": ("/keys/{key_html}/revoke", {}, team_change()),
    "expire_key": ("/keys/{key_expire}/expire", {"expires": TOMORROW}, team_change()),
    # A lead of any team has the log, showing its own team's requests only.
    "requests": ("/requests", None, {**team_read(), "lead_other": 200}),
    # Of the seeded team (without ?team=, a lead gets its own team's: test_dashboard_sso.py).
    "reports": ("/reports?team={team}", None, team_read()),
    "reports_csv": ("/reports.csv?team={team}", None, team_read()),
    "reports_parquet": ("/reports.parquet", None, read()),
    "statement": ("/reports/statement", None, read()),
    "forecasts": ("/forecasts", None, read()),
    "statement_csv": ("/reports/statement.csv", None, read()),
    "requests_csv": ("/requests.csv?team={team}", None, team_read()),
    # A session of the seeded team's developer: another developer's is a 404 to a developer.
    "session": ("/sessions/sess-route", None, {**team_read(), "developer": 404}),
    "bought": ("/bought", None, read()),
    "bought_csv": ("/bought.csv", None, read()),
    "rollout": ("/rollout", None, ROLLOUT),
    "managed_settings": ("/rollout/managed-settings.json", None, ROLLOUT),
    "managed": ("/managed", None, ADMIN_ONLY),
    "managed_edit": ("/managed/{team}", None, ADMIN_ONLY),
    "managed_preview": ("/managed/org/preview", {"settings": '{{"env": {{"A": "1"}}}}'},
                        change(200)),
    # Saved over exactly what the seed saved (its checksum): an admin's save goes through.
    "managed_save": ("/managed/org", {"settings": '{{"env": {{"A": "1"}}}}',
                                      "base": "{org_checksum}"}, change()),
    "managed_delete": ("/managed/{team_managed}/delete", {}, change()),
    "settings": ("/settings", None, read()),
    "reload_providers": ("/settings/reload-providers", {}, change()),
    "audit": ("/audit", None, read()),
    # An entry that removed no cap: an admin goes back with the error (a form's way);
    # test_refusals_browser.py undoes a real one.
    "undo_budget_delete": ("/audit/999999/undo", {}, change()),
    "access": ("/access", None, read()),
    "create_user": ("/access/users", {"name": "new-finance", "role": "finance",
                                      "password": "a long enough password"}, change()),
    "reset_password": ("/access/users/victim1/password", {}, change(200)),
    "set_user_disabled": ("/access/users/victim2/disabled", {"disabled": "1"}, change()),
    "create_admin_key": ("/access/keys", {"role": "ro", "label": "made in the browser"},
                         change(201)),
    "revoke_admin_key": ("/access/keys/{admin_key_html}/revoke", {}, change()),
    "signout": ("/signout", {}, dict.fromkeys(ROLES, 303)),
}

V1 = "/api/v1"
APIS: dict[str, tuple[str, dict[str, Any] | None, dict[str, int]]] = {
    "api.teams": (f"{V1}/teams", None, api_read()),
    "api.create_team": (f"{V1}/teams", {"name": "made-by-api"}, api_change(201)),
    "api.developers": (f"{V1}/developers", None, api_read()),
    "api.create_developer": (f"{V1}/developers", {"name": "API Dev", "email": "api.dev@example.com",
                                                   "team": "{team}"}, api_change(201)),
    "api.disable_developer": (f"{V1}/developers/{{dev_life}}/disable", {}, api_change()),
    "api.enable_developer": (f"{V1}/developers/{{dev_life}}/enable", {}, api_change()),
    "api.move_developer": (f"{V1}/developers/{{dev_move_api}}/move", {"team": "{team_other}"},
                           api_change()),
    "api.memberships": (f"{V1}/developers/{{dev}}/memberships", None, api_read()),
    "api.update_developer": (f"{V1}/developers/{{dev_life}}", {"name": "API Renamed"},
                             api_change()),
    "api.delete_developer": (f"{V1}/developers/{{dev_delete_api}}", None, api_change()),
    "api.update_team": (f"{V1}/teams/{{team_life}}", {"name": "api-renamed-team"},
                        api_change()),
    "api.delete_team": (f"{V1}/teams/{{team_delete_api}}", None, api_change()),
    "api.keys": (f"{V1}/keys", None, api_read()),
    "api.issue_key": (f"{V1}/keys", {"developer": "{dev}"}, api_change(201)),
    "api.revoke_key": (f"{V1}/keys/{{key_api}}/revoke", {}, api_change()),
    "api.expire_key": (f"{V1}/keys/{{key_expire}}/expire", {"expires_at": TOMORROW},
                       api_change()),
    "api.budgets": (f"{V1}/budgets", None, api_read()),
    "api.set_budget": (f"{V1}/budgets", {"scope": "developer", "target": "{dev}",
                                         "period": "weekly", "amount_usd": "20"},
                       api_change(201)),
    "api.delete_budget": (f"{V1}/budgets/{{budget_api}}", None, api_change()),
    "api.grants": (f"{V1}/grants", None, api_read()),
    "api.create_grant": (f"{V1}/grants", {"scope": "team", "target": "{team}", "reason": "x",
                                          "amount_usd": "5", "expires_at": TOMORROW},
                         api_change(201)),
    "api.revoke_grant": (f"{V1}/grants/{{grant_api}}/revoke", {}, api_change()),
    "api.alert_destinations": (f"{V1}/alerts/destinations", None, api_read()),
    "api.add_alert_destination": (f"{V1}/alerts/destinations", {
        "label": "api hook", "url": "json://127.0.0.1:9/hook", "events": ["blocked"]},
        api_change(201)),
    "api.remove_alert_destination": (f"{V1}/alerts/destinations/{{dest_remove_api}}", None,
                                     api_change()),
    "api.test_alert_destination": (f"{V1}/alerts/destinations/{{dest_test}}/test", {},
                                   api_change()),
    "api.alert_log": (f"{V1}/alerts/log", None, api_read()),
    "api.increases": (f"{V1}/increases", None, api_read()),
    # A developer asks with their own gateway key; no admin key is a developer.
    "api.ask_increase": (f"{V1}/increases", {"amount_usd": "25", "days": 7,
                                             "reason": "from the API"},
                         {**api_read(), "developer": 201, "finance": 403, "admin": 403}),
    "api.approve_increase": (f"{V1}/increases/{{increase_approve_api}}/approve",
                             {"amount_usd": "25", "days": 7}, api_change()),
    "api.deny_increase": (f"{V1}/increases/{{increase_deny_api}}/deny", {"reason": "no"},
                          api_change()),
    "api.model_budgets": (f"{V1}/model_budgets", None, api_read()),
    "api.set_model_budget": (f"{V1}/model_budgets", {
        "scope": "team", "target": "{team}", "period": "daily", "models": ["opus"],
        "amount_usd": "5", "mode": "strict"}, api_change(201)),
    "api.delete_model_budget": (f"{V1}/model_budgets/{{model_budget_api}}", None,
                                api_change()),
    "api.rate_limits": (f"{V1}/rate_limits", None, api_read()),
    "api.set_limits": (f"{V1}/rate_limits", {"scope": "team", "target": "{team}", "rpm": 100},
                       api_change()),
    "api.audit": (f"{V1}/audit", None, api_read()),
    "api.users": (f"{V1}/users", None, api_read()),
    "api.create_user": (f"{V1}/users", {"name": "api-finance", "role": "finance",
                                        "password": "another long password"}, api_change(201)),
    "api.set_password": (f"{V1}/users/victim3/password",
                         {"password": "a brand new password"}, api_change()),
    "api.disable_user": (f"{V1}/users/victim4/disable", {}, api_change()),
    "api.enable_user": (f"{V1}/users/victim5/enable", {}, api_change()),
    "api.admin_keys": (f"{V1}/admin_keys", None, api_read()),
    "api.issue_admin_key": (f"{V1}/admin_keys", {"role": "ro"}, api_change(201)),
    "api.revoke_admin_key": (f"{V1}/admin_keys/{{admin_key_api}}/revoke", {}, api_change()),
    "api.usage": (f"{V1}/usage", None, api_read()),
    "api.usage_totals": (f"{V1}/usage/totals", None, api_read()),
    "api.usage_top": (f"{V1}/usage/top", None, api_read()),
    "api.usage_cache": (f"{V1}/usage/cache", None, api_read()),
    "api.usage_forecast": (f"{V1}/usage/forecast", None, api_read()),
    "api.requests": (f"{V1}/requests", None, api_read()),
    "api.requests_parquet": (f"{V1}/requests.parquet", None, api_read()),
    "api.bought": (f"{V1}/bought", None, api_read()),
    "api.bought_reconciliation": (f"{V1}/bought/reconciliation", None, api_read()),
    "api.managed_settings": (f"{V1}/managed_settings", None, api_read()),
    "api.managed_setting": (f"{V1}/managed_settings/org", None, api_read()),
    "api.put_managed_setting": (f"{V1}/managed_settings/org", {"env": {"A": "1"}},
                                api_change()),
    "api.delete_managed_setting": (f"{V1}/managed_settings/{{team}}", None, api_change()),
    "api.preview_managed_setting": (f"{V1}/managed_settings/org/preview", {"env": {}},
                                    api_change()),
    "api.allowed_models": (f"{V1}/allowed_models", None, api_read()),
    "api.put_allowed_models": (f"{V1}/allowed_models/org", {"models": ["claude-haiku-4-5"]},
                               api_change()),
    "api.delete_allowed_models": (f"{V1}/allowed_models/org", None, api_change()),
    "api.spend_limits": (f"{V1}/organizations/spend_limits", None, api_read()),
    "api.set_spend_limit": (f"{V1}/organizations/spend_limits", {
        "scope": {"type": "workspace", "workspace_id": "{team}"}, "amount": "12345",
        "period": "weekly"}, api_change()),
    "api.spend_limit": (f"{V1}/organizations/spend_limits/{{budget_read}}", None, api_read()),
    "api.delete_spend_limit": (f"{V1}/organizations/spend_limits/{{budget_limit}}", None,
                               api_change()),
}


async def _seed(dash: Dashboard) -> dict[str, str]:
    """Something for every route to act on; each destructive route gets its own target."""
    gw = dash.gateway
    catalog, accounts = gw.admin.catalog, Accounts(gw.admin.catalog)
    await gw.developer("Route Victim", "platform")
    team = (await gw.admin.db(catalog.teams))[0]["id"]
    dev = next(d["id"] for d in await gw.admin.db(catalog.developers) if d["name"] ==
               "Route Victim")
    ids = {"team": team, "dev": dev}
    for name in ("key_html", "key_api", "key_expire", "key_html_lead"):
        ids[name] = (await gw.admin.db(catalog.issue_key, dev)).id
    for name, (scope, ref, period) in {
            "budget_html": ("team", team, "monthly"), "budget_api": ("team", team, "weekly"),
            "budget_limit": ("team", team, "daily"),
            "budget_read": ("developer", dev, "monthly"),
            "budget_html_lead": ("developer", dev, "daily")}.items():
        ids[name] = (await gw.admin.db(catalog.set_budget, scope, ref, period,
                                       parse_usd("100")))["id"]
    for name, period in (("model_budget_api", "weekly"), ("model_budget_html", "daily")):
        ids[name] = (await gw.admin.db(
            ModelCaps(catalog).set, "org", "", period, ["haiku"], 1))["id"]
    for name in ("grant_api", "grant_html"):
        ids[name] = (await gw.admin.db(
            grants.create_grant, catalog, "org", "", 1, datetime.now(UTC) + timedelta(days=1),
            "seed", "a grant to revoke"))["id"]
    for n in range(1, 6):
        await gw.admin.db(accounts.create_user, f"victim{n}", "", "finance",
                          password_hash=hash_password("victim's password"))
    for name in ("admin_key_html", "admin_key_api"):
        row, _ = await gw.admin.db(accounts.issue_admin_key, "ro", name)
        ids[name] = row["id"]
    ids["team_managed"] = (await gw.admin.db(catalog.create_team, "managed-victim"))["id"]
    for name in ("team_other", "team_life", "team_delete", "team_delete_api"):
        ids[name] = (await gw.admin.db(catalog.create_team, f"victim-{name}"))["id"]
    for name in ("dev_life", "dev_move", "dev_move_api", "dev_delete", "dev_delete_api"):
        ids[name] = (await gw.admin.db(catalog.create_developer, name, f"{name}@example.com",
                                       team))["id"]
    await gw.admin.db(insert_request, catalog.conn, id="req-route", session_id="sess-route",
                      developer_id=dev, team_id=team, model="claude-sonnet-4-6")
    for scope in ("org", team, ids["team_managed"]):
        saved = await gw.admin.db(ManagedSettings(catalog).set, scope, {"env": {}})
    ids["org_checksum"] = saved["checksum"]  # the same document everywhere
    for scope in ("org", team):
        await gw.admin.db(AllowedModels(catalog).set, scope, ["claude-sonnet-4-6"])
    for name in ("increase_approve", "increase_approve_lead", "increase_deny",
                 "increase_deny_lead", "increase_approve_api", "increase_deny_api"):
        ids[name] = (await gw.admin.db(Increases(catalog).ask, dev, "monthly",
                                       parse_usd("25"), 7, "seed", actor="seed"))["id"]
    # Nothing listens on the discard port: a test to it fails fast, and is logged.
    for name in ("dest_remove", "dest_test", "dest_remove_api"):
        ids[name] = (await gw.admin.db(Destinations(catalog).add, "org", "", name,
                                       "json://127.0.0.1:9/hook", ["blocked"]))["id"]
    await gw.admin.publish()
    return ids


def _fill(value: Any, ids: dict[str, str], role: str) -> Any:
    if role == "team_lead":  # its own targets: the admin's would be used up, and a lead
        # may remove a member's cap where the admin's target is the team's pool
        ids = {**ids, "key_html": ids["key_html_lead"], "budget_html": ids["budget_html_lead"],
               "increase_approve": ids["increase_approve_lead"],
               "increase_deny": ids["increase_deny_lead"]}
    if isinstance(value, str):
        return value.format(role=role, **ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids, role) for k, v in value.items()}
    return value


async def _snapshot(dash: Dashboard) -> tuple[Any, ...]:
    """Everything an admin can change (and the audit trail of it)."""
    admin = dash.gateway.admin
    catalog, accounts = admin.catalog, Accounts(admin.catalog)
    return tuple([await admin.db(fn) for fn in (
        catalog.teams, catalog.developers, catalog.keys, catalog.budgets, catalog.rate_limits,
        accounts.users, accounts.admin_keys, AllowedModels(catalog).all,
        Destinations(catalog).shown, Destinations(catalog).thresholds,
        # A developer's own request (a new row, audited) is theirs to make; the seeded ones
        # stay undecided.
        lambda: [r for r in Increases(catalog).listing() if r["reason"] == "seed"],
        lambda: [a for a in catalog.audit(10_000) if a["action"] != "increase.request"])])


def test_every_route_has_a_row_in_this_table() -> None:
    named = {name for _, _, _, name in PAGE_ROUTES + API_ROUTES}
    assert named == set(PAGES) | set(APIS)


async def _call_page(browser: Browser, method: str, path: str, body: Any) -> tuple[int, Any]:
    if method == "GET":
        status, _ = await browser.get("/admin" + path)
        return status, None
    status, _, headers = await browser.post("/admin" + path, body)
    return status, headers


async def test_every_route_gives_each_role_the_expected_status(dashboard: Dashboard) -> None:
    ids = await _seed(dashboard)
    browsers = {role: await dashboard.signed_in(role) for role in ROLES}
    dev_key = await dashboard.gateway.developer("Key Holder", "platform")
    api_headers = {"anonymous": {}, "developer": {"Authorization": f"Bearer {dev_key}"},
                   "team_lead": {}, "lead_other": {},
                   "finance": {"x-api-key": await dashboard.admin_key("ro")},
                   "admin": {"Authorization": f"Bearer {await dashboard.admin_key('rw')}"}}
    methods = {name: method for method, _, _, name in PAGE_ROUTES + API_ROUTES}
    got: dict[tuple[str, str], int] = {}
    before = await _snapshot(dashboard)

    async def run(role: str) -> None:
        for name, (path, body, _) in PAGES.items():
            if name == "signout":
                continue  # last, or the role's session would end here
            got[(name, role)], _ = await _call_page(browsers[role], methods[name],
                                                    _fill(path, ids, role),
                                                    _fill(body, ids, role))
        for name, (path, body, _) in APIS.items():
            async with dashboard.client.request(
                    methods[name], "/admin" + _fill(path, ids, role),
                    json=_fill(body, ids, role) if body is not None else None,
                    headers=api_headers[role]) as r:
                got[(name, role)] = r.status

    for role in ("anonymous", "developer", "lead_other", "finance"):
        await run(role)
    # Nobody but an admin and the team's lead changed anything: not the catalog, not the
    # accounts, not the audit.
    assert await _snapshot(dashboard) == before
    await run("team_lead")
    audit = (await _snapshot(dashboard))[-1]
    by_lead = [a for a in audit if a not in before[-1]]
    assert by_lead and all(a["actor"].startswith("sso:lead") for a in by_lead)
    await run("admin")
    for role in ROLES:
        got[("signout", role)], _ = await _call_page(browsers[role], "POST", "/signout", {})

    expected = {(name, role): want[role] for table in (PAGES, APIS)
                for name, (_, _, want) in table.items() for role in ROLES}
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not wrong, f"(route, role): (got, expected): {wrong}"


@pytest.mark.parametrize("role", ROLES)
async def test_static_files_are_public(dashboard: Dashboard, role: str) -> None:
    browser = await dashboard.signed_in(role)
    status, text = await browser.get("/admin/static/app.css")
    assert status == 200 and ":root" in text
