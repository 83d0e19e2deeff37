"""Which admin process tells a Redis outage: exactly one, however many noticed it and when.

Every admin notices an outage on its own clock, so no time it saw is shared. What is shared is
a mark in Redis, changed only when an outage is told: each admin reads it on every tick while
Redis answers (the tick's one liveness round trip), and after an outage it claims the telling
with a compare-and-set against the mark it read before (outage_claim.lua). The first admin back
changes the mark; every other finds it changed and stays silent. Redis back empty has lost the
mark: the first admin back sets a new one and tells, the others find the new one.

An admin that never saw Redis answer (started during the outage) cannot know the mark before
it, so it tells only an outage that emptied Redis.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from importlib import resources
from typing import Any

from ledger.keyspace import KeySpace

_UNSEEN = "unseen:"  # matches no mark: this process never read one


class OutageWatch:
    """One admin process's view of Redis's outages."""

    def __init__(self, redis: Any, keyspace: KeySpace) -> None:
        self.redis = redis
        self.key = f"{keyspace.base}:outage:mark"
        self._claim = redis.register_script(
            resources.files("ledger").joinpath("outage_claim.lua").read_text())
        self.seen = _UNSEEN + secrets.token_hex(8)
        self.down_since: datetime | None = None

    async def look(self) -> None:
        """Read the mark: Redis answered (raises RedisError/OSError when it does not)."""
        mark = await self.redis.get(self.key)
        self.seen = mark.decode() if isinstance(mark, bytes) else (mark or "")

    def lost(self, at: datetime) -> None:
        """Redis did not answer at `at` (the first time counts)."""
        if self.down_since is None:
            self.down_since = at

    async def claim(self) -> tuple[datetime, str] | None:
        """After an outage this process saw, once Redis answers (call it before `look`,
        which would read another admin's new mark): when this process is the one to tell
        it, when it first found Redis away and the new mark; else None."""
        began = self.down_since
        if began is None:
            return None
        fresh = secrets.token_hex(8)
        told = await self._claim(keys=[self.key], args=[self.seen, fresh])
        self.down_since = None
        return (began, fresh) if told else None
