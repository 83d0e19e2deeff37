"""Anthropic-format endpoints: the Anthropic API, Foundry, Claude Platform on AWS, other gateways.

Requests and answers pass unchanged (the body byte-for-byte), with the client's credential
replaced by the provider's; `proxy.upstream.AnthropicUpstream` holds the header rules.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from multidict import CIMultiDictProxy

from ledger.pricing import PriceTable
from proxy.providers.base import (
    Multiplier,
    Outbound,
    Provider,
    foreign_form,
    load_json,
    table_model,
)
from proxy.providers.entra import EntraTokens
from proxy.upstream import AnthropicUpstream


class AnthropicProvider(Provider):
    """An Anthropic Messages API at `base_url`, with a key sent as x-api-key or Bearer."""

    kind = "anthropic"

    def __init__(self, name: str, base_url: str, key: str, auth: str = "x-api-key",
                 extra_headers: Mapping[str, str] | None = None,
                 models: Mapping[str, str] | None = None, multiplier: Multiplier | None = None,
                 prices: PriceTable | None = None) -> None:
        super().__init__(name, multiplier, prices)
        self.upstream = AnthropicUpstream(base_url, key, auth, dict(extra_headers or {}))
        self.models = dict(models or {})  # e.g. a Foundry deployment name per model

    async def messages(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                       model: str, stream: bool) -> Outbound:
        return self._outbound(path_qs, headers, body, model)

    async def count_tokens(self, path_qs: str, headers: CIMultiDictProxy[str],
                           body: bytes, model: str) -> Outbound:
        return self._outbound(path_qs, headers, body, model)

    def _outbound(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                  model: str) -> Outbound:
        upstream = self.upstream
        foreign = foreign_form(model)
        if self.models or foreign:
            # A Bedrock- or Vertex-form id (a fallback from a cloud route) is translated.
            target = self.bare_model(model) if foreign else model
            mapped = table_model(self.models, target) or target
            if mapped != model:
                # Only a configured rename re-serializes the body; otherwise it goes unchanged.
                doc = load_json(body)
                doc["model"] = mapped
                body = orjson.dumps(doc)
        return Outbound(upstream.url(path_qs), upstream.request_headers(headers.items()), body)


class FoundryProvider(AnthropicProvider):
    """Claude on Microsoft Foundry: the Anthropic Messages API under a resource's
    `/anthropic` path, with the resource's API key (sent as x-api-key) or a Microsoft Entra
    ID token (`tokens`, sent as Bearer). Priced with its own multiplier like any provider."""

    kind = "foundry"

    def __init__(self, name: str, base_url: str, key: str = "",
                 tokens: EntraTokens | None = None, models: Mapping[str, str] | None = None,
                 multiplier: Multiplier | None = None, prices: PriceTable | None = None) -> None:
        super().__init__(name, base_url, key, models=models, multiplier=multiplier,
                         prices=prices)
        self.tokens = tokens

    async def messages(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                       model: str, stream: bool) -> Outbound:
        return await self._signed(self._outbound(path_qs, headers, body, model))

    async def count_tokens(self, path_qs: str, headers: CIMultiDictProxy[str],
                           body: bytes, model: str) -> Outbound:
        return await self._signed(self._outbound(path_qs, headers, body, model))

    async def _signed(self, out: Outbound) -> Outbound:
        if self.tokens is not None:
            out.headers["authorization"] = f"Bearer {await self.tokens.token()}"
        return out


def foundry_base_url(resource: str) -> str:
    return f"https://{resource}.services.ai.azure.com/anthropic"
