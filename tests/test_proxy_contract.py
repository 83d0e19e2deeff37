"""The proxy contract Claude Code relies on (DESIGN §3), through the real app factory."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import web

from ledger import tokens
from tests.conftest import MOCK_KEY, Gateway

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}]}


async def post(gw: Gateway, key: str | None, body: object = BODY, path: str = "/v1/messages",
               **headers: str):
    h = {"content-type": "application/json", **headers}
    if key:
        h["x-api-key"] = key
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await gw.client.post(path, data=data, headers=h)


async def test_startup_probes_answer_without_a_credential(gateway: Gateway) -> None:
    for path in ("/", "/api/hello"):
        resp = await gateway.client.head(path)
        assert resp.status == 200


async def test_unknown_key_is_refused_with_authentication_error_not_to_be_retried(
        gateway: Gateway) -> None:
    resp = await post(gateway, "mtd_not-a-key")
    assert resp.status == 401
    assert resp.headers["x-should-retry"] == "false"  # else Claude Code retries for minutes
    assert await resp.json() == {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid gateway key"}}


async def test_a_bearer_signed_under_an_unknown_key_id_is_refused_not_to_be_retried(
        gateway: Gateway) -> None:
    await gateway.developer()  # a gateway serving keys, that never signed with this one
    bearer = tokens.issue(tokens.new_signing_key(), issuer=gateway.url, developer_id="dev_x",
                          sid="sgn_x", email="x@example.com", ttl=900)[0]
    resp = await post(gateway, None, authorization=f"Bearer {bearer}")
    assert resp.status == 401
    assert resp.headers["x-should-retry"] == "false"
    assert await resp.json() == {"type": "error", "error": {
        "type": "authentication_error",
        "message": "bearer token is signed by a key this gateway does not know"}}


async def test_bearer_and_x_api_key_and_both_are_accepted(gateway: Gateway) -> None:
    key = await gateway.developer()
    for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"},
                    {"x-api-key": key, "authorization": f"Bearer {key}"}):
        resp = await post(gateway, None, **headers)
        assert resp.status == 200, await resp.text()
    assert len(await gateway.settled(3)) == 3


async def test_body_and_anthropic_headers_reach_the_upstream_byte_for_byte(
        gateway: Gateway) -> None:
    key = await gateway.developer()
    # Unusual spacing, key order and unknown fields: the upstream must get these exact bytes.
    raw = (b'{ "model" : "claude-sonnet-4-5",\n "max_tokens": 64, "future_field": {"x": [1,2]},'
           b' "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x98\x95"}] }')
    resp = await post(gateway, key, raw, path="/v1/messages?beta=true",
                      **{"anthropic-beta": "made-up-beta-2099-01-01,other-beta",
                         "anthropic-version": "2023-06-01",
                         "anthropic-future-header": "kept",
                         "x-claude-code-session-id": "sess-1"})
    assert resp.status == 200
    seen = gateway.upstream.recorded[-1]
    assert seen["body"] == raw
    assert seen["path_qs"] == "/v1/messages?beta=true"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["anthropic-beta"] == "made-up-beta-2099-01-01,other-beta"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-future-header"] == "kept"
    assert headers["x-claude-code-session-id"] == "sess-1"


async def test_client_credential_never_reaches_upstream_or_logs(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    key = await gateway.developer()
    caplog.set_level(logging.DEBUG)
    resp = await post(gateway, None, **{"authorization": f"Bearer {key}", "x-api-key": key})
    assert resp.status == 200
    await gateway.settled(1)
    seen = gateway.upstream.recorded[-1]
    values = " ".join(v for _, v in seen["headers"])
    assert key not in values and key not in seen["body"].decode()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-api-key"] == MOCK_KEY  # the provider credential, added by the gateway
    assert "authorization" not in headers
    assert key not in caplog.text and MOCK_KEY not in caplog.text
    assert key not in await resp.text()


async def test_hop_by_hop_headers_are_not_forwarded(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await post(gateway, key, **{"keep-alive": "timeout=5", "te": "trailers",
                                       "proxy-authorization": "Basic eA=="})
    assert resp.status == 200
    headers = {k.lower() for k, _ in gateway.upstream.recorded[-1]["headers"]}
    assert not headers & {"keep-alive", "te", "proxy-authorization"}


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "request body is not valid JSON"),
    (b'["a"]', "request body must be a JSON object"),
    (b'{"max_tokens": 5}', "model: field required"),
])
async def test_bad_body_is_invalid_request_error(gateway: Gateway, body: bytes,
                                                 message: str) -> None:
    key = await gateway.developer()
    resp = await post(gateway, key, body)
    assert resp.status == 400
    assert await resp.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": message}}


async def test_oversized_body_is_request_too_large(start_gateway) -> None:
    gw = await start_gateway(max_body_bytes=1000)
    key = await gw.developer()
    resp = await post(gw, key, {**BODY, "system": "x" * 2000})
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "request_too_large"
    assert len(gw.upstream.recorded) == 0


async def test_unknown_path_is_not_found_error(gateway: Gateway) -> None:
    resp = await gateway.client.get("/v1/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found_error"


async def test_a_method_the_path_does_not_take_is_405_naming_those_it_does(
        gateway: Gateway) -> None:
    resp = await gateway.client.get("/v1/messages")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert await resp.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "method GET not allowed on /v1/messages"}}


async def test_every_route_answers_its_errors_in_the_envelope(gateway: Gateway) -> None:
    """Each route of the proxy, called without a key: a probe answers, anything else refuses
    in the Anthropic envelope, never in aiohttp's plain text."""
    answered: dict[str, int] = {}
    for resource in gateway.app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):  # /admin: the dashboard's own
            continue
        info = resource.get_info()
        path = info.get("path") or info["formatter"].format_map(
            {name: "x" for name in ("model", "action", "project", "region", "tail")})
        for route in resource:
            if route.method == "HEAD":
                continue
            resp = await gateway.client.request(route.method, path, data=b"{}")
            answered[f"{route.method} {path}"] = resp.status
            if resp.status >= 400:
                body = await resp.json()
                assert body["type"] == "error" and body["error"]["type"], (path, body)
    assert answered["POST /v1/messages"] == 401
    assert answered["POST /bedrock/model/x/x"] == 401
    assert answered["GET /healthz"] == 200
    assert len(answered) >= 13


async def test_upstream_unreachable_is_502(start_gateway) -> None:
    from tests.conftest import free_port
    gw = await start_gateway(upstream_url=f"http://127.0.0.1:{free_port()}")
    key = await gw.developer()
    resp = await post(gw, key)
    assert resp.status == 502
    assert (await resp.json())["error"]["type"] == "api_error"
    (event,) = await gw.settled(1)
    assert event["status"] == "502" and event["error_type"] == "upstream_unreachable"
    assert event["cost_micros"] == "0"


async def test_upstream_timeout_is_504(start_gateway) -> None:
    gw = await start_gateway(upstream_read_timeout=0.2)
    key = await gw.developer()
    resp = await post(gw, key, **{"x-mock-delay-ms": "1500"})
    assert resp.status == 504
    assert (await resp.json())["error"]["type"] == "api_error"


@pytest.mark.parametrize("status", [400, 429, 500, 529])
async def test_upstream_errors_pass_through_unmodified(gateway: Gateway, status: int) -> None:
    key = await gateway.developer()
    direct = await gateway.client.session.post(
        gateway.upstream.url + "/v1/messages", data=orjson.dumps(BODY),
        headers={"x-api-key": MOCK_KEY, "x-mock-status": str(status)})
    expected = await direct.read()
    resp = await post(gateway, key, **{"x-mock-status": str(status)})
    assert resp.status == status
    assert await resp.read() == expected
    for header in ("retry-after", "x-should-retry"):
        assert resp.headers.get(header) == direct.headers.get(header)
    assert resp.headers["request-id"].startswith("req_mock_")


async def test_count_tokens_is_forwarded_and_never_metered(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await post(gateway, key, path="/v1/messages/count_tokens")
    assert resp.status == 200
    assert "input_tokens" in await resp.json()
    await gateway.proxy.drain()
    assert await gateway.events() == []


async def test_models_are_listed_from_configuration(start_gateway) -> None:
    gw = await start_gateway(models=("claude-opus-4-8", "claude-haiku-4-5"))
    key = await gw.developer()
    resp = await gw.client.get("/v1/models?limit=1000",
                               headers={"x-api-key": key, "authorization": f"Bearer {key}"})
    assert resp.status == 200
    doc = await resp.json()
    assert [m["id"] for m in doc["data"]] == ["claude-opus-4-8", "claude-haiku-4-5"]
    assert doc["has_more"] is False
