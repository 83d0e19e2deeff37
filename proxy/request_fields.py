"""The three request fields the gateway reads: model, stream and max_tokens.

Claude Code's requests are 50-100 KB of system prompt and tool schemas. Turning all of that into
Python objects to read three top-level fields cost more than the rest of the gateway's work on a
request (bench/, issue 6). msgspec validates the whole document but builds only these three
fields, skipping the rest in C. A body it refuses goes to orjson, which says what is wrong (or
reads it: orjson nests deeper). Both read the same values from the same documents (the tests
compare them), but for numbers outside a double's range inside skipped values, which only
msgspec lets through.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from proxy.errors import ProxyError

_U64, _I64 = 2**64 - 1, -(2**63)  # orjson reads integers outside this range as floats


class _Fields(msgspec.Struct):
    model: Any = None
    stream: Any = None
    max_tokens: Any = None


_decode = msgspec.json.Decoder(_Fields).decode


def parse_request(body: bytes) -> tuple[str, bool, int]:
    """model, stream, max_tokens of a Messages request (the bytes go on unchanged), or a
    400 ProxyError saying what is wrong with the body."""
    model, stream, max_tokens = read_fields(body)
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "invalid_request_error", "model: field required")
    return model, stream, max_tokens


def read_fields(body: bytes) -> tuple[Any, bool, int]:
    """model (as sent: a provider-format body names it in the URL instead), stream and
    max_tokens (0 unless an integer), or a 400 ProxyError for a body that is not a JSON
    object."""
    try:
        fields = _decode(body)
        if not body.isascii():
            body.decode()  # msgspec does not check the UTF-8 of strings it skips
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _read_slowly(body)
    max_tokens = fields.max_tokens
    if isinstance(max_tokens, int) and not _I64 <= max_tokens <= _U64:
        max_tokens = None  # a float to orjson
    return _typed(fields.model, fields.stream, max_tokens)


def _read_slowly(body: bytes) -> tuple[Any, bool, int]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProxyError(400, "invalid_request_error", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProxyError(400, "invalid_request_error", "request body must be a JSON object")
    return _typed(doc.get("model"), doc.get("stream"), doc.get("max_tokens"))


def _typed(model: Any, stream: Any, max_tokens: Any) -> tuple[Any, bool, int]:
    return model, stream is True, max_tokens if isinstance(max_tokens, int) else 0
