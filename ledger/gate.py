"""Admission and settlement: the two Redis round trips of a metered request.

`admit` checks every cap and limit that applies and reserves on each (admit.lua); `settle`
replaces the reservations with what the request really cost and appends its usage event
(settle.lua). When Redis is unreachable, admission follows the outage policy and settlement
goes to the local spool, replayed exactly once when Redis is back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from redis.exceptions import RedisError

from ledger.keyspace import KeySpace
from ledger.periods import COUNTER_TTL, PERIODS, period_end
from ledger.policy import Cap, Limits, Principal
from ledger.spool import Spool

log = logging.getLogger("meterd.gate")

SETTLED_TTL = 14 * 86400  # how long a request id is remembered against double settlement
WINDOW_TTL = 120
COUNTER_SCOPES = ("developer", "team", "org")


def _script(name: str) -> str:
    return resources.files("ledger").joinpath(name).read_text()


class BudgetExceeded(Exception):
    def __init__(self, cap: Cap, resets_at: datetime, retry_after: int) -> None:
        self.cap, self.resets_at, self.retry_after = cap, resets_at, retry_after
        super().__init__(
            f"spend limit reached ({cap.describe()}; resets {resets_at:%Y-%m-%d %H:%M} UTC)")


class RateLimited(Exception):
    def __init__(self, kind: str, limits: Limits, limit: int, retry_after: int) -> None:
        self.kind, self.limits, self.limit, self.retry_after = kind, limits, limit, retry_after
        what = {"rpm": "requests per minute", "itpm": "input tokens per minute",
                "otpm": "output tokens per minute", "concurrency": "concurrent requests"}[kind]
        super().__init__(f"rate limit reached: {limit:,} {what} ({limits.scope} "
                         f"{limits.scope_name}); retry in {retry_after} s")


class MeteringUnavailable(Exception):
    """Redis is unreachable and the outage policy is fail_closed."""


@dataclass(frozen=True, slots=True)
class Hold:
    counter_index: int  # 1-based among the request's period counters
    key: str
    reserved: int
    cap: int


@dataclass(slots=True)
class Ticket:
    """What admission reserved for one request; settlement releases exactly this."""

    request_id: str
    principal: Principal
    at: datetime
    holds: list[Hold] = field(default_factory=list)
    windows: list[tuple[str, int, int]] = field(default_factory=list)  # key, est in, est out
    flights: list[str] = field(default_factory=list)
    admitted: bool = True  # False when fail_open let it through without Redis
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request may cost, known before it runs."""

    prompt_tokens: int  # ~4 characters a token: the usual case
    output_tokens: int  # min(max_tokens, the configured output estimate)
    default_micros: int  # reserved by default-mode caps
    strict_micros: int  # worst case, reserved by strict caps


class Gate:
    def __init__(self, redis: Any, keyspace: KeySpace, spool: Spool, *,
                 fail_open: bool = True, reservation_ttl: int = 900,
                 thresholds: tuple[int, ...] = (75, 95)) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.spool = spool
        self.fail_open = fail_open
        self.reservation_ttl = reservation_ttl
        self.thresholds = thresholds
        self._admit = redis.register_script(_script("admit.lua"))
        self._settle = redis.register_script(_script("settle.lua"))
        self.redis_errors = 0

    # -- admission -------------------------------------------------------------------------

    def counters(self, principal: Principal, at: datetime) -> list[str]:
        """The nine period counters a request lands on: (day, week, month) × (dev, team, org).

        Daily ones come first: the settlement script counts tokens on those.
        """
        ids = {"developer": principal.developer_id, "team": principal.team_id, "org": ""}
        return [self.keyspace.counter(scope, ids[scope], period, at)
                for period in PERIODS for scope in COUNTER_SCOPES]

    def _groups(self, principal: Principal, at: datetime) -> dict[int, list[Cap]]:
        """Caps grouped by the counter they compare with (a member cap shares the developer's)."""
        groups: dict[int, list[Cap]] = {}
        for cap in principal.caps:
            scope, _ = cap.counter_scope
            index = PERIODS.index(cap.period) * 3 + COUNTER_SCOPES.index(scope) + 1
            groups.setdefault(index, []).append(cap)
        return groups

    async def admit(self, principal: Principal, request_id: str, estimate: Estimate,
                    now: datetime | None = None) -> Ticket:
        """Reserve for one request or raise BudgetExceeded, RateLimited, MeteringUnavailable."""
        at = now or datetime.now(UTC)
        now_ms = int(at.timestamp() * 1000)
        ticket = Ticket(request_id, principal, at)
        counters = self.counters(principal, at)
        groups = self._groups(principal, at)
        keys: list[str] = []
        args: list[Any] = [now_ms, request_id, now_ms + self.reservation_ttl * 1000]
        group_caps: list[Cap] = []
        budget_args: list[Any] = []
        for index, caps in sorted(groups.items()):
            tightest = min(caps, key=lambda c: c.amount)
            reserve = max(estimate.strict_micros if c.mode == "strict" else
                          estimate.default_micros for c in caps)
            counter = counters[index - 1]
            keys += [counter, self.keyspace.holds(counter)]
            budget_args += [tightest.amount, reserve, COUNTER_TTL[tightest.period]]
            group_caps.append(tightest)
            ticket.holds.append(Hold(index, self.keyspace.holds(counter), reserve,
                                     tightest.amount))
        minute = now_ms // 60000
        window_limits = [lim for lim in principal.limits if lim.rpm or lim.itpm or lim.otpm]
        window_args: list[Any] = []
        for lim in window_limits:
            key = self.keyspace.window(lim.scope, lim.scope_id, minute)
            keys.append(key)
            window_args += [lim.rpm, lim.itpm, lim.otpm, estimate.prompt_tokens,
                            estimate.output_tokens, WINDOW_TTL]
            ticket.windows.append((key, estimate.prompt_tokens, estimate.output_tokens))
        flight_limits = [lim for lim in principal.limits if lim.concurrency]
        for lim in flight_limits:
            key = self.keyspace.in_flight(lim.scope, lim.scope_id)
            keys.append(key)
            ticket.flights.append(key)
        args += [len(group_caps), len(window_limits), len(flight_limits), *budget_args,
                 *window_args, *(lim.concurrency for lim in flight_limits)]
        if not keys:
            return ticket  # nothing to check: no Redis round trip before forwarding
        keys.append(self.keyspace.ready)
        try:
            result = await self._admit(keys=keys, args=args)
        except RedisError as exc:
            return self._outage(ticket, exc)
        if result[0] == -1:
            return self._outage(ticket, RedisError("counters are being rebuilt"))
        if result[0] == 0:
            self._reject(result, group_caps, window_limits, flight_limits, at, now_ms)
        self._headers(ticket, result, group_caps, window_limits, estimate, now_ms)
        return ticket

    def _outage(self, ticket: Ticket, exc: Exception) -> Ticket:
        self.redis_errors += 1
        if not self.fail_open:
            raise MeteringUnavailable(
                "spend metering is unavailable (cannot reach Redis) and this gateway refuses "
                "requests it cannot meter (redis_outage_policy = fail_closed); try again shortly"
            ) from exc
        log.warning("redis unreachable at admission; admitting %s unmetered-until-settled "
                    "(fail_open): %s", ticket.request_id, exc)
        ticket.admitted = False
        ticket.holds, ticket.windows, ticket.flights = [], [], []
        return ticket

    @staticmethod
    def _reject(result: list[Any], caps: list[Cap], windows: list[Limits],
                flights: list[Limits], at: datetime, now_ms: int) -> None:
        kind = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        index, limit = int(result[2]) - 1, int(result[4])
        if kind == "budget":
            cap = caps[index]
            resets = period_end(cap.period, at)
            wait = math.ceil(resets.timestamp() - at.timestamp())
            raise BudgetExceeded(cap, resets, max(1, wait))
        if kind == "concurrency":
            raise RateLimited(kind, flights[index], limit, 1)
        retry = max(1, math.ceil((60_000 - now_ms % 60_000) / 1000))
        raise RateLimited(kind, windows[index], limit, retry)

    def _headers(self, ticket: Ticket, result: list[Any], caps: list[Cap],
                 windows: list[Limits], estimate: Estimate, now_ms: int) -> None:
        """Tell the client where it stands: meterd's own rate limits and budget use."""
        reset = datetime.fromtimestamp((now_ms // 60000 + 1) * 60, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        pos = 1 + len(caps)
        best: dict[str, tuple[int, int]] = {}  # header family → (limit, remaining), tightest
        for lim in windows:
            used = [int(v) for v in result[pos:pos + 3]]
            pos += 3
            for family, limit, value in (("requests", lim.rpm, used[0]),
                                         ("input-tokens", lim.itpm, used[1]),
                                         ("output-tokens", lim.otpm, used[2])):
                if limit and (family not in best or limit - value < best[family][1]):
                    best[family] = (limit, max(0, limit - value))
        for family, (limit, remaining) in best.items():
            ticket.headers[f"anthropic-ratelimit-{family}-limit"] = str(limit)
            ticket.headers[f"anthropic-ratelimit-{family}-remaining"] = str(remaining)
            ticket.headers[f"anthropic-ratelimit-{family}-reset"] = reset
        worst = None
        for i, cap in enumerate(caps):
            used_pct = (int(result[1 + i]) + ticket.holds[i].reserved) * 100 // max(cap.amount, 1)
            if worst is None or used_pct > worst[0]:
                worst = (used_pct, cap)
        if worst:
            ticket.headers["x-meterd-budget-used-percent"] = str(worst[0])
            crossed = [t for t in self.thresholds if worst[0] >= t]
            if crossed:
                ticket.headers["x-meterd-budget-warning"] = (
                    f"{worst[1].describe()}: {worst[0]}% of the cap used")

    # -- settlement ------------------------------------------------------------------------

    async def settle(self, ticket: Ticket, cost_micros: int, tokens: dict[str, int],
                     event: dict[str, Any]) -> None:
        """Record the finished request exactly once; spool it when Redis cannot be reached.

        `tokens`: input, output, cache_write_5m, cache_write_1h, cache_read, web_search,
        estimated (0/1), and rate_input (input + cache writes, as rate limits count it).
        """
        at = ticket.at
        now_ms = int(at.timestamp() * 1000)
        counters = self.counters(ticket.principal, at)
        keys = [self.keyspace.settled(ticket.request_id), self.keyspace.events,
                self.keyspace.alerts, *counters]
        holds = ticket.holds
        if not ticket.admitted:
            # Admission never reached Redis: still land the thresholds on the capped counters.
            groups = self._groups(ticket.principal, at)
            holds = [Hold(i, self.keyspace.holds(counters[i - 1]), 0,
                          min(c.amount for c in caps)) for i, caps in sorted(groups.items())]
        if ticket.admitted:  # correct the estimates admission added to the windows
            windows = [(key, 0, tokens["rate_input"] - est_in, tokens["output"] - est_out)
                       for key, est_in, est_out in ticket.windows]
        else:  # nothing was counted yet: count the request now
            minute = now_ms // 60000
            windows = [(self.keyspace.window(lim.scope, lim.scope_id, minute), 1,
                        tokens["rate_input"], tokens["output"])
                       for lim in ticket.principal.limits if lim.rpm or lim.itpm or lim.otpm]
        keys += [h.key for h in holds] + [w[0] for w in windows] + ticket.flights
        args: list[Any] = [
            now_ms, ticket.request_id, SETTLED_TTL, len(counters), 3, len(holds), len(windows),
            len(ticket.flights), cost_micros,
            *(tokens[f] for f in ("input", "output", "cache_write_5m", "cache_write_1h",
                                  "cache_read", "web_search", "estimated")),
            *(COUNTER_TTL[p] for p in PERIODS for _ in COUNTER_SCOPES),
        ]
        for h in holds:
            args += [h.counter_index, h.reserved, h.cap]
        for _, d_requests, d_in, d_out in windows:
            args += [d_requests, d_in, d_out, WINDOW_TTL]
        args += [len(self.thresholds), *self.thresholds]
        for name, value in event.items():
            args += [name, value]
        entry = {"keys": keys, "args": args}
        try:
            await self.apply(entry)
        except RedisError as exc:
            self.redis_errors += 1
            log.warning("redis unreachable at settlement of %s; spooled: %s",
                        ticket.request_id, exc)
            self.spool.append(entry)

    async def apply(self, entry: dict[str, Any]) -> int:
        """Run one settlement (fresh or spooled). 0 means it had already been applied."""
        return int(await self._settle(keys=entry["keys"], args=entry["args"]))

    async def replay_spool(self) -> int:
        """Replay spooled settlements if Redis answers; returns how many were applied."""
        try:
            return await self.spool.replay(self.apply)
        except RedisError:
            return 0
