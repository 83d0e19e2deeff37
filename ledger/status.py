"""Where a developer stands against each cap that applies to them, read live from Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from ledger import caps, grants
from ledger.keyspace import KeySpace
from ledger.periods import PERIODS, period_end
from ledger.policy import Cap, Principal
from ledger.settlement import HELD, SPENT


class Standing(NamedTuple):
    """One cap and what counts against it now (settled spend, amounts held for requests in
    flight, and the asking request's own reservation when there is one)."""

    cap: Cap
    used: int  # µ$


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
    """The developer's settled spend this day, week and month of the organization's
    calendar (period → µ$)."""
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
            if standing_of(int(s or 0), amount) == BLOCKED]


BLOCKED, NEAR = "blocked", "near"


def standing_of(spent_micros: int, amount_micros: int, near_percent: int = 100) -> str:
    """The one rule for a cap's badge: BLOCKED once what counts against it has reached it
    (admission refuses from there), NEAR from `near_percent` of it, else ''."""
    if spent_micros >= amount_micros:
        return BLOCKED
    return NEAR if spent_micros * 100 >= amount_micros * near_percent else ""


async def cap_use(redis: Any, keyspace: KeySpace, developers: list[dict[str, Any]],
                  budgets: list[dict[str, Any]], running: list[dict[str, Any]],
                  now: datetime, near_percent: int) -> list[dict[str, Any]]:
    """Every cap against each counter it is compared with, read live: one row per developer
    for a developer's or per-member cap, one for a team pool or the organization's. A budget
    with `models` (a per-model cap, ledger/model_caps.py) is compared with its own counter
    of those models' spend. Each row: the budget's scope, scope_id, period and models
    (empty for a cap on all spend), `developer` (the catalog row, None for a pool),
    amount_micros (with the `running` grants, as admission applies it), granted_micros and
    grant_until, spent_micros, state (`standing_of`) and resets_at. Disabled developers are
    left out: their keys are refused whatever their caps."""
    active = [d for d in developers if not d.get("disabled")]
    by_id = {d["id"]: d for d in active}
    by_team: dict[str, list[dict[str, Any]]] = {}
    for d in active:
        by_team.setdefault(d.get("team_id") or "", []).append(d)
    pairs: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for b in budgets:
        if b["scope"] == "developer":
            pairs += [(b, by_id[b["scope_id"]])] if b["scope_id"] in by_id else []
        elif b["scope"] == "team_member":
            pairs += [(b, d) for d in by_team.get(b["scope_id"], [])]
        else:
            pairs.append((b, None))
    async with redis.pipeline(transaction=False) as pipe:
        for b, whom in pairs:
            counter = caps.counter(b["scope"], b["scope_id"], whom["id"] if whom else "")
            models = tuple(b.get("models") or ())
            pipe.hget(keyspace.model_counter(*counter, b["period"], now, models) if models
                      else keyspace.counter(*counter, b["period"], now), SPENT)
        values = await pipe.execute() if pairs else []
    ends = {period: period_end(period, now) for period in PERIODS}
    out = []
    for (b, whom), raw in zip(pairs, values, strict=True):
        # As admission applies grants: a per-model cap is raised by its scope's grants too.
        granted, until = grants.running(running, b["scope"], b["scope_id"], b["period"])
        amount, spent = int(b["amount_micros"]) + granted, int(raw or 0)
        out.append({
            "budget_id": b["id"], "scope": b["scope"], "scope_id": b["scope_id"],
            "period": b["period"], "models": list(b.get("models") or ()),
            "developer": whom, "amount_micros": amount,
            "granted_micros": granted, "grant_until": until and until.replace(tzinfo=UTC),
            "spent_micros": spent, "state": standing_of(spent, amount, near_percent),
            "resets_at": ends[b["period"]]})
    return out
