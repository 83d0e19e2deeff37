"""The one interface every provider implements, and the response shape the relay reads.

A provider turns the client's Anthropic-format request into its own (URL, headers, body) and
its answer back into Anthropic-format bytes. For Anthropic-format endpoints both directions are
the identity and the body goes on byte-for-byte; Bedrock and Vertex re-serialize the body.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any, ClassVar

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ledger.pricing import Cost, PriceTable, ServerTool, normalise_model_id
from ledger.usage import Usage
from proxy.envelope import error_body
from proxy.errors import ProxyError
from proxy.upstream import response_headers

log = logging.getLogger("meterd.providers")

# A provider's 401/403 is about the organization's credential, never the developer's.
CREDENTIAL_REFUSED = frozenset({401, 403})
# Provider error messages the client's recovery reads (Claude Code compacts on "prompt is too
# long", Bedrock's "Input is too long." and Vertex's request-size sentence): relayed as they
# are. Every other provider message may quote what it was sent (an AWS signature mismatch
# quotes the canonical request, session token included): the operator's log gets it.
_KEPT = re.compile(r"prompt is too long|Input is too long\.$|"
                   r"Request payload size exceeds the limit: \d+ bytes\.$")


class ProviderUnavailable(aiohttp.ClientError):
    """The provider cannot be called at all (no credential, token refresh failed). A subclass
    of ClientError so the relay and the router treat it like an unreachable provider."""


Multiplier = Fraction | Mapping[str, Fraction]  # one for all models, or per model glob


class CannotCount(ProviderUnavailable):
    """The provider cannot count tokens for this model (a Bedrock application inference
    profile has no foundation model to count with): the next provider may; if none can,
    the client is told `not_supported` and counts by itself."""


def not_countable(model: str) -> ProxyError:
    return ProxyError(501, "not_supported", f"no provider can count tokens for {model!r}",
                      headers={"x-should-retry": "false"})


@dataclass(frozen=True, slots=True)
class Outbound:
    """One request to a provider, ready to send on the shared session."""

    url: str | URL
    headers: CIMultiDict[str] | dict[str, str]
    body: bytes


class Provider(ABC):
    """A place Messages requests can be served: its name (recorded on every event it served),
    the route multiplier and optional price overrides it is priced with."""

    kind: ClassVar[str]

    def __init__(self, name: str, multiplier: Multiplier | None = None,
                 prices: PriceTable | None = None) -> None:
        self.name = name
        # Set by hand, it prices the requests this provider serves (all, or per model glob), in
        # place of the regional premium; None: the premium applies where `regional` says so.
        self.multiplier = multiplier
        self.prices = prices  # None: the gateway's table
        # Configured ARNs (application inference profiles) -> the model name they serve, from
        # every provider of the routing table: what a Bedrock-form client's ARN means
        # elsewhere on its route.
        self.aliases: Mapping[str, str] = {}

    def bare_model(self, model: str) -> str:
        """The Anthropic model name of a Bedrock- or Vertex-form id or ARN."""
        return self.aliases.get(model) or normalise_model_id(model)

    def multiplier_for(self, model: str) -> Fraction | None:
        """The multiplier set by hand for `model`: the provider's, or the first model glob's
        (as routes match) that matches it; None: none set."""
        multiplier = self.multiplier
        if multiplier is None or isinstance(multiplier, Fraction):
            return multiplier
        bare = normalise_model_id(model)
        for pattern, factor in multiplier.items():
            if fnmatchcase(model.lower(), pattern.lower()) or fnmatchcase(bare, pattern.lower()):
                return factor
        return None

    def regional(self, model: str) -> bool:
        """Whether this provider serves `model` from a regional (not global) endpoint, which
        costs more for the models whose price row says so (Bedrock, Vertex)."""
        return False

    def cost(self, prices: PriceTable, model: str, usage: Usage) -> Cost:
        """What a request this provider served cost."""
        table = self.prices or prices
        multiplier = self.multiplier_for(model)
        if multiplier is not None:
            return table.cost(model, usage, multiplier)
        return table.cost(model, usage, regional=self.regional(model))

    def worst_case(self, prices: PriceTable, model: str, prompt_tokens: int, max_tokens: int,
                   tools: tuple[ServerTool, ...]) -> int:
        """The most in µ$ a request may cost if this provider serves it (PriceTable.worst_case)."""
        table = self.prices or prices
        multiplier = self.multiplier_for(model)
        if multiplier is not None:
            return table.worst_case(model, prompt_tokens, max_tokens, multiplier, tools)
        return table.worst_case(model, prompt_tokens, max_tokens, tools=tools,
                                regional=self.regional(model))

    @abstractmethod
    async def messages(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                       model: str, stream: bool) -> Outbound:
        """The provider request for a client's `POST /v1/messages`."""

    @abstractmethod
    async def count_tokens(self, path_qs: str, headers: CIMultiDictProxy[str],
                           body: bytes, model: str) -> Outbound:
        """The provider request for `POST /v1/messages/count_tokens`."""

    def respond(self, response: aiohttp.ClientResponse, stream: bool,
                first: bytes = b"") -> Relayed:
        """The provider's answer as the client sees it (`first`: bytes already read from it)."""
        return Relayed(response, replay(first, response))

    def native(self, response: aiohttp.ClientResponse, stream: bool,
               first: bytes = b"") -> Relayed:
        """The provider's answer as a client that speaks the provider's own format sees it
        (the passthrough paths): unchanged, but for a refused credential; a provider whose
        errors or streams carry its text overrides this."""
        if response.status in CREDENTIAL_REFUSED:
            return refused_credential(self, response, first)
        return Relayed(response, replay(first, response))

    async def count_tokens_answer(self, response: aiohttp.ClientResponse,
                                  payload: bytes) -> tuple[int, bytes]:
        """Status and Anthropic-format body of a count_tokens answer."""
        return response.status, payload

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def public_message(provider: str, what: str, kind: str, text: str) -> str:
    """The message a developer sees for a provider's error of type `kind` (`what` happened,
    e.g. "answered 400"): the provider's text when the client's recovery needs it, else a
    generic one. The provider's own text goes to the operator's log."""
    log.warning("provider %s %s %s: %s", provider, what, kind, text[:2000])
    if _KEPT.match(text):
        return text
    return f"provider {provider} {what} ({kind}); the gateway's log has its message"


def public_error(provider: str, status: int, kind: str, text: str) -> bytes:
    """The error body a developer sees for a provider's error answer (`public_message`),
    with the same `error.type`."""
    return error_body(kind, public_message(provider, f"answered {status}", kind, text))


def _api_error(message: str) -> bytes:
    return error_body("api_error", message)


def refused_credential(provider: Provider, response: aiohttp.ClientResponse,
                       first: bytes = b"",
                       render: Callable[[str], bytes] = _api_error) -> Relayed:
    """A provider's 401/403 as the client sees it: a 502 `api_error` (the gateway's credential
    was refused, which no retry or re-login of the developer's fixes), the provider's text
    logged for the operator. `render` makes the body from the message, in the client's
    format (the Anthropic envelope unless told)."""

    async def body() -> AsyncIterator[bytes]:
        payload = first + await response.read()
        log.warning("provider %s refused the gateway's credential (%d): %s", provider.name,
                    response.status, payload[:2000].decode("utf-8", "replace"))
        yield render(f"provider {provider.name} refused the gateway's credential; an operator "
                     "must fix its configuration")

    headers: CIMultiDict[str] = CIMultiDict({"content-type": "application/json"})
    rid = response.headers.get("request-id") or response.headers.get("x-amzn-requestid")
    if rid:
        headers["request-id"] = rid
    return Relayed(response, body(), status=502, headers=headers,
                   content_type="application/json")


class Relayed:
    """An upstream response as the client is to see it, with the surface of aiohttp's
    ClientResponse that the relay reads (status, headers, content_type, content.iter_any(),
    close(), release())."""

    __slots__ = ("_chunks", "_response", "content", "content_type", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, chunks: AsyncIterator[bytes],
                 status: int | None = None, headers: CIMultiDict[str] | None = None,
                 content_type: str | None = None) -> None:
        self._response = response
        self._chunks = chunks
        self.status = response.status if status is None else status
        self.headers = response_headers(response.headers.items()) if headers is None \
            else headers
        self.content_type = response.content_type if content_type is None else content_type
        self.content = self

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._chunks

    def close(self) -> None:
        closer = getattr(self._chunks, "cancel", None)
        if closer is not None:
            closer()
        self._response.close()

    def release(self) -> None:
        self._response.release()


async def replay(first: bytes, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body unchanged, starting with what was already read of it."""
    if first:
        yield first
    async for chunk in response.content.iter_any():
        yield chunk


def merge_betas(header: str | None, body_betas: Any, drop: Iterable[str] = (),
                rename: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """Beta values from the `anthropic-beta` header and a body `anthropic_beta` list, in
    order, without repeats, minus `drop`, each in `rename` replaced by its values. An open
    list: everything else passes."""
    dropped = set(drop)
    out: list[str] = []
    values: list[Any] = list(body_betas) if isinstance(body_betas, list) else []
    if header:
        values.extend(header.split(","))
    for value in values:
        beta = str(value).strip()
        for name in (rename or {}).get(beta, (beta,)):
            if name and name not in dropped and name not in out:
                out.append(name)
    return out


def platform_betas(headers: CIMultiDict[str], drop: Iterable[str],
                   rename: Mapping[str, tuple[str, ...]]) -> None:
    """The `anthropic-beta` header of a request to a platform that takes its betas there
    (Vertex, Foundry), rewritten in place as Claude Code's native mode for it sends them
    (`merge_betas`); none left, no header."""
    betas = merge_betas(",".join(headers.popall("anthropic-beta", ())), None, drop, rename)
    if betas:
        headers["anthropic-beta"] = ",".join(betas)


def foreign_form(model: str) -> bool:
    """Whether a model id is in a cloud platform's form (Bedrock id or ARN, Vertex `@`)."""
    return "anthropic." in model or model.startswith("arn:") or "@" in model


def load_json(body: bytes) -> dict[str, Any]:
    """The request body as a dict (the handler checked it is a JSON object, but a 400 here
    rather than a crash if a new path forgets to)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise ProxyError(400, "invalid_request_error", "request body must be a JSON object")
    return doc


def table_model(models: Mapping[str, str], model: str) -> str | None:
    """The provider's id for a client's model name from a model table (the name as sent, or
    its normalised form), None if the table has neither."""
    return models.get(model) or models.get(normalise_model_id(model))


class CloudProvider(Provider):
    """A cloud platform's Claude (Bedrock, Vertex): the model goes in the URL, so the body is
    rebuilt with the platform's `anthropic_version`, without the fields and betas it refuses."""

    def __init__(self, name: str, base_url: str, models: Mapping[str, str],
                 anthropic_version: str, drop_betas: Iterable[str], drop_fields: Iterable[str],
                 multiplier: Multiplier | None, prices: PriceTable | None) -> None:
        super().__init__(name, multiplier, prices)
        self.base_url = base_url.rstrip("/")
        self.models = dict(models)  # the platform's defaults with configuration over them
        self.anthropic_version = anthropic_version
        self.drop_betas = frozenset(drop_betas)
        self.drop_fields = tuple(drop_fields)
        # Betas whose name on this platform differs from the Anthropic API's, as Claude Code's
        # native mode for the platform sends them.
        self.rename_betas: Mapping[str, tuple[str, ...]] = {}

    def platform_body(self, body: bytes) -> dict[str, Any]:
        """The client's body with the platform's `anthropic_version` (unless it names one) and
        without the fields the platform refuses."""
        doc = load_json(body)
        doc.setdefault("anthropic_version", self.anthropic_version)
        for name in self.drop_fields:
            doc.pop(name, None)
        return doc
