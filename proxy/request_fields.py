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

from typing import Any, NamedTuple

import msgspec
import orjson

from proxy.errors import ProxyError

# The most output any Claude model writes in one Messages response (Opus 4.6 and later: 128k;
# the others less). A larger max_tokens is refused by every model, so it is refused here, and a
# request without one (which the provider refuses) is reserved as if it asked for this much.
MAX_OUTPUT_TOKENS = 128_000
_MAX_TOKENS = f"max_tokens: expected an integer from 1 to {MAX_OUTPUT_TOKENS}"


class _Fields(msgspec.Struct):
    model: Any = None
    stream: Any = None
    max_tokens: Any = msgspec.UNSET


_decode = msgspec.json.Decoder(_Fields).decode


class Fields(NamedTuple):
    model: Any  # as sent: a provider-format body names it in the URL instead
    stream: bool
    max_tokens: int  # the request's, else MAX_OUTPUT_TOKENS


def parse_request(body: bytes) -> Fields:
    """The fields of a Messages request (the bytes go on unchanged), or a 400 ProxyError
    saying what is wrong with the body."""
    fields = read_fields(body)
    _check_model(fields.model)
    return fields


def read_fields(body: bytes) -> Fields:
    """The fields of a Messages body whose model may be elsewhere (a provider-format URL), or a
    400 ProxyError for a body that is not a JSON object or a max_tokens out of range."""
    model, stream, max_tokens = _read(body)
    return Fields(model, stream is True, _max_tokens(max_tokens))


def request_model(body: bytes) -> str:
    """The model of a request that has no max_tokens (count_tokens), or a 400 ProxyError."""
    model = _read(body)[0]
    _check_model(model)
    return model  # type: ignore[no-any-return]


def _read(body: bytes) -> tuple[Any, Any, Any]:
    try:
        fields = _decode(body)
        if not body.isascii():
            body.decode()  # msgspec does not check the UTF-8 of strings it skips
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _read_slowly(body)
    return fields.model, fields.stream, fields.max_tokens


def _read_slowly(body: bytes) -> tuple[Any, Any, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProxyError(400, "invalid_request_error", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProxyError(400, "invalid_request_error", "request body must be a JSON object")
    return doc.get("model"), doc.get("stream"), doc.get("max_tokens", msgspec.UNSET)


def _check_model(model: Any) -> None:
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "invalid_request_error", "model: field required")


def _max_tokens(value: Any) -> int:
    """max_tokens as admission reserves it. A float, a string or an integer out of range is
    refused: the provider may read it as a number (and generate that much) while a reservation
    taken as some default would let a strict cap be passed."""
    if value is msgspec.UNSET:
        return MAX_OUTPUT_TOKENS  # the provider refuses it; if not, this is the most it costs
    if type(value) is not int or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise ProxyError(400, "invalid_request_error", _MAX_TOKENS)
    return value
