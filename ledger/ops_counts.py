"""What the proxies tell the admin's alert job about operations: requests passed from a failing
provider to the next, settlements replayed from the spool after a Redis outage, and journal
replays after Redis lost data. Counted in one Redis hash per UTC hour.

A proxy counts these in process (proxy.metrics, ledger.gate, ledger.journal); its maintenance
loop, off the hot path, adds what grew since it last reported (`Reporter`). The admin's alert
job reads the hour's hash (`read`, ledger.alerts.evaluate_ops).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ledger.keyspace import KeySpace

FALLBACK = "fallback:"  # + "provider>next": requests the provider failed, passed to next
SPOOL = "spool"  # settlements replayed from a spool
JOURNAL = "journal"  # journal replays: a proxy found that Redis had lost data
TTL = 3 * 3600  # the admin reads the current hour; a little after it, for a late tick


def key(keyspace: KeySpace, at: datetime) -> str:
    return f"{keyspace.base}:ops:{at:%Y%m%d%H}"


def fallback(provider: str, next_provider: str) -> str:
    return f"{FALLBACK}{provider}>{next_provider}"


class Reporter:
    """One proxy's reports: the growth of its running totals since the last report."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    async def send(self, redis: Any, keyspace: KeySpace, totals: Mapping[str, int],
                   at: datetime) -> None:
        """One MULTI when anything grew, none otherwise. When Redis fails, the growth is
        sent with the next report."""
        grown = {name: n - self.sent[name] for name, n in totals.items() if n > self.sent[name]}
        if not grown:
            return
        hour = key(keyspace, at)
        async with redis.pipeline(transaction=True) as pipe:
            for name, n in grown.items():
                pipe.hincrby(hour, name, n)
            pipe.expire(hour, TTL)
            await pipe.execute()
        self.sent.update(grown)


async def read(redis: Any, keyspace: KeySpace, at: datetime) -> dict[str, int]:
    """The hour's counts, every proxy's together."""
    raw = await redis.hgetall(key(keyspace, at))
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
