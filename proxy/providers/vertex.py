"""Google Vertex AI: Messages requests as `:rawPredict` / `:streamRawPredict`.

The model moves into the path and `anthropic_version` into the body; betas stay in the
`anthropic-beta` header. Answers are Anthropic JSON and SSE already, so they pass unchanged,
except Google-format error bodies, which become the Anthropic envelope, and a stream's error
events, whose text follows the rule of provider errors (`sse_errors`). The bearer token comes
from a service account (google-auth), cached until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from ledger.pricing import PriceTable
from proxy.envelope import error_type
from proxy.providers.base import (
    CREDENTIAL_REFUSED,
    CloudProvider,
    Multiplier,
    Outbound,
    ProviderUnavailable,
    Relayed,
    foreign_form,
    platform_betas,
    public_error,
    public_message,
    replay,
    table_model,
)
from proxy.providers.sse_errors import SSE, public_errors
from proxy.upstream import AnthropicUpstream, response_headers

log = logging.getLogger("meterd.providers")

ANTHROPIC_VERSION = "vertex-2023-10-16"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Bare model id -> Vertex model id, from Claude Code's model catalog; newer models use the
# bare id. Configuration extends or overrides.
DEFAULT_MODELS: Mapping[str, str] = {
    "claude-3-haiku": "claude-3-haiku@20240307",
    "claude-3-5-haiku": "claude-3-5-haiku@20241022",
    "claude-3-5-sonnet": "claude-3-5-sonnet-v2@20241022",
    "claude-3-7-sonnet": "claude-3-7-sonnet@20250219",
    "claude-haiku-4-5": "claude-haiku-4-5@20251001",
    "claude-sonnet-4": "claude-sonnet-4@20250514",
    "claude-sonnet-4-0": "claude-sonnet-4@20250514",
    "claude-sonnet-4-5": "claude-sonnet-4-5@20250929",
    "claude-opus-4": "claude-opus-4@20250514",
    "claude-opus-4-0": "claude-opus-4@20250514",
    "claude-opus-4-1": "claude-opus-4-1@20250805",
    "claude-opus-4-5": "claude-opus-4-5@20251101",
}
# The request-tags beta, and the betas Claude Code's native Vertex mode
# (CLAUDE_CODE_USE_VERTEX) never sends, recorded from the pinned Claude Code
# (tests/test_providers_native_betas.py).
DEFAULT_DROP_BETAS: tuple[str, ...] = (
    "request-tags-2026-08-21", "context-management-2025-06-27",
    "mid-conversation-tool-changes-2026-07-01", "thinking-token-count-2026-05-13")
DEFAULT_DROP_FIELDS: tuple[str, ...] = ("tags", "context_management")
# As the native mode sends them: tool search under its Vertex name, and Claude Code's requests
# with the web-search beta that Vertex needs for its web search tool.
RENAME_BETAS: Mapping[str, tuple[str, ...]] = {
    "advanced-tool-use-2025-11-20": ("tool-search-tool-2025-10-19",),
    "claude-code-20250219": ("claude-code-20250219", "web-search-2025-03-05")}
_GOOGLE_KINDS = {
    "INVALID_ARGUMENT": "invalid_request_error", "FAILED_PRECONDITION": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error", "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error", "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error", "DEADLINE_EXCEEDED": "timeout_error",
    "INTERNAL": "api_error",
}


class TokenSource:
    """OAuth access tokens from google-auth credentials (a service account, or the
    environment's default credentials), made on first use and refreshed when missing or
    about to expire, in a thread (both may do network I/O), one refresh at a time."""

    def __init__(self, credentials: Callable[[], Any]) -> None:
        self._make = credentials
        self.credentials: Any = None
        self._lock: asyncio.Lock | None = None
        self._request: Any = None

    async def token(self) -> str:
        credentials = self.credentials
        if credentials is None or not credentials.valid:  # near expiry counts as invalid
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self.credentials is None or not self.credentials.valid:
                    await asyncio.to_thread(self._refresh)
            credentials = self.credentials
        return str(credentials.token)

    def _refresh(self) -> None:
        import google.auth.exceptions
        import urllib3
        from google.auth.transport.urllib3 import Request

        if self._request is None:
            self._request = Request(urllib3.PoolManager())
        try:
            if self.credentials is None:
                self.credentials = self._make()
            self.credentials.refresh(self._request)
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            log.warning("Vertex token refresh failed: %s", exc)
            raise ProviderUnavailable(f"Vertex token refresh failed: {exc}") from None


class StaticToken:
    """A fixed bearer token (e.g. for a Vertex-format gateway in front of Vertex)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token


def default_base_url(region: str) -> str:
    if region == "global":
        return "https://aiplatform.googleapis.com/v1"
    if region in ("us", "eu"):
        return f"https://aiplatform.{region}.rep.googleapis.com/v1"
    return f"https://{region}-aiplatform.googleapis.com/v1"


class VertexProvider(CloudProvider):
    """Claude on Vertex AI in one project and region."""

    kind = "vertex"

    def __init__(self, name: str, project: str, tokens: TokenSource | StaticToken,
                 region: str = "global", base_url: str = "",
                 models: Mapping[str, str] | None = None,
                 anthropic_version: str = ANTHROPIC_VERSION,
                 drop_betas: Iterable[str] = DEFAULT_DROP_BETAS,
                 drop_fields: Iterable[str] = DEFAULT_DROP_FIELDS,
                 multiplier: Multiplier | None = None, prices: PriceTable | None = None) -> None:
        super().__init__(name, base_url or default_base_url(region),
                         {**DEFAULT_MODELS, **(models or {})}, anthropic_version, drop_betas,
                         drop_fields, multiplier, prices)
        self.rename_betas = RENAME_BETAS
        self.project, self.region = project, region
        self.tokens = tokens
        self._headers = AnthropicUpstream(self.base_url, "")  # the header rules, no key
        self._models_url = (f"{self.base_url}/projects/{quote(project, safe='')}/locations/"
                            f"{quote(region, safe='')}/publishers/anthropic/models/")

    def regional(self, model: str) -> bool:
        """A region (or a multi-region such as `us`) rather than the global endpoint."""
        return self.region != "global"

    def model_id(self, model: str) -> str:
        """The Vertex model id for a client's model name (ids with `@` pass as given; a
        Bedrock-form id or ARN becomes the model it names)."""
        if "@" in model:
            return model
        if foreign_form(model):
            model = self.bare_model(model)
        return table_model(self.models, model) or model

    async def messages(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                       model: str, stream: bool) -> Outbound:
        doc = self.platform_body(body)
        doc.pop("model", None)
        method = "streamRawPredict" if stream else "rawPredict"
        url = f"{self._models_url}{quote(self.model_id(model), safe='@')}:{method}"
        return Outbound(url, await self._request_headers(headers), orjson.dumps(doc))

    async def count_tokens(self, path_qs: str, headers: CIMultiDictProxy[str],
                           body: bytes, model: str) -> Outbound:
        doc = self.platform_body(body)
        doc["model"] = self.model_id(model)
        url = f"{self._models_url}count-tokens:rawPredict"
        return Outbound(url, await self._request_headers(headers), orjson.dumps(doc))

    async def passthrough(self, tail: str, headers: CIMultiDictProxy[str],
                          body: bytes) -> Outbound:
        """A Vertex-format client's request (`{model}:{method}` after `.../models/`), body
        unchanged, sent to this provider's project and region."""
        return Outbound(self._models_url + quote(tail, safe="@:"),
                        await self._request_headers(headers), body)

    async def _request_headers(self, incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        headers = self._headers.request_headers(incoming.items())
        platform_betas(headers, self.drop_betas, self.rename_betas)
        headers["authorization"] = f"Bearer {await self.tokens.token()}"
        return headers

    def respond(self, response: aiohttp.ClientResponse, stream: bool,
                first: bytes = b"") -> Relayed:
        if response.status < 400:
            return self._answer(response, first)
        headers = response_headers(response.headers.items())
        headers.popall("content-type", None)
        headers["content-type"] = "application/json"
        return Relayed(response, _translated_error(self.name, response, first), headers=headers,
                       content_type="application/json")

    def native(self, response: aiohttp.ClientResponse, stream: bool,
               first: bytes = b"") -> Relayed:
        """Vertex's answer for a Vertex-format client: errors in the shape Vertex gave them
        (`vertex_error`), everything else unchanged."""
        if response.status < 400:
            return self._answer(response, first)
        if response.status in CREDENTIAL_REFUSED:
            return super().native(response, stream, first)
        headers = response_headers(response.headers.items())
        headers.popall("content-type", None)
        headers["content-type"] = "application/json"
        return Relayed(response, _native_error(self.name, response, first), headers=headers,
                       content_type="application/json")

    def _answer(self, response: aiohttp.ClientResponse, first: bytes) -> Relayed:
        """A successful answer: unchanged, but for a stream's error events (`public_errors`)."""
        chunks = replay(first, response)
        if response.content_type == SSE:
            chunks = public_errors(self.name, chunks)
        return Relayed(response, chunks)

    async def count_tokens_answer(self, response: aiohttp.ClientResponse,
                                  payload: bytes) -> tuple[int, bytes]:
        if response.status >= 400:
            return response.status, as_anthropic_error(self.name, response.status, payload)
        return response.status, payload


def vertex_error(provider: str, status: int, payload: bytes) -> bytes:
    """A Vertex error body for a Vertex-format client, in the shape Vertex gave it: Google's
    (`{"error": {code, message, status}}`, or a list of one) with the message `public_message`
    allows and without `details` (which name projects and accounts), else `as_anthropic_error`'s
    envelope."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    one = doc[0] if isinstance(doc, list) and doc else doc
    error = one.get("error") if isinstance(one, dict) and one.get("type") != "error" else None
    if not isinstance(error, dict):
        return as_anthropic_error(provider, status, payload)
    kind = _GOOGLE_KINDS.get(str(error.get("status", ""))) or error_type(status)
    public = {"error": {"code": error.get("code", status), "message": public_message(
        provider, f"answered {status}", kind, str(error.get("message", ""))),
        "status": error.get("status", "")}}
    return orjson.dumps([public] if isinstance(doc, list) else public)


def as_anthropic_error(provider: str, status: int, payload: bytes) -> bytes:
    """An Anthropic error envelope for a Vertex error body: an Anthropic envelope's 400/413
    as it is (`prompt is too long: ...`), otherwise `public_error`'s."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return public_error(provider, status, error_type(status),
                            payload.decode("utf-8", "replace"))
    if isinstance(doc, dict) and doc.get("type") == "error":
        error = doc.get("error")
        if status in (400, 413):
            return payload
        if isinstance(error, dict):
            return public_error(provider, status, str(error.get("type") or error_type(status)),
                                str(error.get("message", "")))
    if isinstance(doc, list) and doc:
        doc = doc[0]
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        kind = _GOOGLE_KINDS.get(str(error.get("status", ""))) or error_type(status)
        return public_error(provider, status, kind, str(error.get("message", "")))
    return public_error(provider, status, error_type(status), "")


async def _translated_error(provider: str, response: aiohttp.ClientResponse,
                            first: bytes) -> AsyncIterator[bytes]:
    yield as_anthropic_error(provider, response.status, first + await response.read())


async def _native_error(provider: str, response: aiohttp.ClientResponse,
                        first: bytes) -> AsyncIterator[bytes]:
    yield vertex_error(provider, response.status, first + await response.read())
