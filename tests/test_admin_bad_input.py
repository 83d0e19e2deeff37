"""Requests meterd cannot read, on its admin side: `meterd admin` (the admin app alone, as
production runs it) and `meterd serve` answer them alike. The admin API answers in the
Anthropic error envelope, a dashboard page with the error page; neither is aiohttp's plain
text, nor a 500, nor an echo of what was refused."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from bs4 import BeautifulSoup

from dashboard.accounts import Accounts
from meterd.apps import create_root_app
from meterd.settings import Settings
from tests.conftest import Gateway, Upstream
from tests.test_proxy_input import error_of, raw

API = b"/admin/api/v1/teams"
PAGE = b"/admin/signin"  # takes a POST from anyone, and reads its form (the CSRF token)
TEAM = b'{"name": "platform"}'
FORM = b"csrf=x&name=ada&password=y"


@pytest.fixture(params=["meterd admin", "meterd serve"])
async def served(request: pytest.FixtureRequest,
                 aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
                 start_gateway: Callable[..., Awaitable[Gateway]], upstream: Upstream,
                 make_settings: Callable[..., Settings]) -> Gateway:
    if request.param == "meterd serve":
        return await start_gateway()
    app = create_root_app(make_settings(upstream_url=upstream.url), proxy=False)
    return Gateway(await aiohttp_client(app), app, upstream)


async def admin_key(gw: Gateway) -> bytes:
    _, secret = await gw.admin.db(Accounts(gw.admin.catalog).issue_admin_key, "rw", "")
    return str(secret).encode()


def page_status(headers: dict[str, str], payload: bytes) -> str:
    """The status the error page shows ("" when the answer is not the error page)."""
    if not headers["content-type"].startswith("text/html"):
        return ""
    code = BeautifulSoup(payload, "html.parser").select_one(".error-card .status-code")
    return code.get_text(strip=True) if code else ""


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_a_body_that_is_not_what_its_encoding_says_is_a_400(
        served: Gateway, encoding: bytes) -> None:
    key = await admin_key(served)
    status, headers, payload = await raw(
        served, [b"x-api-key: " + key, b"content-type: application/json",
                 b"content-encoding: " + encoding], TEAM, API)
    assert status == 400 and headers["content-type"].startswith("application/json"), payload
    assert "cannot be read" in error_of(payload)["message"]
    assert await served.admin.db(served.admin.catalog.teams) == []

    status, headers, payload = await raw(
        served, [b"content-type: application/x-www-form-urlencoded",
                 b"content-encoding: " + encoding], FORM, PAGE)
    assert (status, page_status(headers, payload)) == (400, "400"), payload


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize("encoding", [b"br", b"zstd", b"compress"])
async def test_a_body_in_an_encoding_meterd_does_not_take_is_a_400(
        served: Gateway, encoding: bytes) -> None:
    key = await admin_key(served)
    status, headers, payload = await raw(
        served, [b"x-api-key: " + key, b"content-type: application/json",
                 b"content-encoding: " + encoding], gzip.compress(TEAM), API)
    assert status == 400 and headers["content-type"].startswith("application/json"), payload
    assert "content-encoding is not supported" in error_of(payload)["message"]

    status, headers, payload = await raw(
        served, [b"content-type: application/x-www-form-urlencoded",
                 b"content-encoding: " + encoding], gzip.compress(FORM), PAGE)
    assert (status, page_status(headers, payload)) == (400, "400"), payload
    assert b"content-encoding is not supported" in payload


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_an_over_long_header_is_a_431_that_echoes_nothing(served: Gateway) -> None:
    key = await admin_key(served)
    long_key = key + b"x" * 9000  # a pasted key run on: it must not come back, even in part
    status, headers, payload = await raw(served, [b"x-api-key: " + long_key], TEAM, API)
    assert status == 431 and headers["content-type"].startswith("application/json"), payload
    assert error_of(payload)["type"] == "invalid_request_error"
    assert key not in payload

    cookie = b"meterd_session=" + key + b"y" * 9000  # a browser's cookies past the limit
    status, headers, payload = await raw(served, [b"cookie: " + cookie], FORM, PAGE)
    assert (status, page_status(headers, payload)) == (431, "431"), payload
    assert key not in payload and headers["cache-control"] == "no-store"
