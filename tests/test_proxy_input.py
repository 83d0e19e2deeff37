"""Bad input at the proxy's edge gets a clear answer in the Anthropic envelope, and nothing
that should stay on one side of the gateway crosses it (issue 13: items 13, 14, 16, 17, 18).

Requests are written byte for byte where an HTTP client would refuse or rewrite them."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ledger.money import parse_usd
from tests.conftest import Gateway, free_port

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 256,
                     "messages": [{"role": "user", "content": "Hello"}]})
COST = 1200 * 3 + 60 * 15  # what the mock answers, at $3 / $15 per million tokens


async def raw(gw: Gateway, head: list[bytes], body: bytes = b"",
              path: bytes = b"/v1/messages") -> tuple[int, dict[str, str], bytes]:
    """Send exactly these header lines; the status, headers and body of the answer."""
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    lines = [b"POST " + path + b" HTTP/1.1", b"host: gw", b"connection: close",
             b"content-length: %d" % len(body), *head]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    top, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        payload = unchunk(payload)
    return int(status_line.split()[1]), headers, payload


def unchunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, data = out + rest[:n], rest[n + 2:]


def error_of(payload: bytes) -> dict[str, str]:
    doc = orjson.loads(payload)
    assert doc["type"] == "error" and set(doc["error"]) == {"type", "message"}, doc
    return dict(doc["error"])


# -- item 13: one request, one key -----------------------------------------------------------

async def test_two_different_keys_in_one_request_are_refused(gateway: Gateway) -> None:
    ada = await gateway.developer("Ada")
    bob = await gateway.developer("Bob")
    revoked = await gateway.developer("Cy")
    cat = gateway.admin.catalog
    (cy,) = [d for d in await gateway.admin.db(cat.developers) if d["name"] == "Cy"]
    (cy_key,) = await gateway.admin.db(cat.keys, cy["id"])
    await gateway.change(cat.revoke_key, cy_key["id"])
    for api_key, bearer in ((ada, bob), (ada, revoked), (revoked, ada)):
        resp = await gateway.client.post("/v1/messages", data=BODY, headers={
            "x-api-key": api_key, "authorization": f"Bearer {bearer}"})
        assert resp.status == 401
        error = error_of(await resp.read())
        assert error["type"] == "authentication_error"
        assert api_key not in error["message"] and bearer not in error["message"]
    assert len(gateway.upstream.recorded) == 0
    await gateway.proxy.drain()
    assert await gateway.events() == []


# -- item 14: stored text in a header --------------------------------------------------------

async def test_a_name_with_cr_lf_or_non_latin1_text_never_reaches_a_header(
        gateway: Gateway) -> None:
    key = await gateway.developer("Zoe")
    cat = gateway.admin.catalog
    # Stored before names were checked: written past the catalog's own rules.
    await gateway.change(lambda: cat.conn.execute(
        "UPDATE developers SET name = ? WHERE name = 'Zoe'", ["Zoë\r\nX-Injected: 1 平台"]))
    # 5,000 µ$ a day: the first request's own reservation (about 3,900 µ$) passes 75 %.
    await gateway.change(cat.set_budget, "developer", "zoe@example.com", "daily",
                         parse_usd("0.005"))
    resp = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert resp.status == 200
    assert "x-injected" not in resp.headers
    assert resp.headers["anthropic-ratelimit-unified-overage-surpassed-threshold"] == "0.75"
    assert not any("Zo" in value for value in resp.headers.values())
    assert (await resp.json())["usage"]["input_tokens"] == 1200
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "" and event["cost_micros"] == str(COST)


# -- item 16: no cookies across the gateway --------------------------------------------------

@pytest.fixture
async def cookie_upstream() -> AsyncIterator[TestServer]:
    """A provider behind a CDN that sets a cookie on its answers."""
    async def messages(request: web.Request) -> web.Response:
        app_seen.append(dict(request.headers))
        body = {"type": "message", "model": "claude-sonnet-4-6", "content": [],
                "usage": {"input_tokens": 1200, "output_tokens": 60}}
        return web.json_response(body, headers={"set-cookie": "__cf_bm=abc; Path=/",
                                                "request-id": "req_cookie"})

    app_seen: list[dict[str, str]] = []
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = TestServer(app)
    await server.start_server()
    server.seen = app_seen  # type: ignore[attr-defined]
    yield server
    await server.close()


async def test_cookies_cross_the_gateway_in_neither_direction(
        start_gateway: Any, cookie_upstream: TestServer) -> None:
    gw = await start_gateway(upstream_url=str(cookie_upstream.make_url("")).rstrip("/"))
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=BODY, headers={
        "x-api-key": key, "cookie": "dashboard_session=secret-session"})
    assert resp.status == 200
    assert "set-cookie" not in resp.headers
    assert resp.headers["request-id"] == "req_cookie"  # the provider's other headers pass
    (seen,) = cookie_upstream.seen  # type: ignore[attr-defined]
    assert "cookie" not in {name.lower() for name in seen}


# -- item 17: bodies in an encoding, over-long headers ---------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_goes_on_decoded_and_unlabelled(gateway: Gateway,
                                                                encoding: str) -> None:
    key = (await gateway.developer()).encode()
    packed = gzip.compress(BODY) if encoding == "gzip" else zlib.compress(BODY)
    status, _, payload = await raw(gateway, [b"x-api-key: " + key,
                                             b"content-encoding: " + encoding.encode()], packed)
    assert status == 200, payload
    seen = gateway.upstream.recorded[-1]
    assert seen["body"] == BODY
    assert "content-encoding" not in {name.lower() for name, _ in seen["headers"]}
    (event,) = await gateway.settled(1)
    assert event["cost_micros"] == str(COST)


@pytest.mark.parametrize("encoding", [b"deflate", b"gzip"])
async def test_a_body_that_is_not_what_its_encoding_says_is_a_400(gateway: Gateway,
                                                                  encoding: bytes) -> None:
    key = (await gateway.developer()).encode()
    status, headers, payload = await raw(
        gateway, [b"x-api-key: " + key, b"content-encoding: " + encoding], BODY)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert error_of(payload)["type"] == "invalid_request_error"
    assert len(gateway.upstream.recorded) == 0


@pytest.mark.parametrize("encoding", [b"br", b"zstd", b"compress", b"gzip, br", b"x-made-up"])
async def test_a_body_in_an_encoding_the_gateway_does_not_take_is_a_400(
        gateway: Gateway, encoding: bytes) -> None:
    key = (await gateway.developer()).encode()
    status, headers, payload = await raw(
        gateway, [b"x-api-key: " + key, b"content-encoding: " + encoding], BODY)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert error_of(payload) == {
        "type": "invalid_request_error",
        "message": "the request body's content-encoding is not supported: send it "
                   "uncompressed, or as gzip or deflate"}
    assert len(gateway.upstream.recorded) == 0


async def test_an_over_long_header_is_a_431_that_echoes_nothing(gateway: Gateway) -> None:
    key = (await gateway.developer()).encode()
    long_key = key + b"x" * 9000  # a pasted key run on: it must not come back, even in part
    status, headers, payload = await raw(gateway, [b"x-api-key: " + long_key], BODY)
    assert status == 431 and headers["content-type"].startswith("application/json")
    assert error_of(payload)["type"] == "invalid_request_error"
    assert key not in payload
    assert len(gateway.upstream.recorded) == 0


async def test_too_many_headers_or_bytes_that_are_not_http_are_a_400_in_the_envelope(
        gateway: Gateway) -> None:
    key = (await gateway.developer()).encode()
    many = [b"x-h%d: a" % i for i in range(200)]
    for head in (many, [b"x-api-key: " + key, b"bad header line"]):
        status, headers, payload = await raw(gateway, head, BODY)
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert error_of(payload)["type"] == "invalid_request_error"
    assert len(gateway.upstream.recorded) == 0


async def test_an_unexpected_fault_is_a_500_in_the_envelope(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.proxy, "authenticate", broken)
    resp = await gateway.client.post("/v1/messages", data=BODY)
    assert resp.status == 500
    assert error_of(await resp.read()) == {"type": "api_error",
                                           "message": "internal error in the gateway"}


# -- item 18: meterd's own 502 and 504 name the request --------------------------------------

async def test_a_502_names_the_request_it_settled(start_gateway: Any) -> None:
    gw = await start_gateway(upstream_url=f"http://127.0.0.1:{free_port()}")
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert resp.status == 502
    (event,) = await gw.settled(1)
    assert resp.headers["x-meterd-request-id"] == event["id"]


async def test_a_504_names_the_request_it_settled(start_gateway: Any) -> None:
    gw = await start_gateway(upstream_read_timeout=0.2)
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=BODY, headers={
        "x-api-key": key, "x-mock-delay-ms": "1500"})
    assert resp.status == 504
    (event,) = await gw.settled(1)
    assert resp.headers["x-meterd-request-id"] == event["id"]
