"""Which managed settings each machine runs: the checksum Claude Code sends on model requests
when its managed settings set `CLAUDE_CODE_GATEWAY_HINT_HEADERS=1`, recorded per developer and
credential (a gateway key, or one `/login` sign-in: in practice one machine).

Cheap on the hot path: a request costs a header lookup and, when the value changed, a dict
write. Changes go to Redis together, one HSET a second, into `{prefix}:managed:seen`; an
unchanged value is written again only every REFRESH seconds, to keep "last seen" roughly
current. The value is a credential-like fingerprint of the machine's policy, so it is kept out
of usage events and access logs: the dashboard's managed-settings page is the one place it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from ledger.policy import Principal
from ledger.settlement import clean_text
from proxy.state import STATE

log = logging.getLogger("meterd.proxy")

HEADER = "x-claude-code-managed-settings-checksum"
FLUSH_INTERVAL = 1.0  # seconds a change waits for the HSET that carries it
REFRESH = 600.0  # seconds before an unchanged value is written again (its "last seen")


class SeenChecksums:
    """The checksums seen since the last flush, and what was last written per machine."""

    def __init__(self) -> None:
        # "developer_id key_id" -> (checksum or "", session id, User-Agent)
        self._pending: dict[str, tuple[str, str, str]] = {}
        self._written: dict[str, str] = {}  # field -> the checksum last written
        self._refreshed = time.monotonic()

    def note(self, principal: Principal, headers: Mapping[str, str]) -> None:
        """Remember what this request's machine runs ("" when it sent no checksum)."""
        checksum = headers.get(HEADER, "")
        field = f"{principal.developer_id} {principal.key_id}"
        if self._written.get(field) != checksum:
            self._pending[field] = (checksum, headers.get("x-claude-code-session-id", ""),
                                    headers.get("user-agent", ""))

    async def flush(self, redis: Any, key: str) -> None:
        """Write what changed in one HSET; kept for the next flush if Redis fails."""
        now = time.monotonic()
        if now - self._refreshed >= REFRESH:
            self._written.clear()
            self._refreshed = now
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        at = int(time.time())
        mapping = {field: orjson.dumps({
            "checksum": clean_text(checksum), "at": at, "session_id": clean_text(session),
            "client": clean_text(agent)}) for field, (checksum, session, agent) in pending.items()}
        try:
            await redis.hset(key, mapping=mapping)
        except (RedisError, OSError) as exc:
            log.warning("cannot record managed-settings checksums: %s", exc)
            self._pending = {**pending, **self._pending}
            return
        self._written.update((field, value[0]) for field, value in pending.items())


SEEN = web.AppKey("managed_seen", SeenChecksums)


async def seen_context(app: web.Application) -> AsyncIterator[None]:
    """Flush the seen checksums every FLUSH_INTERVAL until the proxy stops, then once more.
    Stopped by the proxy's `stopping` event, as its maintenance loop is (see ProxyState)."""
    seen = app[SEEN] = SeenChecksums()
    state = app[STATE]

    async def run() -> None:
        while not state.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), FLUSH_INTERVAL)
            await seen.flush(state.redis, state.keyspace.managed_seen)

    task = asyncio.create_task(run())
    yield
    state.stopping.set()
    await task
