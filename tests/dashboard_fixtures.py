"""Fixtures for the dashboard tests: a gateway with the dashboard pages, accounts for each
role, and a browser-like client that keeps cookies and sends the CSRF token.

Import them into a test module with `from tests.dashboard_fixtures import *  # noqa: F403`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from bs4 import BeautifulSoup, Tag

from dashboard.accounts import Accounts, hash_password
from dashboard.appkeys import PAGES
from dashboard.site import setup_dashboard
from ledger.catalog import Catalog
from ledger.redis_client import connect_redis
from meterd.apps import ADMIN_APP, create_admin_app, create_proxy_app
from meterd.settings import Settings
from tests.conftest import Gateway, Upstream

PASSWORDS = {"admin": "correct horse battery", "finance": "finance reads everything"}
__all__ = ["Browser", "Dashboard", "attr", "dashboard", "one", "parse", "root_app",
           "start_dashboard"]


def parse(html: str) -> BeautifulSoup:
    return BeautifulSoup(html, "html.parser")


def one(node: Tag, css: str) -> Tag:
    """The element `css` selects, which must exist."""
    found = node.select_one(css)
    assert found is not None, f"nothing matches {css!r}"
    return found


def attr(node: Tag, name: str) -> str:
    value = node.get(name)
    assert isinstance(value, str), f"no attribute {name!r} on <{node.name}>"
    return value


class Browser:
    """A client with its own cookie jar, like one browser profile, that fills in the CSRF
    token of the page it is on."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.session = aiohttp.ClientSession(
            base_url=client.make_url(""), cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    def _remember(self, html: str) -> None:
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        if found:
            self.csrf = found.group(1)

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.session.get(path, allow_redirects=kw.pop("allow_redirects", False),
                                    **kw) as r:
            text = (await r.read()).decode("utf-8", "replace")
            if r.content_type == "text/html":
                self._remember(text)
            return r.status, text

    async def page(self, path: str) -> BeautifulSoup:
        status, text = await self.get(path, allow_redirects=True)
        assert status == 200, (path, status, text[:500])
        return parse(text)

    async def post(self, path: str, data: dict[str, Any] | None = None, csrf: bool = True,
                   follow: bool = False, **kw: Any) -> tuple[int, str, Any]:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        async with self.session.post(path, data=form, allow_redirects=follow, **kw) as r:
            text = await r.text()
            if r.content_type == "text/html":
                self._remember(text)
            return r.status, text, r.headers

    async def sign_in(self, name: str, password: str) -> int:
        await self.get("/admin/signin")
        status, _, _ = await self.post("/admin/signin", {"name": name, "password": password})
        await self.get("/admin/rollout")  # any page: pick up the new session's token
        return status

    async def sign_in_key(self, key: str) -> int:
        await self.get("/admin/signin")
        status, _, _ = await self.post("/admin/signin/key", {"key": key})
        await self.get("/admin/me")
        return status


@dataclass
class Dashboard:
    gateway: Gateway
    browsers: list[Browser]

    @property
    def client(self) -> TestClient[Any, Any]:
        return self.gateway.client

    def browser(self) -> Browser:
        b = Browser(self.gateway.client)
        self.browsers.append(b)
        return b

    async def account(self, name: str, role: str, password: str | None = None) -> str:
        password = password or PASSWORDS[role]
        accounts = Accounts(self.gateway.admin.catalog)
        await self.gateway.admin.db(accounts.create_user, name, "", role,
                                    password_hash=hash_password(password))
        return password

    async def admin_key(self, role: str, label: str = "") -> str:
        """A fresh admin API key: role rw or ro."""
        accounts = Accounts(self.gateway.admin.catalog)
        _, secret = await self.gateway.admin.db(accounts.issue_admin_key, role, label)
        return str(secret)

    async def roll_up(self) -> None:
        """Settle what the proxy has in flight and move the usage events into DuckDB with the
        app's own rollup (the one its scheduler runs)."""
        gw = self.gateway
        await gw.proxy.drain()
        rollup = gw.admin.rollup
        assert rollup is not None
        await rollup.run_once()
        assert await gw.events() == [], "usage events were not rolled up"

    async def signed_in(self, role: str) -> Browser:
        """A browser signed in as `role` (admin, finance, or developer with a fresh key)."""
        browser = self.browser()
        if role == "developer":
            key = await self.gateway.developer(f"Dev {len(self.browsers)}", "platform")
            assert await browser.sign_in_key(key) == 303
        elif role != "anonymous":
            name = f"{role}{len(self.browsers)}"
            await self.account(name, role)
            assert await browser.sign_in(name, PASSWORDS[role]) == 303
        else:
            await browser.get("/admin/signin")
        return browser


def break_teams(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """A bug in the admin app: reading the teams raises `error` (until monkeypatch undoes)."""
    def bug(self: Catalog, *args: Any) -> Any:
        raise error
    monkeypatch.setattr(Catalog, "teams", bug)


def logged_error(caplog: pytest.LogCaptureFixture, request_id: str) -> type[BaseException]:
    """The type of the exception logged, with its traceback, under one request id."""
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is not None
    return record.exc_info[0]


def root_app(settings: Settings) -> web.Application:
    """What create_root_app builds, with the dashboard pages set up on the admin app if the
    factory does not do it (yet): they must be added before the app is mounted."""
    app = create_proxy_app(settings)
    admin = create_admin_app(settings)
    if not admin.get(PAGES, False):
        setup_dashboard(admin, settings)
    app[ADMIN_APP] = admin
    app.add_subapp("/admin", admin)
    return app


@pytest.fixture
async def start_dashboard(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    upstream: Upstream, make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Dashboard]]]:
    made: list[Dashboard] = []

    async def start(**changes: Any) -> Dashboard:
        settings = make_settings(**{"upstream_url": upstream.url, **changes})
        fresh = connect_redis(settings.redis_url)
        await fresh.flushdb()
        await fresh.aclose()
        app = root_app(settings)
        client = await aiohttp_client(app)
        dash = Dashboard(Gateway(client, app, upstream), [])
        made.append(dash)
        return dash

    yield start
    for dash in made:
        for b in dash.browsers:
            await b.close()


@pytest.fixture
async def dashboard(start_dashboard: Callable[..., Awaitable[Dashboard]]) -> AsyncIterator[
        Dashboard]:
    yield await start_dashboard()
