"""The request fields the gateway reads: model, stream, max_tokens, the server tools and the
request tags (which name the project a request is for).

Claude Code's requests are 50-100 KB of system prompt and tool schemas. Turning all of that into
Python objects to read a few top-level fields cost more than the rest of the gateway's work on a
request (bench/, issue 6). msgspec validates the whole document but builds only these fields,
skipping the rest in C: of each tool only the five keys that bound what a server tool may cost
(about 2 µs for the 22 tools of bench/bodies.py's 60 KB body; none without tools). A body it
refuses goes to orjson, which says what is wrong (or reads it: orjson nests deeper). Both read
the same values from the same documents (the tests compare them), but for numbers outside a
double's range inside skipped values, which only msgspec lets through.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import orjson

from ledger.pricing import ServerTool
from proxy.errors import ProxyError

# The most output any Claude model writes in one Messages response (Opus 4.6 and later: 128k;
# the others less). A larger max_tokens is refused by every model, so it is refused here, and a
# request without one (which the provider refuses) is reserved as if it asked for this much.
MAX_OUTPUT_TOKENS = 128_000
_MAX_TOKENS = f"max_tokens: expected an integer from 1 to {MAX_OUTPUT_TOKENS}"


# Tools the client runs: the answer stops at their tool_use block, so they cost no more here.
# Any other tool with a type (web_search_*, web_fetch_*, code_execution_*, advisor_*,
# tool_search_*, mcp_toolset, or one not known yet) is taken to run at the provider.
_CLIENT_TOOLS = ("custom", "bash_", "text_editor_", "computer_", "memory_")


class _Tool(msgspec.Struct):
    type: Any = None
    max_uses: Any = None
    max_tokens: Any = None  # advisor: the most one call writes
    max_content_tokens: Any = None  # web fetch: the most one fetch adds to the context
    model: Any = None  # advisor: the model its calls are billed at


class _Fields(msgspec.Struct):
    model: Any = None
    stream: Any = None
    max_tokens: Any = msgspec.UNSET
    tools: list[_Tool] | None = None
    tags: Any = msgspec.UNSET  # a few short strings when present


_decode = msgspec.json.Decoder(_Fields).decode


class Allowance(NamedTuple):
    """What a request lets the provider spend beyond its prompt."""

    max_tokens: int  # the request's, else MAX_OUTPUT_TOKENS
    tools: tuple[ServerTool, ...] = ()  # the server tools it enables


class Fields(NamedTuple):
    model: Any  # as sent: a provider-format body names it in the URL instead
    stream: bool
    allowance: Allowance
    # The body's `tags`: its string values by name; None when the body has no `tags` field.
    tags: dict[str, str] | None = None

    def project(self, tag: str) -> str:
        """The project the request is for: the value of the tag named `tag` (the
        `billing_group_tag` setting; Claude Code's `attributionProject`), else ''."""
        return self.tags.get(tag, "") if tag and self.tags else ""


def parse_request(body: bytes) -> Fields:
    """The fields of a Messages request (the bytes go on unchanged), or a 400 ProxyError
    saying what is wrong with the body."""
    fields = read_fields(body)
    _check_model(fields.model)
    return fields


def read_fields(body: bytes) -> Fields:
    """The fields of a Messages body whose model may be elsewhere (a provider-format URL), or a
    400 ProxyError for a body that is not a JSON object or a max_tokens out of range."""
    model, stream, max_tokens, tools, tags = _read(body)
    return Fields(model, stream is True, Allowance(_max_tokens(max_tokens),
                                                   _server_tools(tools) if tools else ()),
                  None if tags is msgspec.UNSET else _tags(tags))


def request_model(body: bytes) -> str:
    """The model of a request that has no max_tokens (count_tokens), or a 400 ProxyError."""
    model = _read(body)[0]
    _check_model(model)
    return model  # type: ignore[no-any-return]


def _read(body: bytes) -> tuple[Any, Any, Any, list[_Tool] | None, Any]:
    try:
        fields = _decode(body)
        if not body.isascii():
            body.decode()  # msgspec does not check the UTF-8 of strings it skips
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _read_slowly(body)
    return fields.model, fields.stream, fields.max_tokens, fields.tools, fields.tags


def _read_slowly(body: bytes) -> tuple[Any, Any, Any, list[_Tool] | None, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProxyError(400, "invalid_request_error", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProxyError(400, "invalid_request_error", "request body must be a JSON object")
    tools = doc.get("tools")
    if isinstance(tools, list):  # the provider refuses tools that are not a list of objects
        tools = [_Tool(**{k: t.get(k) for k in _Tool.__struct_fields__})
                 for t in tools if isinstance(t, dict)]
    else:
        tools = None
    return (doc.get("model"), doc.get("stream"), doc.get("max_tokens", msgspec.UNSET), tools,
            doc.get("tags", msgspec.UNSET))


def _tags(value: Any) -> dict[str, str]:
    """The string values of a `tags` object by name (the provider refuses any other shape;
    which is not for meterd to decide, so another shape is simply no tags)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str)}


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


def _server_tools(tools: list[_Tool]) -> tuple[ServerTool, ...]:
    """The tools the provider runs, with what bounds their cost. A bound that is missing or
    malformed (the provider refuses the latter) is taken as no bound."""
    found = []
    for tool in tools:
        kind = tool.type
        if not isinstance(kind, str) or kind.startswith(_CLIENT_TOOLS):
            continue
        uses = _count(tool.max_uses)
        if kind.startswith("advisor_"):
            out = tool.max_tokens
            out = out if type(out) is int and 1 <= out <= MAX_OUTPUT_TOKENS else MAX_OUTPUT_TOKENS
            model = tool.model if isinstance(tool.model, str) else ""
            # What a call adds to the executor's context is its advice, part of what it writes.
            found.append(ServerTool("advisor", uses, out, model, out))
        elif kind.startswith("web_search_"):
            found.append(ServerTool("web_search", uses, None))
        else:
            fetched = _count(tool.max_content_tokens) if kind.startswith("web_fetch_") else None
            found.append(ServerTool("other", uses, fetched))
    return tuple(found)


def _count(value: Any) -> int | None:
    """A count a tool sets, or None. Beyond 2**64 orjson reads a float and msgspec an int:
    both are no count, so the two readers agree."""
    return value if type(value) is int and 0 <= value < 2**64 else None
