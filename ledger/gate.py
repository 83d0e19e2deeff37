"""Admission and settlement: the two Redis round trips of a metered request.

`admit` checks every cap and limit that applies and reserves on each (admit.lua); `settle`
replaces the reservations with what the request really cost and appends its settlement to the
event stream (settle.lua). When Redis is unreachable, admission follows the outage policy and
settlement goes to the local spool, replayed exactly once when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from importlib import resources
from typing import Any

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger import notices
from ledger.journal import Journal
from ledger.keyspace import KeySpace
from ledger.money import MICROS_PER_CENT, format_usd
from ledger.periods import COUNTER_TTL, PERIODS, clock, local_day, period_end
from ledger.policy import Cap, Limits, Principal
from ledger.pricing import Cost
from ledger.redis_client import FastScript
from ledger.settlement import STREAM_FIELD, Settlement, lua_prelude
from ledger.spool import Spool
from ledger.status import Standing
from ledger.usage import Usage

log = logging.getLogger("meterd.gate")

SETTLED_TTL = 14 * 86400  # how long a request id is remembered against double settlement
WINDOW_TTL = 120
_RATE_HEADERS = {family: tuple(f"anthropic-ratelimit-{family}-{part}"
                               for part in ("limit", "remaining", "reset"))
                 for family in ("requests", "input-tokens", "output-tokens")}
COUNTER_SCOPES = ("developer", "team", "org")
_COUNTER_TTLS = tuple(COUNTER_TTL[p] for p in PERIODS for _ in COUNTER_SCOPES)
_CACHE_LIMIT = 4096  # principals and (developer, day) pairs remembered
SETTLEMENT_ERROR = "settlement_error"  # the error_type of a request charged by settle_minimal


def _script(name: str) -> str:
    """A Lua script, after the counter field names it shares with Python."""
    return lua_prelude() + resources.files("ledger").joinpath(name).read_text()


def utc_now() -> datetime:
    """The real time: a Gate's clock unless it is given another (tests fix it)."""
    return datetime.now(UTC)


class BudgetExceeded(Exception):
    """A cap refused the request. `short`, when a cent or more of the cap is left: what is
    left and what this request would reserve on it (µ$), which is more."""

    def __init__(self, cap: Cap, resets_at: datetime, retry_after: int,
                 short: tuple[int, int] | None = None) -> None:
        self.cap, self.resets_at, self.retry_after = cap, resets_at, retry_after
        # Refused before the cap is reached: a developer whose /usage still shows room is
        # told why, and that a smaller request may fit.
        why = "" if short is None else (f": {format_usd(short[0])} left, less than this "
                                        f"request may cost ({format_usd(short[1])})")
        super().__init__(
            f"spend limit reached ({cap.describe()}){why} · resets {clock(resets_at)}")


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
    estimate: Estimate | None = None  # what admission reserved against
    # The counters of the per-model caps the request's model falls under (key, ttl): after
    # the nine period counters, charged by settlement like them.
    extra: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A principal's caps and limits, arranged the way admission sends them."""

    principal: Principal
    groups: list[tuple[int, Cap, bool, bool]]  # counter index, tightest cap, any strict/estimate
    caps: list[Cap]  # the tightest cap of each group
    windows: list[Limits]  # limits with a per-minute window
    flights: list[Limits]  # limits on concurrent requests
    flight_keys: list[str]
    concurrency: list[int]
    model_caps: list[Cap]  # per-model caps, checked when the request's model is one of theirs
    until: float  # epoch seconds: when a grant ends and the caps must be looked at again


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
                 thresholds: tuple[int, ...] = (75, 95),
                 clock: Callable[[], datetime] = utc_now,
                 journal: Journal | None = None) -> None:
        self.redis = redis
        self.journal = journal  # every settlement, kept until the ledger has it
        self.keyspace = keyspace
        self.spool = spool
        self.spool_replayed = 0  # settlements replayed from the spool (ledger.ops_counts)
        self.fail_open = fail_open
        self.reservation_ttl = reservation_ttl
        self.thresholds = thresholds
        # What time it is for admission (and so for rate windows, periods and settlement):
        # the proxy's handlers read it here too, so a test can fix it.
        self.clock = clock
        self._admit = redis.register_script(_script("admit.lua"))
        self._settle = redis.register_script(_script("settle.lua"))
        self._release = redis.register_script(_script("release.lua"))
        self._in_flight: set[asyncio.Future[Any]] = set()  # settlements and releases
        self.redis_errors = 0
        self._plans: dict[int, _Plan] = {}
        self._counter_names: dict[tuple[str, str, date], list[str]] = {}
        self._reset_minute = (-1, "")  # the rate-window reset header of the current minute

    # -- admission -------------------------------------------------------------------------

    def counters(self, principal: Principal, at: datetime) -> list[str]:
        """The nine period counters a request lands on: (day, week, month) × (dev, team, org).

        Daily ones come first: the settlement script counts tokens on those. The names change
        once a day, so they are remembered per developer, team and the organization's day.
        """
        cache_key = (principal.developer_id, principal.team_id, local_day(at))
        found = self._counter_names.get(cache_key)
        if found is None:
            if len(self._counter_names) >= _CACHE_LIMIT:
                self._counter_names.clear()
            ids = {"developer": principal.developer_id, "team": principal.team_id, "org": ""}
            found = self._counter_names[cache_key] = [
                self.keyspace.counter(scope, ids[scope], period, at)
                for period in PERIODS for scope in COUNTER_SCOPES]
        return found

    def _groups(self, principal: Principal, at: datetime) -> dict[int, list[Cap]]:
        """Caps as they stand at `at` (with their running grants), grouped by the counter they
        compare with (a member cap shares the developer's)."""
        groups: dict[int, list[Cap]] = {}
        now = at.timestamp()
        for cap in (c.at(now) for c in principal.caps if not c.models):
            scope, _ = cap.counter_scope
            index = PERIODS.index(cap.period) * 3 + COUNTER_SCOPES.index(scope) + 1
            groups.setdefault(index, []).append(cap)
        return groups

    def _plan(self, principal: Principal, at: datetime) -> _Plan:
        """What admission checks for this principal; kept until the policy is reloaded (a new
        policy makes new Principal objects) or one of its grants ends."""
        entry = self._plans.get(id(principal))
        now = at.timestamp()
        if entry is not None and entry.principal is principal and now < entry.until:
            return entry
        if len(self._plans) >= _CACHE_LIMIT:
            self._plans.clear()
        groups = [(index, min(caps, key=lambda c: c.amount),
                   any(c.mode == "strict" for c in caps), any(c.mode != "strict" for c in caps))
                  for index, caps in sorted(self._groups(principal, at).items())]
        windows = [lim for lim in principal.limits if lim.rpm or lim.itpm or lim.otpm]
        flights = [lim for lim in principal.limits if lim.concurrency]
        plan = self._plans[id(principal)] = _Plan(
            principal, groups, [g[1] for g in groups], windows, flights,
            [self.keyspace.in_flight(lim.scope, lim.scope_id) for lim in flights],
            [lim.concurrency for lim in flights],
            [c.at(now) for c in principal.caps if c.models],
            min((c.next_change(now) for c in principal.caps), default=math.inf))
        return plan

    async def admit(self, principal: Principal, request_id: str, estimate: Estimate,
                    now: datetime | None = None, model: str = "") -> Ticket:
        """Reserve for one request or raise BudgetExceeded, RateLimited, MeteringUnavailable.
        `model`: the model asked for, resolved as it is priced (per-model caps match it)."""
        at = now or self.clock()
        now_ms = int(at.timestamp() * 1000)
        ticket = Ticket(request_id, principal, at, estimate=estimate)
        plan = self._plan(principal, at)
        model_caps = [c for c in plan.model_caps if c.matches and c.matches(model)] \
            if plan.model_caps else []
        if not (plan.groups or plan.windows or plan.flights or model_caps):
            return ticket  # nothing to check: no Redis round trip before forwarding
        keys: list[str] = []
        args: list[Any] = [now_ms, request_id, now_ms + self.reservation_ttl * 1000,
                           len(plan.groups) + len(model_caps), len(plan.windows),
                           len(plan.flights)]
        if plan.groups:
            counters = self.counters(principal, at)
            for index, tightest, strict, default in plan.groups:
                if strict and default:
                    reserve = max(estimate.strict_micros, estimate.default_micros)
                else:
                    reserve = estimate.strict_micros if strict else estimate.default_micros
                counter = counters[index - 1]
                holds = self.keyspace.holds(counter)
                keys += (counter, holds)
                args += (tightest.amount, reserve, COUNTER_TTL[tightest.period])
                ticket.holds.append(Hold(index, holds, reserve, tightest.amount))
        for cap in model_caps:  # after the nine period counters, in the same script
            counter = self.keyspace.model_counter(*cap.counter_scope, cap.period, at,
                                                  cap.models)
            ttl = COUNTER_TTL[cap.period]
            reserve = estimate.strict_micros if cap.mode == "strict" else estimate.default_micros
            holds = self.keyspace.holds(counter)
            keys += (counter, holds)
            args += (cap.amount, reserve, ttl)
            ticket.extra.append((counter, ttl))
            ticket.holds.append(Hold(len(_COUNTER_TTLS) + len(ticket.extra), holds, reserve,
                                     cap.amount))
        if plan.windows:
            minute = now_ms // 60000
            for lim in plan.windows:
                key = self.keyspace.window(lim.scope, lim.scope_id, minute)
                keys.append(key)
                args += (lim.rpm, lim.itpm, lim.otpm, estimate.prompt_tokens,
                         estimate.output_tokens, WINDOW_TTL)
                ticket.windows.append((key, estimate.prompt_tokens, estimate.output_tokens))
        if plan.flights:
            keys += plan.flight_keys
            args += plan.concurrency
            ticket.flights = list(plan.flight_keys)
        keys.append(self.keyspace.ready)
        try:
            result = await self._admit(keys=keys, args=args)
        except RedisTimeoutError as exc:
            # Redis may have run it and answered too late: a request served (fail_open) or
            # refused (fail_closed) now must not leave it holding budget and slot.
            self._abandon(ticket)
            return self._outage(ticket, exc)
        except RedisError as exc:
            return self._outage(ticket, exc)
        except asyncio.CancelledError:
            # The caller left (its client disconnected) with the script on its way: Redis may
            # still reserve, and nobody would settle. Release it rather than hold the budget
            # and the concurrency slot until reservation_ttl.
            self._abandon(ticket)
            raise
        if result[0] == -1:
            return self._outage(ticket, RedisError("counters are being rebuilt"))
        checked = plan.caps + model_caps if model_caps else plan.caps
        if result[0] == 0:
            self._reject(result, checked, ticket.holds, plan.windows, plan.flights, at, now_ms)
        self._headers(ticket, result, checked, plan.windows, estimate, now_ms)
        return ticket

    def _abandon(self, ticket: Ticket) -> None:
        """Release what admission may have reserved for `ticket`. Sent after the admission:
        on the same pipelined connection when its caller left, so Redis runs it second; on a
        new one when the admission timed out, after Redis had it."""
        counters = self.counters(ticket.principal, ticket.at) + [k for k, _ in ticket.extra]
        keys = [key for h in ticket.holds for key in (counters[h.counter_index - 1], h.key)]
        keys += ticket.flights
        args = [ticket.request_id, len(ticket.holds), *(h.reserved for h in ticket.holds)]

        async def release() -> None:
            try:
                await self._release(keys=keys, args=args)
            except RedisError as exc:  # the holds expire after reservation_ttl instead
                log.warning("cannot release the reservation of %s: %s", ticket.request_id, exc)

        self._keep(asyncio.ensure_future(release()))

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
    def _reject(result: list[Any], caps: list[Cap], holds: list[Hold], windows: list[Limits],
                flights: list[Limits], at: datetime, now_ms: int) -> None:
        kind = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        index, limit = int(result[2]) - 1, int(result[4])
        if kind == "budget":
            # The protocol: once blocked, describe the cap that resets last (the first of those
            # in admission order on a tie) — the wait the developer really faces.
            # `holds` is parallel to `caps`: what this request would reserve on each.
            blocking = [(caps[int(i) - 1], int(used), int(amount), holds[int(i) - 1].reserved)
                        for i, used, amount in zip(result[2::3], result[3::3], result[4::3],
                                                   strict=True)]
            cap, used, amount, reserve = max(blocking, key=lambda b: period_end(b[0].period, at))
            resets = period_end(cap.period, at)
            wait = math.ceil(resets.timestamp() - at.timestamp())
            # Less than a cent left reads as spent (no "$0.00 left").
            left = amount - used
            raise BudgetExceeded(cap, resets, max(1, wait),
                                 (left, reserve) if left >= MICROS_PER_CENT else None)
        if kind == "concurrency":
            raise RateLimited(kind, flights[index], limit, 1)
        retry = max(1, math.ceil((60_000 - now_ms % 60_000) / 1000))
        raise RateLimited(kind, windows[index], limit, retry)

    def _headers(self, ticket: Ticket, result: list[Any], caps: list[Cap],
                 windows: list[Limits], estimate: Estimate, now_ms: int) -> None:
        """Tell the client where it stands: meterd's own rate limits, and the fullest cap
        counting this request's reservation (so a notice comes with the request that passes
        a threshold, not one request late)."""
        minute = now_ms // 60000
        if self._reset_minute[0] != minute:
            self._reset_minute = (minute, datetime.fromtimestamp((minute + 1) * 60, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"))
        reset = self._reset_minute[1]
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
            names = _RATE_HEADERS[family]
            ticket.headers[names[0]] = str(limit)
            ticket.headers[names[1]] = str(remaining)
            ticket.headers[names[2]] = reset
        shown = notices.fullest([
            Standing(cap, int(result[1 + i]) + ticket.holds[i].reserved)
            for i, cap in enumerate(caps)], ticket.at)
        if shown:
            ticket.headers.update(notices.headers(shown, ticket.at, self.thresholds))

    # -- settlement ------------------------------------------------------------------------

    async def settle(self, ticket: Ticket, settlement: Settlement) -> None:
        """Record the finished request exactly once; spool it when Redis cannot be reached."""
        self.settle_soon(ticket, settlement)
        await self.drain()

    def settle_soon(self, ticket: Ticket, settlement: Settlement) -> None:
        """`settle`, sent now and not awaited (the proxy settles every request this way: a
        client that goes away must not cancel it). `drain` waits until it is recorded or
        spooled."""
        try:
            entry = self._settlement(ticket, settlement)
        except Exception:  # a bug in what was recorded: the request was served all the same
            log.exception("cannot record the usage of %s as given", ticket.request_id)
            self.settle_minimal(ticket, settlement.cost_micros)
            return
        self._send(entry, ticket.request_id)

    def settle_minimal(self, ticket: Ticket, cost_micros: int, *, model: str = "",
                       status: int = 0, stream: bool = False) -> None:
        """Charge a served request whose usage cannot be recorded (a bug on the way): its
        cost, who made it and what else is known, marked estimated, error_type
        settlement_error. What admission reserved is released as by any settlement."""
        cost = Cost(cost_micros, row="", known=True, version="")
        settlement = Settlement.of(ticket, Usage(), cost, model=model, status=status,
                                   stream=stream, estimated=True, error_type=SETTLEMENT_ERROR)
        self._send(self._settlement(ticket, settlement), ticket.request_id)

    def refuse(self, ticket: Ticket, settlement: Settlement) -> None:
        """Record a request the gateway refused (`Settlement.refused`), sent now and not
        awaited: the settlement script with no counter, hold or window, so it costs one
        idempotency mark and one stream entry, the same stream (and spool when Redis is away)
        as a settlement, rolled up exactly once by request id, and never counted as spend."""
        now_ms = int(ticket.at.timestamp() * 1000)
        keys = [self.keyspace.settled(now_ms // 60000), self.keyspace.events,
                self.keyspace.alerts]
        args: list[Any] = [now_ms, ticket.request_id, SETTLED_TTL, 0, 0, 0, 0, 0,
                           *settlement.counted(), 0, STREAM_FIELD, settlement.packed()]
        self._send({"keys": keys, "args": args}, ticket.request_id)

    def _send(self, entry: dict[str, Any], request_id: str) -> None:
        if self.journal is not None:
            self.journal.append(entry)
        if not isinstance(self._settle, FastScript):  # redis-py's (TLS, embedded): a task
            self._keep(asyncio.ensure_future(self._record(entry, request_id)))
            return
        try:  # the pipelined connection: a reply future, no task (one fewer per request)
            reply = self._settle(entry["keys"], entry["args"])
        except RedisError as exc:
            self._spool(entry, request_id, exc)
            return
        self._in_flight.add(reply)
        reply.add_done_callback(partial(self._landed, entry, request_id))

    def _landed(self, entry: dict[str, Any], request_id: str, reply: asyncio.Future[Any]) -> None:
        self._in_flight.discard(reply)
        exc = reply.exception() if not reply.cancelled() else RedisError("cancelled")
        if exc is not None:
            self._spool(entry, request_id, exc)

    def _keep(self, pending: asyncio.Future[Any]) -> None:
        """Hold on to work under way (a task is otherwise only weakly referenced) until done."""
        self._in_flight.add(pending)
        pending.add_done_callback(self._in_flight.discard)

    async def drain(self) -> None:
        """Wait until every settlement and release sent so far is recorded, spooled or given
        up (shutdown; tests)."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    def _settlement(self, ticket: Ticket, settlement: Settlement) -> dict[str, Any]:
        """The settlement script's keys and arguments (also what the spool stores)."""
        at = ticket.at
        now_ms = int(at.timestamp() * 1000)
        counters = self.counters(ticket.principal, at)
        if ticket.extra:
            counters = counters + [k for k, _ in ticket.extra]
        keys = [self.keyspace.settled(now_ms // 60000), self.keyspace.events,
                self.keyspace.alerts, *counters]
        holds = ticket.holds
        if not ticket.admitted:
            # Admission never reached Redis: still land the thresholds on the capped counters.
            groups = self._groups(ticket.principal, at)
            holds = [Hold(i, self.keyspace.holds(counters[i - 1]), 0,
                          min(c.amount for c in caps)) for i, caps in sorted(groups.items())]
        if ticket.admitted:  # correct the estimates admission added to the windows
            windows = [(key, 0, settlement.rate_input - est_in,
                        settlement.output_tokens - est_out)
                       for key, est_in, est_out in ticket.windows]
        else:  # nothing was counted yet: count the request now
            minute = now_ms // 60000
            windows = [(self.keyspace.window(lim.scope, lim.scope_id, minute), 1,
                        settlement.rate_input, settlement.output_tokens)
                       for lim in ticket.principal.limits if lim.rpm or lim.itpm or lim.otpm]
        keys += [h.key for h in holds] + [w[0] for w in windows] + ticket.flights
        args: list[Any] = [
            now_ms, ticket.request_id, SETTLED_TTL, len(counters), 3, len(holds), len(windows),
            len(ticket.flights), *settlement.counted(), *_COUNTER_TTLS,
            *(ttl for _, ttl in ticket.extra),
        ]
        for h in holds:
            args += (h.counter_index, h.reserved, h.cap)
        for _, d_requests, d_in, d_out in windows:
            args += (d_requests, d_in, d_out, WINDOW_TTL)
        args.append(len(self.thresholds))
        args += self.thresholds
        args += (STREAM_FIELD, settlement.packed())
        return {"keys": keys, "args": args}

    async def _record(self, entry: dict[str, Any], request_id: str) -> None:
        try:
            await self.apply(entry)
        except RedisError as exc:
            self._spool(entry, request_id, exc)

    def _spool(self, entry: dict[str, Any], request_id: str, exc: BaseException) -> None:
        self.redis_errors += 1
        log.warning("redis unreachable at settlement of %s; spooled: %s", request_id, exc)
        self.spool.append(entry)

    async def apply(self, entry: dict[str, Any]) -> int:
        """Run one settlement (fresh or spooled). 0 means it had already been applied."""
        return int(await self._settle(keys=entry["keys"], args=entry["args"]))

    async def replay_spool(self) -> int:
        """Replay spooled settlements if Redis answers; returns how many were applied."""
        apply = self.apply
        if self.journal is not None:
            journal = self.journal

            async def apply(entry: dict[str, Any]) -> int:
                # Journalled again: the ledger's watermark is compared with when it was sent,
                # and this is when it reaches Redis.
                journal.append(entry)
                return await self.apply(entry)
        try:
            replayed = await self.spool.replay(apply)
        except RedisError:
            return 0
        self.spool_replayed += replayed
        return replayed
