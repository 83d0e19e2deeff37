"""The request fields the gateway reads (proxy/request_fields.py): msgspec, which skips what it
does not need, reads exactly what orjson (parsing the whole document) reads, and refuses what
orjson refuses with the same message."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.pricing import ServerTool
from proxy import request_fields
from proxy.errors import ProxyError
from tests.conftest import Gateway
from tests.fakes.gateways import (
    VERTEX_PROJECT,
    VERTEX_REGION,
    Served,
    StartGateway,
    bedrock_provider,
    vertex_provider,
)

pytest_plugins = ("tests.fakes.fixtures",)  # the provider fakes, for provider-format routes

BODIES = [
    b'{"model":"claude-sonnet-4-6","max_tokens":1024,"stream":true,"messages":[]}',
    b'{"model":"a","model":"b"}',  # duplicate keys: the last wins, as everywhere
    b'{"model":"\\u0061","stream":1,"max_tokens":true}',
    b'{"model":"a","max_tokens":18446744073709551615}',
    b'{"model":"a","max_tokens":18446744073709551616}',  # a float to orjson
    b'{"model":"a","max_tokens":-9223372036854775809}',
    b'{"model":"a","max_tokens":1.5,"stream":"true"}',
    b'{"model":"a","x":"\xff"}',  # invalid UTF-8 in a skipped string
    b'{"model":"a","x":"\\ud800"}',  # a lone surrogate
    b'{"model":"a","x":"\t"}',
    b'{"model":"a","x":' + b"[" * 700 + b"]" * 700 + b"}",  # deeper than msgspec goes
    b'{"model":"a","x":' + b"[" * 1100 + b"]" * 1100 + b"}",
    b'\xef\xbb\xbf{"model":"a"}',
    b'{"model":"a",}', b'{"model":"a"} {}', b"", b"null", b'["a"]', b'"a"', b"{not json",
    b'{"max_tokens": 5}', b'{"model": ""}', b'{"model": 7}', b'{"model": 1e400}',
    b'{"model":"a","x":NaN}', b'{"model":"a","x":01}', b'  {"model":"a"}\n',
    b'{"model":"a","tools":[{"type":"web_search_20250305","max_uses":18446744073709551616}]}',
    b'{"model":"a","tools":[{"type":"web_search_20250305","max_uses":18446744073709551615}]}',
    b'{"model":"a","tools":[{"type":"web_fetch_20250910"},7,{"name":"Bash"}]}',
    b'{"model":"a","tools":{"type":"web_search_20250305"}}',
    b'{"model":"a","tools":[{"type":"advisor_20260301","model":"m","max_tokens":1e3}]}',
    b'{"model":"a","tags":{"project":"p","n":7,"x":null,"project":"q"}}',
    b'{"model":"a","tags":{"project":"p","big":18446744073709551616}}',
    b'{"model":"a","tags":["project"]}', b'{"model":"a","tags":null}',
    b'{"model":"a","t\\u0061gs":{"pr\\u006fject":"\\u00e9"}}',
    b'{"model":"a","tags":{"project":"p","deep":' + b"[" * 1100 + b"]" * 1100 + b"}}",
]


def orjson_only(body: bytes) -> Any:
    """parse_request as it answers when msgspec refuses every body: orjson reads it all."""
    def refuse(_: bytes) -> Any:
        raise msgspec.DecodeError("refused for the comparison")

    saved, request_fields._decode = request_fields._decode, refuse
    try:
        return outcome(request_fields.parse_request, body)
    finally:
        request_fields._decode = saved


def outcome(parse: Any, body: bytes) -> Any:
    try:
        return parse(body)
    except ProxyError as exc:
        return (exc.status, exc.kind, exc.message)


@pytest.mark.parametrize("body", BODIES)
def test_msgspec_reads_and_refuses_exactly_what_orjson_does(body: bytes) -> None:
    assert outcome(request_fields.parse_request, body) == orjson_only(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["model", "stream", "max_tokens", "system", "tools",
                                        "tags"]),
                       _json, max_size=5), _json, st.booleans())
def test_any_document_gives_the_same_fields_both_ways(doc: dict[str, Any], extra: Any,
                                                      ascii_only: bool) -> None:
    text = json.dumps({**doc, "messages": extra}, ensure_ascii=ascii_only)
    body = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8 bytes
    assert outcome(request_fields.parse_request, body) == orjson_only(body)


# --- max_tokens: an integer in range, or refused ----------------------------------------------

MAX = 128_000  # the most output any Claude model writes in one response (Opus 4.6+)
REFUSED_MAX_TOKENS = [b"1.5", b"1024.0", b"1e3", b'"1024"', b"true", b"null", b"0", b"-1",
                      str(MAX + 1).encode(), b"18446744073709551616", b"[]", b"{}"]


@pytest.mark.parametrize("value", REFUSED_MAX_TOKENS)
def test_max_tokens_that_is_not_an_integer_in_range_is_refused_naming_the_field(
        value: bytes) -> None:
    body = b'{"model":"claude-sonnet-4-6","max_tokens":' + value + b',"messages":[]}'
    with pytest.raises(ProxyError) as refused:
        request_fields.parse_request(body)
    assert (refused.value.status, refused.value.kind) == (400, "invalid_request_error")
    assert refused.value.message.startswith("max_tokens: ")
    assert orjson_only(body) == outcome(request_fields.parse_request, body)


@pytest.mark.parametrize(("value", "reserved"), [(b"1", 1), (b"4096", 4096),
                                                 (str(MAX).encode(), MAX)])
def test_max_tokens_in_range_is_read_as_given(value: bytes, reserved: int) -> None:
    body = b'{"model":"m","max_tokens":' + value + b"}"
    assert request_fields.parse_request(body).allowance.max_tokens == reserved


def test_missing_max_tokens_is_read_as_the_most_any_model_writes() -> None:
    # The provider refuses it; until then it is not reserved as a cheap request.
    assert request_fields.parse_request(b'{"model":"m"}').allowance.max_tokens == MAX
    assert request_fields.MAX_OUTPUT_TOKENS == MAX


def test_tags_are_read_for_the_project_and_their_presence_noted() -> None:
    def read(body: bytes) -> request_fields.Fields:
        return request_fields.parse_request(b'{"model":"m",' + body + b"}")

    fields = read(b'"tags":{"project":"apollo","n":1}')
    assert fields.tags == {"project": "apollo"} and fields.project("project") == "apollo"
    assert fields.project("cost-center") == "" and fields.project("") == ""
    assert read(b'"x":1').tags is None  # no field: nothing to take out
    assert read(b'"tags":"apollo"').tags == {} == read(b'"tags":null').tags


def test_count_tokens_reads_only_the_model() -> None:
    assert request_fields.request_model(b'{"model":"m","messages":[]}') == "m"
    assert request_fields.request_model(b'{"model":"m","max_tokens":"x"}') == "m"
    with pytest.raises(ProxyError, match="model: field required"):
        request_fields.request_model(b'{"max_tokens":5}')


# --- through the gateway ----------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize("value", ["1024", 1.5, 10**9, 0, True])
async def test_gateway_refuses_a_bad_max_tokens_before_the_provider_sees_it(
        gateway: Gateway, value: Any) -> None:
    key = await gateway.developer()
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": value, "stream": True,
                         "messages": MESSAGES})
    resp = await gateway.client.post("/v1/messages", data=body, headers={"x-api-key": key})
    assert resp.status == 400
    doc = await resp.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"].startswith("max_tokens: ")
    assert len(gateway.upstream.recorded) == 0


async def test_strict_cap_reserves_a_request_without_max_tokens_at_the_most_output(
        gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    body = orjson.dumps({"model": "claude-sonnet-4-6", "messages": MESSAGES})
    # Room for the request as if it asked for 4,096 tokens (what it was reserved as), not for
    # the 128,000 it may be given.
    room = gateway.proxy.prices.worst_case("claude-sonnet-4-6", len(body), 4096)
    assert room < gateway.proxy.prices.worst_case("claude-sonnet-4-6", len(body), MAX)
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly",
                         room, "strict")
    resp = await gateway.client.post("/v1/messages", data=body, headers={"x-api-key": key})
    assert resp.status == 429
    assert (await resp.json())["error"]["type"] == "billing_error"
    assert len(gateway.upstream.recorded) == 0


async def test_count_tokens_through_routes_is_not_checked_for_max_tokens(
        start_gateway: StartGateway, bedrock: Served) -> None:
    gw = await start_gateway(providers={"bedrock-us": bedrock_provider(bedrock)})
    key = await gw.developer()
    body = orjson.dumps({"model": "claude-sonnet-4-6", "messages": MESSAGES})
    resp = await gw.client.post("/v1/messages/count_tokens", data=body,
                                headers={"x-api-key": key})
    assert resp.status == 200, await resp.text()
    assert "input_tokens" in await resp.json()


PROVIDER_ROUTES = {
    "bedrock": "/bedrock/model/us.anthropic.claude-sonnet-4-6/invoke",
    "vertex": f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/"
              "anthropic/models/claude-sonnet-4-6:rawPredict",
}


@pytest.mark.parametrize("route", PROVIDER_ROUTES)
@pytest.mark.parametrize("value", ["1024", 2.5])
async def test_provider_format_routes_refuse_a_bad_max_tokens_the_same_way(
        start_gateway: StartGateway, bedrock: Served, vertex: Served, route: str,
        value: Any) -> None:
    gw = await start_gateway(providers={"bedrock-us": bedrock_provider(bedrock),
                                        "vertex": vertex_provider(vertex)})
    key = await gw.developer()
    body = orjson.dumps({"anthropic_version": f"{route}-2023-05-31", "max_tokens": value,
                         "messages": MESSAGES})
    resp = await gw.client.post(PROVIDER_ROUTES[route], data=body,
                                headers={"authorization": f"Bearer {key}"})
    assert resp.status == 400
    doc = await resp.json()
    assert doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"].startswith("max_tokens: ")
    assert bedrock.fake.recorded == [] and vertex.fake.recorded == []


# --- server tools ------------------------------------------------------------------------------

SEARCH = {"type": "web_search_20250305", "name": "web_search"}
TOOLS = [
    ("a search with max_uses", [{**SEARCH, "max_uses": 8}],
     (ServerTool("web_search", 8, None),)),
    ("a search without", [SEARCH], (ServerTool("web_search", None, None),)),
    ("a malformed max_uses is none", [{**SEARCH, "max_uses": "8"}, {**SEARCH, "max_uses": -1}],
     (ServerTool("web_search", None, None), ServerTool("web_search", None, None))),
    ("a fetch bounds its result", [{"type": "web_fetch_20250910", "name": "web_fetch",
                                    "max_uses": 2, "max_content_tokens": 5000}],
     (ServerTool("other", 2, 5000),)),
    ("the advisor at its model", [{"type": "advisor_20260301", "name": "advisor",
                                   "model": "claude-opus-4-8", "max_tokens": 2000}],
     (ServerTool("advisor", None, 2000, "claude-opus-4-8", 2000),)),
    ("an advisor without max_tokens writes the most", [{"type": "advisor_20260301",
                                                         "model": "claude-opus-4-8"}],
     (ServerTool("advisor", None, MAX, "claude-opus-4-8", MAX),)),
    ("code execution and tools not known yet", [{"type": "code_execution_20250825"},
                                                {"type": "mcp_toolset"}],
     (ServerTool("other", None, None), ServerTool("other", None, None))),
    ("tools the client runs", [{"name": "Bash", "input_schema": {"type": "object"}},
                               {"type": "custom", "name": "x"}, {"type": "bash_20250124"},
                               {"type": "text_editor_20250728"}, {"type": "computer_20250124"},
                               {"type": "memory_20250818"}], ()),
]


@pytest.mark.parametrize(("tools", "expected"), [c[1:] for c in TOOLS],
                         ids=[c[0] for c in TOOLS])
def test_server_tools_are_read_with_what_bounds_their_cost(tools: list[Any],
                                                           expected: Any) -> None:
    body = orjson.dumps({"model": "m", "max_tokens": 100, "tools": tools})
    assert request_fields.parse_request(body).allowance.tools == expected
    assert orjson_only(body) == outcome(request_fields.parse_request, body)
