"""Which provider serves a request: per-model routes, and an ordered fallback.

A route is a model pattern and a list of providers. A request goes to the first provider of
the first route that matches its model; if that provider cannot be reached, answers 5xx
(529 included), or breaks off before its first byte, the next one is tried. Nothing has
reached the client by then, so the client sees one answer, metered once and attributed to
the provider that gave it. A table is immutable: a reload swaps in a new one, and requests
in flight keep the providers they started with.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import aiohttp
from aiohttp import web

from ledger.pricing import normalise_model_id
from proxy.envelope import error_body
from proxy.providers.base import (
    CREDENTIAL_REFUSED,
    CannotCount,
    Outbound,
    Provider,
    Relayed,
    not_countable,
    refused_credential,
)
from proxy.upstream import response_headers

log = logging.getLogger("meterd.providers")

_CACHE_LIMIT = 1024  # distinct model strings remembered; clients choose them, so bound it
_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class Route:
    """Requests whose model matches `match` (a glob, e.g. `claude-opus-*`) go to `providers`,
    in order."""

    match: str
    providers: tuple[Provider, ...]

    def matches(self, model: str) -> bool:
        pattern = self.match.lower()
        lowered = model.lower()
        return fnmatchcase(lowered, pattern) or fnmatchcase(normalise_model_id(lowered), pattern)


class RoutingTable:
    """The configured providers by name and the routes over them. A model no route matches
    goes to every provider in the order they were configured."""

    def __init__(self, providers: Mapping[str, Provider], routes: Sequence[Route] = ()) -> None:
        if not providers:
            raise ValueError("a routing table needs at least one provider")
        self.providers = dict(providers)
        self.routes = tuple(routes)
        self.default = tuple(self.providers.values())
        aliases = {mapped: name for p in self.default
                   for name, mapped in getattr(p, "models", {}).items()
                   if mapped.startswith("arn:")}
        for provider in self.default:
            provider.aliases = aliases
        self._chains: dict[str, tuple[Provider, ...]] = {}

    def chain(self, model: str) -> tuple[Provider, ...]:
        """The providers to try for a model, in order."""
        chain = self._chains.get(model)
        if chain is None:
            chain = next((r.providers for r in self.routes if r.matches(model)), self.default)
            if len(self._chains) >= _CACHE_LIMIT:
                self._chains.clear()
            self._chains[model] = chain
        return chain

    def listed(self, offered: Sequence[str]) -> list[str]:
        """The models GET /v1/models shows: route by route, the model a route names, or the
        `offered` ids its glob matches; then the `offered` ids no route matches (they reach
        every provider, in order, as with no routes at all)."""
        ids = [m for m in offered if not _GLOB & set(m)]
        out: list[str] = []
        seen: set[str] = set()
        for route in self.routes:
            named = [route.match] if not _GLOB & set(route.match) else [
                m for m in ids if route.matches(m)]
            for model in named:
                if model.lower() not in seen:
                    seen.add(model.lower())
                    out.append(model)
        for model in ids:
            if model.lower() not in seen and not any(r.matches(model) for r in self.routes):
                seen.add(model.lower())
                out.append(model)
        return out

    def chain_of_kind(self, kind: str, model: str) -> tuple[Provider, ...]:
        """The providers of one kind for a model (Bedrock- or Vertex-format clients): those
        its route names, else every provider of that kind."""
        routed = tuple(p for p in self.chain(model) if p.kind == kind)
        return routed or tuple(p for p in self.default if p.kind == kind)


Build = Callable[[Provider], Awaitable[Outbound]]


Fallbacks = Counter[tuple[str, str]]  # (provider passed over, provider tried next)


async def first_answer(session: aiohttp.ClientSession, chain: Sequence[Provider], build: Build,
                       stream: bool, translate: bool = True,
                       passed: Fallbacks | None = None) -> tuple[Provider, Any]:
    """Send to each provider of `chain` in turn until one answers; return it and its answer.

    A provider is passed over (unless it is the last) when it cannot be reached, answers 5xx,
    refuses the organization's credential (401/403), or answers 2xx but closes before the
    first byte of the body. The last provider's failure is the caller's: its exception
    propagates, or its answer is returned as the client sees it (`Provider.respond`, or with
    `translate` false, for a client in the provider's own format, `Provider.native`); a
    refused credential never reaches the client as such.
    """
    last = len(chain) - 1
    for i, provider in enumerate(chain):
        try:
            out = await build(provider)
            response = await session.post(out.url, data=out.body, headers=out.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            if i == last:
                raise
            _passed_over(provider, chain[i + 1], type(exc).__name__, passed)
            continue
        first = b""
        if i < last:
            if response.status >= 500 or response.status in CREDENTIAL_REFUSED:
                response.close()
                _passed_over(provider, chain[i + 1], f"status {response.status}", passed)
                continue
            if response.status < 300:
                try:
                    first = await response.content.readany()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    response.close()
                    _passed_over(provider, chain[i + 1], type(exc).__name__, passed)
                    continue
                if not first:
                    response.close()
                    _passed_over(provider, chain[i + 1], "empty answer", passed)
                    continue
        if not translate:  # the client speaks the provider's format
            return provider, provider.native(response, stream, first)
        if response.status in CREDENTIAL_REFUSED:
            return provider, refused_credential(provider, response, first)
        return provider, provider.respond(response, stream, first)
    raise AssertionError("empty provider chain")


def _passed_over(provider: Provider, next_provider: Provider, why: str,
                 passed: Fallbacks | None) -> None:
    if passed is not None:
        passed[provider.name, next_provider.name] += 1
    log.warning("provider %s failed before answering (%s); trying %s", provider.name, why,
                next_provider.name)


class Router:
    """The routing table in force; `open` serves a relay's request through it."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    async def open(self, relay: Any, body: bytes) -> Relayed:
        """Send the relay's Messages request to its route; record who served it on the relay
        (`served`), which prices and attributes the request by that provider."""
        request, model, stream = relay.request, relay.model, relay.stream
        path_qs, headers = request.path_qs, relay.headers

        def build(provider: Provider) -> Awaitable[Outbound]:
            return provider.messages(path_qs, headers, body, model, stream)

        relay.served, response = await first_answer(
            relay.state.session, self.table.chain(model), build, stream,
            passed=relay.state.metrics.fallbacks)
        return response  # type: ignore[no-any-return]

    async def count_tokens(self, session: aiohttp.ClientSession, request: web.Request,
                           body: bytes, model: str,
                           passed: Fallbacks | None = None) -> web.Response:
        """Forward a count_tokens request along the model's route (same fallback)."""
        chain = self.table.chain(model)
        last = len(chain) - 1
        for i, provider in enumerate(chain):
            try:
                out = await provider.count_tokens(request.path_qs, request.headers, body, model)
                async with session.post(out.url, data=out.body, headers=out.headers) as upstream:
                    payload = await upstream.read()
                    refused = upstream.status in CREDENTIAL_REFUSED
                    if (upstream.status >= 500 or refused) and i < last:
                        _passed_over(provider, chain[i + 1], f"status {upstream.status}", passed)
                        continue
                    if refused:
                        log.warning("provider %s refused the gateway's credential (%d): %s",
                                    provider.name, upstream.status,
                                    payload[:2000].decode("utf-8", "replace"))
                        return web.json_response(status=502, body=error_body(
                            "api_error", f"provider {provider.name} refused the gateway's "
                            "credential; an operator must fix its configuration"))
                    status, answer = await provider.count_tokens_answer(upstream, payload)
                    headers = response_headers(upstream.headers.items())
                    headers["content-type"] = "application/json"
                    return web.Response(status=status, body=answer, headers=headers)
            except (TimeoutError, aiohttp.ClientError) as exc:
                if i == last:
                    if isinstance(exc, CannotCount):
                        raise not_countable(model) from None
                    raise
                _passed_over(provider, chain[i + 1], type(exc).__name__, passed)
        raise AssertionError("empty provider chain")
