"""Where a developer stands against each cap that applies to them, read live from Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ledger import caps
from ledger.keyspace import KeySpace
from ledger.notices import Standing
from ledger.periods import PERIODS, period_end
from ledger.policy import Cap, Principal
from ledger.settlement import HELD, SPENT


def _standing_caps(principal: Principal, now: datetime) -> list[Cap]:
    """The caps as they stand at `now`: `amount` includes the running grants (`granted`)."""
    return [cap.at(now.timestamp()) for cap in principal.caps]


async def cap_balances(redis: Any, keyspace: KeySpace, principal: Principal,
                       now: datetime | None = None) -> list[dict[str, Any]]:
    """One entry per cap: spent (settled), held (in flight), remaining, and the reset time."""
    now = now or datetime.now(UTC)
    caps = _standing_caps(principal, now)
    counters = [keyspace.model_counter(*cap.counter_scope, cap.period, now, cap.models)
                if cap.models else keyspace.counter(*cap.counter_scope, cap.period, now)
                for cap in caps]
    async with redis.pipeline(transaction=False) as pipe:
        for key in counters:
            pipe.hmget(key, SPENT, HELD)
        values = await pipe.execute() if counters else []
    status = []
    for cap, (spent, held) in zip(caps, values, strict=True):
        spent_micros, held_micros = int(spent or 0), int(held or 0)
        status.append({
            "cap": cap.describe(), "scope": cap.scope, "period": cap.period, "mode": cap.mode,
            "models": list(cap.models),
            "amount_micros": cap.amount, "granted_micros": cap.granted,
            "spent_micros": spent_micros,
            "held_micros": held_micros,
            "remaining_micros": max(0, cap.amount - spent_micros - held_micros),
            "resets_at": period_end(cap.period, now).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
    return status


async def standings(redis: Any, keyspace: KeySpace, principal: Principal,
                    now: datetime) -> list[Standing]:
    """Each cap with what counts against it now: settled spend and amounts held in flight."""
    return [Standing(cap, row["spent_micros"] + row["held_micros"])
            for cap, row in zip(_standing_caps(principal, now),
                                await cap_balances(redis, keyspace, principal, now),
                                strict=True)]


async def developer_spend(redis: Any, keyspace: KeySpace, principal: Principal,
                          now: datetime) -> dict[str, int]:
    """The developer's settled spend this UTC day, week and month (period → µ$)."""
    async with redis.pipeline(transaction=False) as pipe:
        for period in PERIODS:
            pipe.hget(keyspace.counter("developer", principal.developer_id, period, now),
                      SPENT)
        values = await pipe.execute()
    return {period: int(v or 0) for period, v in zip(PERIODS, values, strict=True)}


async def blocked_by(redis: Any, keyspace: KeySpace, developers: list[dict[str, Any]],
                     scope: str, scope_id: str, period: str, amount: int,
                     now: datetime) -> list[dict[str, Any]]:
    """The developers (catalog rows) a cap of `amount` µ$ on (scope, scope_id, period) would
    refuse right now: those it applies to whose counter has already reached it (a $0 cap:
    all of them). Read live from the spend counters, as admission compares them."""
    applying = [d for d in developers if not d.get("disabled")
                and caps.applies(scope, scope_id, d["id"], d.get("team_id") or "")]
    counters = [keyspace.counter(*caps.counter(scope, scope_id, d["id"]), period, now)
                for d in applying]
    async with redis.pipeline(transaction=False) as pipe:
        for key in counters:
            pipe.hget(key, SPENT)
        spent = await pipe.execute() if counters else []
    return [dict(d, spent_micros=int(s or 0)) for d, s in zip(applying, spent, strict=True)
            if int(s or 0) >= amount]
