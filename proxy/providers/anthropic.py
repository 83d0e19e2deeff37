"""Anthropic-format endpoints: the Anthropic API, Foundry, Claude Platform on AWS, other gateways.

Requests and answers pass unchanged (the body byte-for-byte), with the client's credential
replaced by the provider's; `proxy.upstream.AnthropicUpstream` holds the header rules.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from ledger.pricing import PriceTable
from proxy.providers.base import (
    Multiplier,
    Outbound,
    Provider,
    foreign_form,
    load_json,
    platform_betas,
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


# Betas as Claude Code's native Foundry mode (CLAUDE_CODE_USE_FOUNDRY) sends them, recorded
# from the pinned Claude Code (tests/test_providers_native_betas.py): its requests with the
# web-search beta besides, as its native Vertex mode's. It sends no beta the gateway mode
# does not, and the same body fields: the body goes on unchanged.
FOUNDRY_RENAME_BETAS: Mapping[str, tuple[str, ...]] = {
    "claude-code-20250219": ("claude-code-20250219", "web-search-2025-03-05")}


class FoundryProvider(AnthropicProvider):
    """Claude on Microsoft Foundry: the Anthropic Messages API under a resource's
    `/anthropic` path, with the resource's API key (sent as x-api-key) or a Microsoft Entra
    ID token (`tokens`, sent as Bearer), and the betas its native mode sends. Priced with its
    own multiplier like any provider."""

    kind = "foundry"
    rename_betas = FOUNDRY_RENAME_BETAS

    def __init__(self, name: str, base_url: str, key: str = "",
                 tokens: EntraTokens | None = None, models: Mapping[str, str] | None = None,
                 multiplier: Multiplier | None = None, prices: PriceTable | None = None) -> None:
        super().__init__(name, base_url, key, models=models, multiplier=multiplier,
                         prices=prices)
        self.tokens = tokens

    async def messages(self, path_qs: str, headers: CIMultiDictProxy[str], body: bytes,
                       model: str, stream: bool) -> Outbound:
        return await self._for_foundry(self._outbound(path_qs, headers, body, model))

    async def count_tokens(self, path_qs: str, headers: CIMultiDictProxy[str],
                           body: bytes, model: str) -> Outbound:
        return await self._for_foundry(self._outbound(path_qs, headers, body, model))

    async def _for_foundry(self, out: Outbound) -> Outbound:
        """The request with the betas Foundry's native mode sends, and an Entra ID token."""
        headers = CIMultiDict(out.headers)
        platform_betas(headers, (), self.rename_betas)
        if self.tokens is not None:
            headers["authorization"] = f"Bearer {await self.tokens.token()}"
        return Outbound(out.url, headers, out.body)


def foundry_base_url(resource: str) -> str:
    return f"https://{resource}.services.ai.azure.com/anthropic"
