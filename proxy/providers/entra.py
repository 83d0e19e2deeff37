"""Microsoft Entra ID access tokens for Claude on Foundry, from azure-identity.

The credential is azure-identity's async `DefaultAzureCredential` (a service principal from
AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET, workload or managed identity, the
Azure CLI), which caches each token and fetches the next one shortly before it expires.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from proxy.providers.base import ProviderUnavailable

log = logging.getLogger("meterd.providers")

SCOPE = "https://cognitiveservices.azure.com/.default"


class EntraTokens:
    """Bearer tokens for one provider from an azure-identity async credential."""

    def __init__(self, credential: Any) -> None:
        self.credential = credential
        self._lock: asyncio.Lock | None = None

    async def token(self) -> str:
        from azure.core.exceptions import AzureError

        if self._lock is None:
            self._lock = asyncio.Lock()
        # One caller at a time: the first fetches, the others then find it in the cache.
        async with self._lock:
            try:
                return str((await self.credential.get_token(SCOPE)).token)
            except AzureError as exc:
                log.warning("Microsoft Entra ID token for Foundry failed: %s", exc)
                raise ProviderUnavailable(f"Entra ID token failed: {exc}") from None


def default_credential(session: aiohttp.ClientSession | None) -> Any:
    """azure-identity's default chain, its token requests on the gateway's upstream session
    when there is one (the one session per process; azure-core decompresses by itself)."""
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.identity.aio import DefaultAzureCredential

    if session is None:
        return DefaultAzureCredential()
    return DefaultAzureCredential(transport=AioHttpTransport(session=session,
                                                             session_owner=False))
