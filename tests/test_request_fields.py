"""The request fields the gateway reads (proxy/request_fields.py): msgspec, which skips what it
does not need, reads exactly what orjson (parsing the whole document) reads, and refuses what
orjson refuses with the same message."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import request_fields
from proxy.errors import ProxyError

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
@given(st.dictionaries(st.sampled_from(["model", "stream", "max_tokens", "system", "tools"]),
                       _json, max_size=5), _json, st.booleans())
def test_any_document_gives_the_same_fields_both_ways(doc: dict[str, Any], extra: Any,
                                                      ascii_only: bool) -> None:
    text = json.dumps({**doc, "messages": extra}, ensure_ascii=ascii_only)
    body = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8 bytes
    assert outcome(request_fields.parse_request, body) == orjson_only(body)
