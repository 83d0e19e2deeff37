"""Spend as the proxies see it right now: the Redis period counters (µ$, field `SPENT`).

The rollups in DuckDB trail these by one rollup interval, so headline numbers and budget bars
read Redis, while breakdowns and charts read the rollups. When Redis cannot be reached the
callers fall back to the rollups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from ledger import caps, forecasts, grants
from ledger.forecasts import Counter
from ledger.keyspace import KeySpace
from ledger.periods import PERIODS, period_end
from ledger.settlement import SPENT

log = logging.getLogger("meterd.dashboard")

Scope = tuple[str, str, str]  # (developer | team | org, id, daily | weekly | monthly)


async def spent(redis: Any, keyspace: KeySpace, scopes: Iterable[Scope],
                now: datetime) -> dict[Scope, int] | None:
    """µ$ spent per (scope, id, period) in the period holding `now`; None if Redis is down."""
    wanted = list(dict.fromkeys(scopes))
    if not wanted:
        return {}
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for scope, scope_id, period in wanted:
                pipe.hget(keyspace.counter(scope, scope_id, period, now), SPENT)
            values = await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("live counters unavailable (%s); showing rolled-up spend", exc)
        return None
    return {s: int(v or 0) for s, v in zip(wanted, values, strict=True)}


def title(scope: str, label: str) -> str:
    """How a forecast row is named in a list: 'Team platform', 'Developer Ada'… (its label
    names a developer's or team's budget by name alone, the others in words already)."""
    if scope in ("developer", "team"):
        return caps.describe(scope, label, capital=True)
    return label[:1].upper() + label[1:]


def _percent(value: int, amount: int) -> int:
    return value * 100 // amount if amount > 0 else (100 if value else 0)


def project(spent_micros: int, counter: Counter, period: str, amount: int,
            rates: Mapping[Counter, int], now: datetime) -> int:
    """A cap's spend at its period's end by ledger.forecasts.project: what `counter` spent so
    far plus its run rate (`rates`, ledger.forecasts.run_rates) over what is left, held at
    `amount`."""
    left = int((period_end(period, now) - now).total_seconds())
    return forecasts.project(spent_micros, rates.get(counter, 0), left, amount)[0]


async def forecast_with_live_spend(
        redis: Any, keyspace: KeySpace, forecast: list[dict[str, Any]],
        members: dict[str, list[str]], now: datetime, *,
        rates: Mapping[Counter, int] | None = None,
        running: list[dict[str, Any]] | None = None,
        known: Mapping[Scope, int] | None = None) -> list[dict[str, Any]]:
    """The budget rows of ledger.reports.forecast with spent, projection and percent taken
    from the live counters where Redis has them (else the rollups' spent). `members` maps team
    id → developer ids (for per-member caps); `rates` is ledger.forecasts.run_rates; `running`
    the active grants, added to each cap (granted_micros, grant_until) as admission adds them;
    `known` counters already read for this page (not read again).

    Projected as ledger.forecasts projects: spent plus each counter's run rate over what is
    left of the period, held at the cap, and for a per-member cap the highest member's."""
    rates = rates or {}
    compared = [caps.counters(row["scope"], row["scope_id"], members.get(row["scope_id"], []))
                for row in forecast]
    known = known or {}
    wanted = [(*c, row["period"]) for row, counters in zip(forecast, compared, strict=True)
              for c in counters]
    live = await spent(redis, keyspace, [s for s in wanted if s not in known], now)
    if live is not None:
        live = {**known, **live}
    left_of = {p: int((period_end(p, now) - now).total_seconds()) for p in PERIODS}
    out = []
    for row, counters in zip(forecast, compared, strict=True):
        row = dict(row, title=title(row["scope"], row["label"]))
        period = row["period"]
        granted, until = grants.running(running or [], row["scope"], row["scope_id"], period)
        amount = int(row["amount_micros"]) + granted
        left = left_of[period]
        # Without Redis only the rollups' figure (the fullest counter's) is known.
        each = {c: live[(*c, period)] if live is not None else int(row["spent_micros"])
                for c in counters}
        value = max(each.values(), default=0)
        projected = max((forecasts.project(s, rates.get(c, 0), left, amount)[0]
                         for c, s in each.items()), default=0)
        row.update(spent_micros=value, projected_micros=projected, amount_micros=amount,
                   granted_micros=granted, grant_until=until and until.replace(tzinfo=UTC),
                   percent=_percent(value, amount),
                   projected_percent=_percent(projected, amount))
        out.append(row)
    out.sort(key=lambda r: (-int(r["percent"]), r["label"]))
    return out
