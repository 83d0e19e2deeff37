"""The settings page's reload button reaches the proxies through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import Upstream
from tests.dashboard_fixtures import *  # noqa: F403 - its fixtures
from tests.dashboard_fixtures import Dashboard
from tests.fakes.gateways import anthropic_provider


async def test_reload_button_makes_every_proxy_reload_its_providers_within_a_second(
        start_dashboard: Callable[..., Awaitable[Dashboard]], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    dash = await start_dashboard(providers={"anthropic": anthropic_provider(upstream,
                                                                             monkeypatch)})
    proxy = dash.gateway.proxy
    await asyncio.sleep(0.2)  # the proxy has read the reload counter once
    before = proxy.router
    assert before is not None
    admin = await dash.signed_in("admin")
    status, _, _ = await admin.post("/admin/settings/reload-providers")
    assert status == 303
    asked = time.monotonic()
    while proxy.router is before:
        assert time.monotonic() - asked < 1.0, "the proxy did not reload within a second"
        await asyncio.sleep(0.02)
    audit = await dash.gateway.admin.db(dash.gateway.admin.catalog.audit)
    assert audit[0]["action"] == "providers.reload"
    assert audit[0]["actor"].startswith("admin")  # the signed-in account
