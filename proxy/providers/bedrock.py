"""Amazon Bedrock: Messages requests as InvokeModel / InvokeModelWithResponseStream.

The body moves to Bedrock's form (model in the path, `stream` dropped, `anthropic_version`
and the `anthropic-beta` header's values in the body), the request is signed with SigV4 by
botocore (or carries a Bedrock API key as Bearer), and the binary event stream that comes
back is decoded into the Anthropic SSE events it wraps: each `chunk` event's base64 `bytes`
field holds one Anthropic event's JSON, the last one with `amazon-bedrock-invocationMetrics`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ledger.pricing import PriceTable
from proxy.envelope import error_body, error_type
from proxy.meter import Metered, StreamMeter
from proxy.providers.base import (
    CREDENTIAL_REFUSED,
    CannotCount,
    CloudProvider,
    Multiplier,
    Outbound,
    ProviderUnavailable,
    Relayed,
    merge_betas,
    public_error,
    public_message,
    refused_credential,
    replay,
    table_model,
)
from proxy.providers.eventstream import encode_frame, encode_message
from proxy.upstream import response_headers

log = logging.getLogger("meterd.providers")

ANTHROPIC_VERSION = "bedrock-2023-05-31"
EVENT_STREAM = "application/vnd.amazon.eventstream"
PING = b'event: ping\ndata: {"type": "ping"}\n\n'

# Bare model id -> Bedrock base model id (the route's inference profile prefix, e.g. "us.",
# is put in front). From Claude Code's own model catalog; configuration extends or overrides.
DEFAULT_MODELS: Mapping[str, str] = {
    "claude-3-haiku": "anthropic.claude-3-haiku-20240307-v1:0",
    "claude-3-5-haiku": "anthropic.claude-3-5-haiku-20241022-v1:0",
    "claude-3-5-sonnet": "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "claude-3-7-sonnet": "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "claude-haiku-4-5": "anthropic.claude-haiku-4-5-20251001-v1:0",
    "claude-haiku-5-5": "anthropic.claude-haiku-5-5",
    "claude-sonnet-4": "anthropic.claude-sonnet-4-20250514-v1:0",
    "claude-sonnet-4-0": "anthropic.claude-sonnet-4-20250514-v1:0",
    "claude-sonnet-4-5": "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "claude-sonnet-4-6": "anthropic.claude-sonnet-4-6",
    "claude-sonnet-5": "anthropic.claude-sonnet-5",
    "claude-sonnet-5-5": "anthropic.claude-sonnet-5-5",
    "claude-opus-4": "anthropic.claude-opus-4-20250514-v1:0",
    "claude-opus-4-0": "anthropic.claude-opus-4-20250514-v1:0",
    "claude-opus-4-1": "anthropic.claude-opus-4-1-20250805-v1:0",
    "claude-opus-4-5": "anthropic.claude-opus-4-5-20251101-v1:0",
    "claude-opus-4-6": "anthropic.claude-opus-4-6-v1",
    "claude-opus-4-7": "anthropic.claude-opus-4-7",
    "claude-opus-4-8": "anthropic.claude-opus-4-8",
    "claude-opus-5": "anthropic.claude-opus-5",
    "claude-opus-5-5": "anthropic.claude-opus-5-5",
    "claude-fable-5": "anthropic.claude-fable-5",
    "claude-fable-5-1": "anthropic.claude-fable-5-1",
    "claude-fable-5-2": "anthropic.claude-fable-5-2",
}
# Beta values Bedrock answers with 400 "invalid beta flag": features of Anthropic's own API
# (files, MCP connector, OAuth, server-side web tools, environments), the request-tags beta
# that Claude Code's own gateway strips for Bedrock and Vertex, and the betas Claude Code's
# native Bedrock mode (CLAUDE_CODE_USE_BEDROCK) never sends, recorded from the pinned
# Claude Code (tests/test_providers_native_betas.py). Everything else passes: the list is a
# denylist, and configuration (`drop_betas`) replaces it.
DEFAULT_DROP_BETAS: tuple[str, ...] = (
    "oauth-2025-04-20", "files-api-2025-04-14", "mcp-client-2025-04-04",
    "mcp-servers-2025-12-04", "environments-2025-11-01", "ccr-byoc-2025-07-29",
    "web-search-2025-03-05", "web-fetch-2025-09-10", "code-execution-2025-08-25",
    "skills-2025-10-02", "prompt-caching-scope-2026-01-05", "request-tags-2026-08-21",
    "claude-code-20250219", "context-management-2025-06-27", "effort-2025-11-24",
    "mid-conversation-tool-changes-2026-07-01", "thinking-token-count-2026-05-13",
)
# `tags` is gated by the request-tags beta, `context_management` by its beta.
DEFAULT_DROP_FIELDS: tuple[str, ...] = ("tags", "context_management")
# The tool-search beta under the name the native mode sends.
RENAME_BETAS: Mapping[str, tuple[str, ...]] = {
    "advanced-tool-use-2025-11-20": ("tool-search-tool-2025-10-19",)}

# Bedrock's error and stream-exception names -> Anthropic error types.
_ERROR_KINDS = {
    "validationexception": "invalid_request_error",
    "accessdeniedexception": "permission_error",
    "unrecognizedclientexception": "authentication_error",
    "resourcenotfoundexception": "not_found_error",
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "serviceunavailableexception": "overloaded_error",
    "modeltimeoutexception": "timeout_error",
    "modelnotreadyexception": "overloaded_error",
    "modelerrorexception": "api_error",
    "modelstreamerrorexception": "api_error",
    "internalserverexception": "api_error",
}
_SIGNED_AS = {"content-type": "application/json", "accept": "application/json"}

Credentials = Any  # botocore Credentials / RefreshableCredentials
CredentialSource = Callable[[], Credentials | None]


class BedrockProvider(CloudProvider):
    """Bedrock Runtime in one region, with the organization's AWS credentials."""

    kind = "bedrock"

    def __init__(self, name: str, region: str, credentials: CredentialSource | None = None,
                 api_key: str = "", base_url: str = "", inference_profile: str = "us",
                 models: Mapping[str, str] | None = None,
                 anthropic_version: str = ANTHROPIC_VERSION,
                 drop_betas: Iterable[str] = DEFAULT_DROP_BETAS,
                 drop_fields: Iterable[str] = DEFAULT_DROP_FIELDS, ping_interval: float = 5.0,
                 multiplier: Multiplier | None = None, prices: PriceTable | None = None) -> None:
        super().__init__(name, base_url or f"https://bedrock-runtime.{region}.amazonaws.com",
                         {**DEFAULT_MODELS, **(models or {})}, anthropic_version, drop_betas,
                         drop_fields, multiplier, prices)
        self.rename_betas = RENAME_BETAS
        self.region = region
        self.prefix = f"{inference_profile}." if inference_profile else ""
        self.ping_interval = ping_interval
        self._source = credentials
        self._credentials: Credentials | None = None
        self._resolving: asyncio.Lock | None = None
        self._bearer = f"Bearer {api_key}" if api_key else ""

    # -- requests ---------------------------------------------------------------------------

    def model_id(self, model: str) -> str:
        """The Bedrock model id (or inference profile) for a client's model name: a Bedrock id
        or ARN as given, else the model table's entry (base ids `anthropic.*` get this
        provider's inference profile prefix, e.g. `us.`), else the name unchanged."""
        if "anthropic." in model or model.startswith("arn:"):
            return model
        mapped = table_model(self.models, model)
        if mapped is None:
            return model
        return self.prefix + mapped if mapped.startswith("anthropic.") else mapped

    def foundation_model_id(self, model: str) -> str:
        """The foundation-model id CountTokens takes (it refuses inference profiles): the
        model id without its geographic or global profile prefix (`us.`, `global.`...).
        An ARN names no foundation model: CannotCount."""
        model_id = self.model_id(model)
        if model_id.startswith("arn:"):
            raise CannotCount(f"provider {self.name}: {model_id} names no foundation model")
        _, dot, rest = model_id.partition(".")
        return rest if dot and rest.startswith("anthropic.") else model_id

    def regional(self, model: str) -> bool:
        """Every id but a global inference profile (`global.` prefix, or its ARN) is served
        regionally: a geographic profile (`us.`, `eu.`...), a base model id in this region, or
        an application inference profile, whose ARN does not say (a `multiplier` set by hand
        prices those as they are)."""
        model_id = self.model_id(model).lower()
        return not (model_id.startswith("global.") or "inference-profile/global." in model_id)

    def body(self, body: bytes, headers: CIMultiDictProxy[str]) -> tuple[dict[str, Any], bool]:
        """Bedrock's form of an Anthropic Messages body (model and `stream` out, version and
        the header's betas in), and whether it streams."""
        doc = self.platform_body(body)
        doc.pop("model", None)
        stream = doc.pop("stream", False) is True
        betas = merge_betas(headers.get("anthropic-beta"), doc.get("anthropic_beta"),
                            self.drop_betas, self.rename_betas)
        if betas:
            doc["anthropic_beta"] = betas
        else:
            doc.pop("anthropic_beta", None)
        return doc, stream

    async def messages(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                       model: str, stream: bool) -> Outbound:
        doc, stream = self.body(body, headers)
        action = "invoke-with-response-stream" if stream else "invoke"
        return await self.signed(self._model_path(self.model_id(model), action), orjson.dumps(doc))

    async def count_tokens(self, path_qs: str, headers: CIMultiDictProxy[str],
                           body: bytes, model: str) -> Outbound:
        doc, _ = self.body(body, headers)
        doc.setdefault("max_tokens", 1)  # InvokeModel's body requires it; counting ignores it
        wrapped = {"input": {"invokeModel": {"body": base64.b64encode(orjson.dumps(doc)).decode()}}}
        return await self.signed(
            self._model_path(self.foundation_model_id(model), "count-tokens"),
            orjson.dumps(wrapped))

    async def passthrough(self, model_id: str, action: str, body: bytes) -> Outbound:
        """A Bedrock-format client's request, body unchanged, signed for this endpoint
        (count-tokens with the foundation model of the id the client names)."""
        if action == "count-tokens":
            model_id = self.foundation_model_id(model_id)
        return await self.signed(self._model_path(model_id, action), body)

    def _model_path(self, model_id: str, action: str) -> str:
        # ":" and "/" (ARNs) are percent-encoded, as botocore does; SigV4 encodes once more.
        return f"{self.base_url}/model/{quote(model_id, safe='')}/{action}"

    async def signed(self, url: str, body: bytes) -> Outbound:
        headers = dict(_SIGNED_AS)
        if self._bearer:
            headers["authorization"] = self._bearer
        else:
            credentials = await self._frozen_credentials()
            request = AWSRequest(method="POST", url=url, data=body, headers=headers)
            SigV4Auth(credentials, "bedrock", self.region).add_auth(request)
            headers = dict(request.headers.items())
        headers["accept-encoding"] = "identity"  # unsigned: metering reads plain bytes
        return Outbound(URL(url, encoded=True), headers, body)

    async def _frozen_credentials(self) -> Any:
        credentials = self._credentials
        if credentials is None:
            if self._source is None:
                raise ProviderUnavailable(f"provider {self.name}: no AWS credentials")
            if self._resolving is None:
                self._resolving = asyncio.Lock()
            async with self._resolving:
                if self._credentials is None:
                    # The default chain may ask the instance metadata service: not on the loop.
                    self._credentials = await asyncio.to_thread(self._source)
            credentials = self._credentials
            if credentials is None:
                log.warning("provider %s: botocore found no AWS credentials", self.name)
                raise ProviderUnavailable(f"provider {self.name}: no AWS credentials found")
        refresh = getattr(credentials, "refresh_needed", None)
        if refresh is not None and refresh():
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        return credentials.get_frozen_credentials()

    # -- answers ----------------------------------------------------------------------------

    def respond(self, response: aiohttp.ClientResponse, stream: bool,
                first: bytes = b"") -> Relayed:
        if response.status >= 400:
            headers = _error_headers(response)
            return Relayed(response, _translated_error(self.name, response, first),
                           headers=headers,
                           content_type="application/json")
        if response.content_type == EVENT_STREAM:
            headers = response_headers(response.headers.items())
            headers.popall("content-type", None)
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            _request_id(response, headers)
            return Relayed(response,
                           EventStreamToSSE(self.name, response, first, self.ping_interval),
                           headers=headers, content_type="text/event-stream")
        # InvokeModel's body is an Anthropic Messages response already.
        headers = response_headers(response.headers.items())
        _request_id(response, headers)
        return Relayed(response, replay(first, response), headers=headers)

    def native(self, response: aiohttp.ClientResponse, stream: bool,
               first: bytes = b"") -> Relayed:
        """Bedrock's answer for a Bedrock-format client: errors in Bedrock's shape (with its
        `x-amzn-errortype`) and stream exceptions with the text `public_message` allows."""
        if response.status in CREDENTIAL_REFUSED:
            refused = refused_credential(self, response, first, aws_error)
            # AWS SDKs name an error by this header (without it: an unknown error); the
            # gateway's own fault, as the 502 says, not the developer's access.
            refused.headers["x-amzn-errortype"] = "InternalServerException"
            return refused
        if response.status >= 400:
            headers = response_headers(response.headers.items())
            headers.popall("content-type", None)
            headers["content-type"] = "application/json"
            return Relayed(response, _native_error(self.name, response, first), headers=headers,
                           content_type="application/json")
        if response.content_type == EVENT_STREAM:
            return Relayed(response, public_stream(self.name, response, first))
        return Relayed(response, replay(first, response))

    async def count_tokens_answer(self, response: aiohttp.ClientResponse,
                                  payload: bytes) -> tuple[int, bytes]:
        if response.status >= 400:
            return response.status, _error_body(self.name, response, payload)
        try:
            count = orjson.loads(payload)["inputTokens"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return 502, error_body("api_error", "Bedrock count-tokens answered without a count")
        return 200, orjson.dumps({"input_tokens": count})


class EventStreamToSSE:
    """Bedrock's event stream, decoded into the Anthropic SSE events it carries, with a `ping`
    event whenever the provider stays silent for `interval` seconds (Claude Code gives up on
    a stream that sends nothing for minutes). An async iterator of bytes."""

    def __init__(self, provider: str, response: aiohttp.ClientResponse, first: bytes,
                 interval: float) -> None:
        self._provider = provider
        self._reader = response.content
        self._buffer = EventStreamBuffer()
        self._interval = interval if interval > 0 else None
        self._pending: asyncio.Future[bytes] | None = None
        self._ready = self._translate(first) if first else b""
        self._done = False

    def __aiter__(self) -> EventStreamToSSE:
        return self

    async def __anext__(self) -> bytes:
        if self._ready:
            ready, self._ready = self._ready, b""
            return ready
        while not self._done:
            task = self._pending
            if task is None:
                task = self._pending = asyncio.ensure_future(self._reader.readany())
            done, _ = await asyncio.wait((task,), timeout=self._interval)
            if not done:
                return PING
            self._pending = None
            chunk = task.result()
            if not chunk:
                self._done = True
                break
            out = self._translate(chunk)
            if out:
                return out
        raise StopAsyncIteration

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _translate(self, chunk: bytes) -> bytes:
        self._buffer.add_data(chunk)
        try:
            return b"".join(frame_sse(message, self._provider) for message in self._buffer)
        except ParserError as exc:
            raise aiohttp.ClientPayloadError(f"corrupt Bedrock event stream: {exc}") from None


class EventStreamMeter:
    """Usage of a Bedrock event stream relayed unchanged: a decoded copy goes through the
    Anthropic SSE meter. Same surface as StreamMeter (feed, complete, finish)."""

    __slots__ = ("_broken", "_buffer", "_meter")

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._meter = StreamMeter()
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken:
            return
        self._buffer.add_data(chunk)
        try:
            for message in self._buffer:
                sse = frame_sse(message)
                if sse:
                    self._meter.feed(sse)
        except ParserError:
            self._broken = True  # the client gets the bytes anyway; bill what was seen

    @property
    def complete(self) -> bool:
        """The decoded stream's `message_stop` was fed (StreamMeter.complete)."""
        return self._meter.complete

    def finish(self) -> Metered:
        return self._meter.finish()


def frame_sse(message: EventStreamMessage, provider: str = "") -> bytes:
    """One event-stream message as Anthropic SSE bytes ("" for frames that carry none). An
    exception's text, for a client (`provider` named), follows the rule of provider errors
    (`public_message`); the meter reads only its type."""
    headers = message.headers
    if headers.get(":message-type") == "event":
        if headers.get(":event-type") != "chunk":
            return b""
        try:
            event = base64.b64decode(orjson.loads(message.payload)["bytes"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return b""
        return b"event: " + _event_name(event) + b"\ndata: " + event + b"\n\n"
    error = _frame_error(message)
    if error is None:
        return b""
    kind, text = error
    if provider:
        text = public_message(provider, "failed mid-stream", kind, text)
    body = error_body(kind, text)
    return b"event: error\ndata: " + body + b"\n\n"


def _frame_error(message: EventStreamMessage) -> tuple[str, str] | None:
    """The Anthropic error type and the provider's text of an exception or error frame;
    None for other frames."""
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "exception":
        name = str(headers.get(":exception-type", ""))
        text = _message(message.payload) or name
    elif kind == "error":
        name = str(headers.get(":error-code", ""))
        text = str(headers.get(":error-message", "")) or name
    else:
        return None
    return _ERROR_KINDS.get(name.lower(), "api_error"), text


def public_frame(provider: str, message: EventStreamMessage, raw: bytes) -> bytes:
    """One frame (`raw`, decoded as `message`) as a Bedrock-format client sees it: as it came,
    except an exception's or error's text, which follows the rule of provider errors
    (`public_message`): the frame is re-encoded with the client's text in its place."""
    error = _frame_error(message)
    if error is None:
        return raw
    kind, text = error
    public = public_message(provider, "failed mid-stream", kind, text)
    if public == text:
        return raw
    if message.headers.get(":message-type") == "exception":
        headers = raw[12:12 + message.prelude.headers_length]  # kept as encoded, types and all
        return encode_frame(headers, aws_error(public))
    # An error frame's text is a header; its headers are strings (AWS event-stream spec).
    return encode_message({**{name: str(value) for name, value in message.headers.items()},
                           ":error-message": public}, message.payload)


async def public_stream(provider: str, response: aiohttp.ClientResponse,
                        first: bytes) -> AsyncIterator[bytes]:
    """Bedrock's event stream for a Bedrock-format client: whole frames as they arrive,
    each as `public_frame` has it. A corrupt stream, or one that ends mid-frame, breaks off
    (its frames could not be checked)."""
    decoder, raw = EventStreamBuffer(), bytearray()
    async for chunk in replay(first, response):
        decoder.add_data(chunk)
        raw += chunk
        out: list[bytes] = []
        try:
            for message in decoder:
                length = message.prelude.total_length
                out.append(public_frame(provider, message, bytes(raw[:length])))
                del raw[:length]
        except ParserError as exc:
            raise aiohttp.ClientPayloadError(f"corrupt Bedrock event stream: {exc}") from None
        if out:
            yield b"".join(out)
    if raw:
        raise aiohttp.ClientPayloadError("Bedrock event stream ended mid-frame")


def _event_name(event: bytes) -> bytes:
    if event.startswith(b'{"type":"'):
        end = event.find(b'"', 9)
        if end > 9:
            return event[9:end]
    try:
        doc = orjson.loads(event)
    except orjson.JSONDecodeError:
        return b"message"
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind.encode() if isinstance(kind, str) else b"message"


def _message(payload: bytes) -> str:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", "replace")[:500]
    if isinstance(doc, dict):
        text = doc.get("message") or doc.get("Message")
        if isinstance(text, str):
            return text
    return ""


def _error(response: aiohttp.ClientResponse, payload: bytes) -> tuple[str, str]:
    """The Anthropic error type and the provider's text of a Bedrock error answer."""
    name = response.headers.get("x-amzn-errortype", "").split(":", 1)[0]
    if not name:
        try:
            doc = orjson.loads(payload)
            name = str(doc.get("__type", "")).rsplit("#", 1)[-1] if isinstance(doc, dict) else ""
        except orjson.JSONDecodeError:
            name = ""
    kind = _ERROR_KINDS.get(name.lower()) or error_type(response.status)
    return kind, _message(payload) or name


def _error_body(provider: str, response: aiohttp.ClientResponse, payload: bytes) -> bytes:
    return public_error(provider, response.status, *_error(response, payload))


async def _translated_error(provider: str, response: aiohttp.ClientResponse,
                            first: bytes) -> AsyncIterator[bytes]:
    payload = first + await response.read()
    yield _error_body(provider, response, payload)


def aws_error(message: str) -> bytes:
    """An error body in Bedrock's own shape."""
    return orjson.dumps({"message": message})


async def _native_error(provider: str, response: aiohttp.ClientResponse,
                        first: bytes) -> AsyncIterator[bytes]:
    kind, text = _error(response, first + await response.read())
    yield aws_error(public_message(provider, f"answered {response.status}", kind, text))


def _error_headers(response: aiohttp.ClientResponse) -> CIMultiDict[str]:
    headers = response_headers(response.headers.items())
    headers.popall("content-type", None)
    headers["content-type"] = "application/json"
    if response.status in (429, 500, 503):
        headers.setdefault("x-should-retry", "true")
    _request_id(response, headers)
    return headers


def _request_id(response: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> None:
    rid = response.headers.get("x-amzn-requestid")
    if rid and "request-id" not in headers:
        headers["request-id"] = rid
