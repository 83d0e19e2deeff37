"""Bad input at the proxy's edge gets a clear answer in the Anthropic envelope, and nothing
that should stay on one side of the gateway crosses it (issue 13: items 13, 14, 16, 17, 18).

Requests are written byte for byte where an HTTP client would refuse or rewrite them."""

from __future__ import annotations

import asyncio

import orjson

from ledger.money import parse_usd
from tests.conftest import Gateway

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

async def test_a_name_with_cr_lf_or_non_latin1_text_is_percent_encoded_in_headers(
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
    warning = resp.headers["x-meterd-budget-warning"]
    assert warning.startswith(
        "developer Zo%C3%AB%0D%0AX-Injected: 1 %E5%B9%B3%E5%8F%B0, daily: ")
    assert warning.endswith("% of the cap used")
    assert (await resp.json())["usage"]["input_tokens"] == 1200
    (event,) = await gateway.settled(1)
    assert event["error_type"] == "" and event["cost_micros"] == str(COST)
