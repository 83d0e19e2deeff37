"""What the proxy holds for its life: the policy snapshot, the gate, the upstream session."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy
from redis.exceptions import RedisError

from ledger import ops_counts
from ledger.gate import Estimate, Gate
from ledger.keyspace import KeySpace
from ledger.policy import KeyRefused, Policy, Principal, load_policy
from ledger.pricing import PriceTable, ServerTool
from proxy.access_log import AccessLog
from proxy.metrics import ProxyMetrics
from proxy.upstream import AnthropicUpstream

if TYPE_CHECKING:
    from proxy.handlers import Relay
    from proxy.providers.routing import Router

log = logging.getLogger("meterd.proxy")


class RequestIds:
    """Request ids ("mreq_" and 24 hex digits) without a system call each, as secrets.token_hex
    makes: 96 random bits drawn once per proxy (after `--workers` forks), then counted up.
    Two proxies' runs of ids overlap with a chance of about n / 2**95 for n requests."""

    def __init__(self) -> None:
        self._next = int.from_bytes(os.urandom(12))

    def __call__(self) -> str:
        n = self._next = (self._next + 1) & _ID_MASK
        return f"mreq_{n:024x}"


_ID_MASK = 2**96 - 1


@dataclass
class ProxyState:
    redis: Any
    keyspace: KeySpace
    gate: Gate
    prices: PriceTable
    upstream: AnthropicUpstream
    session: aiohttp.ClientSession
    metrics: ProxyMetrics
    models: tuple[str, ...]
    estimate_output_tokens: int = 4096
    policy_refresh: float = 0.25
    public_url: str = ""  # the gateway as developers reach it ("" = not configured)
    billing_group_tag: str = ""  # the request tag that names a request's project
    policy: Policy = field(default_factory=Policy.empty)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Providers and routes when configured (swapped whole on reload); None: `upstream` only.
    router: Router | None = None
    # Re-reads providers and routes; run when the dashboard asks every proxy to reload.
    reload_providers: Callable[[], None] | None = None
    reload_seen: bytes | None = None  # the counter when we last looked (None: not yet)
    request_ids: RequestIds = field(default_factory=RequestIds)
    access_log: AccessLog | None = None  # None: no access log (log level above info)
    relays: set[Relay] = field(default_factory=set)  # under way; cut at the shutdown grace
    # Fallbacks and replays told to the admin's alert job (ledger.ops_counts).
    ops: ops_counts.Reporter = field(default_factory=ops_counts.Reporter)


    def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal:
        """The caller behind `x-api-key` or `Authorization: Bearer`. apiKeyHelper sends the
        same key as both; two different keys are refused, whichever of them is valid: one
        request is one caller's, and it must not be billed to a key it merely names."""
        secret = (headers.get("x-api-key") or "").strip()
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            bearer = auth[7:].strip()
            if secret and bearer and bearer != secret:
                raise KeyRefused("two different gateway keys (x-api-key and Authorization: "
                                 "Bearer): send one, or the same key in both")
            secret = secret or bearer
        if not secret:
            raise KeyRefused("no gateway key: send it as x-api-key or Authorization: Bearer")
        return self.policy.principal(secret)

    def estimate(self, model: str, body_bytes: int, max_tokens: int,
                 tools: tuple[ServerTool, ...] = ()) -> Estimate:
        """Reservation sizes before the request runs. A token is at least one byte of the
        body, so `body_bytes` bounds the prompt for strict caps; ~4 bytes a token is usual.
        `max_tokens` and the server `tools` are the request's (proxy.request_fields)."""
        prompt = -(-body_bytes // 4)
        output = min(max_tokens, self.estimate_output_tokens)
        if self.router is None:
            strict = self.prices.worst_case(model, body_bytes, max_tokens, tools=tools)
        else:  # which provider serves it is known later (fallback): the dearest of them
            strict = max(p.worst_case(self.prices, model, body_bytes, max_tokens, tools)
                         for p in self.router.table.default)
        return Estimate(prompt, output, self.prices.estimate(model, prompt, output), strict)

    async def refresh_policy(self) -> None:
        fresh = await load_policy(self.redis, self.keyspace, self.policy.version)
        if fresh is not None:
            self.policy = fresh

    async def maintain(self) -> None:
        """Until `stopping` is set: pick up policy changes, replay spooled settlements.

        Stopped by an event rather than cancellation: redis-py can swallow a CancelledError
        that lands inside a command, which would leave a cancelled loop running forever.
        """
        tick = 0
        while True:
            try:
                await asyncio.wait_for(self.stopping.wait(), self.policy_refresh)
                return
            except TimeoutError:
                tick += 1
            try:
                await self.refresh_policy()
                await self.follow_reloads()
                if tick * self.policy_refresh >= 1.0:
                    tick = 0
                    replayed = await self.gate.replay_spool()
                    if replayed:
                        log.info("replayed %d spooled settlements", replayed)
                    await self.report_ops()
            except RedisError as exc:
                log.warning("cannot refresh policy from redis: %s", exc)
            except Exception:  # a bad file or a bug: this loop must outlive it, or revocations stop
                log.exception("proxy maintenance failed; trying again")

    async def report_ops(self, at: datetime | None = None) -> None:
        """Add this process's fallbacks and replays since its last report to the hour's counts
        in Redis, which the admin's alert job reads."""
        totals = {ops_counts.fallback(provider, next_provider): n
                  for (provider, next_provider), n in self.metrics.fallbacks.items()}
        totals[ops_counts.SPOOL] = self.gate.spool_replayed
        if self.gate.journal is not None:
            totals[ops_counts.JOURNAL] = self.gate.journal.replays
        await self.ops.send(self.redis, self.keyspace, totals, at or datetime.now(UTC))

    async def follow_reloads(self) -> None:
        """Reload providers when the dashboard's reload counter moved since we last looked."""
        seen = await self.redis.get(self.keyspace.providers_reload) or b"0"
        if self.reload_seen not in (None, seen) and self.reload_providers is not None:
            self.reload_providers()
        self.reload_seen = seen

    async def drain(self) -> None:
        """Wait for every pending settlement (shutdown)."""
        await self.gate.drain()


STATE = web.AppKey("proxy_state", ProxyState)
