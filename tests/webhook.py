"""A loopback receiver of apprise's json:// posts, for the alert tests (a plugin: list it in a
test module's `pytest_plugins`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


@pytest.fixture
async def webhook(aiohttp_server: Any) -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    """The server (POST /hook) and the JSON bodies it received, in order."""
    got: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_post("/hook", receive)
    yield await aiohttp_server(app), got
