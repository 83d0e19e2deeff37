"""Clients that speak a provider's own format: Claude Code with CLAUDE_CODE_USE_BEDROCK=1 and
ANTHROPIC_BEDROCK_BASE_URL=<meterd>/bedrock (or CLAUDE_CODE_USE_VERTEX=1 and
ANTHROPIC_VERTEX_BASE_URL=<meterd>/vertex/v1), with CLAUDE_CODE_SKIP_*_AUTH=1 so it sends its
gateway key as `Authorization: Bearer` (from ANTHROPIC_AUTH_TOKEN or AWS_BEARER_TOKEN_BEDROCK).

meterd authenticates the key, admits, forwards the body unchanged to a configured provider of
that kind (signed with the organization's credential), relays the answer unchanged (Bedrock's
event stream included) but for the provider's error text (`Provider.native`), and meters a
decoded copy of it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
from aiohttp import web

from proxy.errors import ProxyError, upstream_failure
from proxy.handlers import Relay, check_model
from proxy.providers.base import CannotCount, Outbound, Provider, Relayed, not_countable
from proxy.providers.bedrock import EVENT_STREAM, BedrockProvider, EventStreamMeter
from proxy.providers.routing import first_answer
from proxy.providers.vertex import VertexProvider
from proxy.request_fields import read_fields, request_model
from proxy.state import STATE, ProxyState

_BEDROCK_ACTIONS = {"invoke": False, "invoke-with-response-stream": True}
# The request to one provider of the chain, for the client's body. The body is an argument,
# not captured: the handler hands it over in the relay, which lets go of it once sent.
Build = Callable[[Provider, bytes], Awaitable[Outbound]]
P = TypeVar("P", bound=Provider)


class EventStreamRelay(Relay):
    """A relay whose streamed answer is Bedrock's event stream, metered by decoding a copy."""

    stream_type = EVENT_STREAM
    stream_meter = EventStreamMeter


class Passthrough:
    """The route of a provider-format request: the configured providers of that kind, in
    route order with the same fallback, each sent the client's body unchanged."""

    def __init__(self, chain: Sequence[Provider], build: Build) -> None:
        self.chain, self.build = chain, build

    async def open(self, relay: Relay, body: bytes) -> Relayed:
        relay.served, response = await first_answer(
            relay.state.session, self.chain, lambda provider: self.build(provider, body),
            relay.stream, translate=False, passed=relay.state.metrics.fallbacks)
        return response  # type: ignore[no-any-return]


def _of_kind(provider: Provider, cls: type[P]) -> P:
    """`provider` as the class its route's kind promises (`_chain` picks by kind)."""
    if not isinstance(provider, cls):
        raise TypeError(f"provider {provider.name} of a {cls.kind} chain is a {provider.kind} "
                        "provider")
    return provider


def _chain(state: ProxyState, kind: str, model: str) -> tuple[Provider, ...]:
    router = state.router
    chain = router.table.chain_of_kind(kind, model) if router is not None else ()
    if not chain:
        raise ProxyError(404, "not_found_error",
                         f"this gateway has no {kind} provider configured; use "
                         "ANTHROPIC_BASE_URL instead")
    return chain


async def bedrock_invoke(request: web.Request) -> web.StreamResponse:
    """POST /bedrock/model/{model}/invoke[-with-response-stream]."""
    state = request.app[STATE]
    started, t0 = state.gate.clock(), time.monotonic()
    principal = state.authenticate(request.headers)
    stream = _BEDROCK_ACTIONS.get(request.match_info["action"])
    if stream is None:
        raise ProxyError(404, "not_found_error", f"not found: POST {request.path}")
    model = request.match_info["model"]
    body = await request.read()
    chain = _chain(state, "bedrock", model)
    action = request.match_info["action"]

    def build(provider: Provider, body: bytes) -> Awaitable[Outbound]:
        return _of_kind(provider, BedrockProvider).passthrough(model, action, body)

    allowance = read_fields(body).allowance  # the stream flag is in the URL
    relay = EventStreamRelay(state, request, model, stream, t0, body)
    del body  # the relay lets go of it once the provider has it
    relay.route = Passthrough(chain, build)
    return await relay.serve(principal, allowance, started)


async def bedrock_count_tokens(request: web.Request) -> web.StreamResponse:
    """POST /bedrock/model/{model}/count-tokens: forwarded for any valid key, never metered."""
    state = request.app[STATE]
    model = request.match_info["model"]
    check_model(state.authenticate(request.headers), model)
    body = await request.read()

    def build(provider: Provider, body: bytes) -> Awaitable[Outbound]:
        return _of_kind(provider, BedrockProvider).passthrough(model, "count-tokens", body)

    return await _forward(state, _chain(state, "bedrock", model), build, body, model)


async def bedrock_inference_profiles(request: web.Request) -> web.Response:
    """GET /bedrock/inference-profiles: Claude Code asks (without a credential) at start;
    the gateway names none, so it uses the model ids it was configured with."""
    return web.json_response({"inferenceProfileSummaries": []})


async def vertex_predict(request: web.Request) -> web.StreamResponse:
    """POST /vertex/v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:{method}
    (rawPredict, streamRawPredict, and count-tokens:rawPredict)."""
    state = request.app[STATE]
    started, t0 = state.gate.clock(), time.monotonic()
    principal = state.authenticate(request.headers)
    tail = request.match_info["tail"]
    model, _, method = tail.partition(":")
    body = await request.read()
    chain = _chain(state, "vertex", model)
    headers = request.headers

    def build(provider: Provider, body: bytes) -> Awaitable[Outbound]:
        return _of_kind(provider, VertexProvider).passthrough(tail, headers, body)

    if model == "count-tokens":  # the model is in the body
        if principal.models is not None:
            check_model(principal, request_model(body))
        return await _forward(state, chain, build, body, request_model(body))
    if method not in ("rawPredict", "streamRawPredict"):
        raise ProxyError(404, "not_found_error", f"not found: POST {request.path}")
    _, stream, allowance, _ = read_fields(body)
    relay = Relay(state, request, model, stream, t0, body)
    del body  # the relay lets go of it once the provider has it
    relay.route = Passthrough(chain, build)
    return await relay.serve(principal, allowance, started)


async def _forward(state: ProxyState, chain: Sequence[Provider], build: Build,
                   body: bytes, model: str) -> web.Response:
    """Forward an unmetered request (count-tokens) along the chain; answer it unchanged."""
    try:
        _, response = await first_answer(state.session, chain,
                                         lambda provider: build(provider, body), False,
                                         translate=False, passed=state.metrics.fallbacks)
        payload = b"".join([chunk async for chunk in response.iter_any()])
    except CannotCount:
        raise not_countable(model) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise upstream_failure(exc) from None
    response.release()
    return web.Response(status=response.status, body=payload, headers=response.headers)


def setup_provider_routes(app: web.Application) -> None:
    """The Bedrock- and Vertex-format paths (Claude Code's CLAUDE_CODE_USE_BEDROCK/VERTEX)."""
    app.router.add_post("/bedrock/model/{model}/count-tokens", bedrock_count_tokens)
    app.router.add_post("/bedrock/model/{model}/{action}", bedrock_invoke)
    app.router.add_get("/bedrock/inference-profiles", bedrock_inference_profiles)
    app.router.add_post(
        "/vertex/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{tail}",
        vertex_predict)
