"""Fixtures for single sign-on tests: the test identity provider on loopback, and a gateway
that signs developers in through it (load with `pytest_plugins = ("tests.sso_fixtures",)`)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Gateway, need
from tests.fakes.idp import CLIENT_ID, CLIENT_SECRET, FakeIdP
from tests.sso import RULES, SSO

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
async def idp(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeIdP:
    """The provider, listening on loopback."""
    fake = FakeIdP()
    server = await aiohttp_server(fake.app())
    fake.issuer = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
def start_sso(start_gateway: Callable[..., Awaitable[Gateway]],
              idp: FakeIdP) -> Callable[..., Awaitable[SSO]]:
    async def start(**changes: Any) -> SSO:
        settings = {"oidc_issuer": idp.issuer, "oidc_client_id": CLIENT_ID,
                    "oidc_client_secret": CLIENT_SECRET, "oidc_allow_loopback": True,
                    "oidc_allowed_domains": ("example.com",), "oidc_group_rules": RULES,
                    **changes}
        return SSO(await start_gateway(**settings), idp)
    return start


@pytest.fixture
async def sso(start_sso: Callable[..., Awaitable[SSO]]) -> AsyncIterator[SSO]:
    yield await start_sso()


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Headless Chromium (skipped, or failed under CI, when missing)."""
    need(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install chromium)")
    need(importlib.util.find_spec("playwright") is not None,
         "playwright is not installed (pip install playwright)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()
