"""Re-seeding the live spend counters when Redis comes back empty.

Redis restarted without persistence (or was flushed) has lost the period counters that budget
admission compares with, and the `ready` marker with them; admission refuses to enforce budgets
until the marker is back. Settlement does not wait: requests that finish meanwhile already land
in fresh counters and in the (fresh) event stream.

So the rebuild ADDS (HINCRBY) to each counter of the current day, week and month what DuckDB
holds for that period, and sets the marker in the same step (rebuild.lua). DuckDB must not yet
hold any of the events settled since the flush, so this runs before the rollup reads a new entry
(`Rollup.run_once` calls it first, under the rollup lock). One exception is handled exactly: a
settlement replayed after the flush although it had been rolled up before (its "already
settled" marker was lost too) is in both; its amounts are subtracted once.

After a rewind (ledger.rewind: Redis came back as an older copy of itself) the counters hold
only the stream's events after the entry it noted (`counted_after`); the events up to it that
DuckDB lacks are added too, and the events up to it that DuckDB has are dropped from the stream
without a subtraction (they were in no counter).

Per-model caps' counters (ledger/model_caps.py) are rebuilt the same way, from DuckDB's
per-model daily sums, so that a flush cannot reopen a model cap.

Not rebuilt: threshold markers (`w75`...) and reservations (`held`, none exist yet: admission
was refused), and counters of periods that already ended.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

import duckdb

from ledger import caps
from ledger.keyspace import KeySpace
from ledger.model_caps import Matcher
from ledger.periods import COUNTER_TTL, PERIODS, day_start, local_day, period_end, start_day
from ledger.settlement import FIELDS, SPENT, TOKEN_COUNTERS, entry_values

_COMMIT = resources.files("ledger").joinpath("rebuild.lua").read_text()
log = logging.getLogger("meterd.rebuild")
Db = Callable[..., Awaitable[Any]]

SCOPES = ("developer", "team", "org")
Sums = dict[str, int]
ModelCap = tuple[str, str, str, Matcher]  # scope, scope_id, period, its models


def _fields(cost: int, tokens: dict[str, int], daily: bool) -> Sums:
    out = {SPENT: cost}
    if daily:
        out.update({f: tokens[col] for f, col in TOKEN_COUNTERS.items()})
    return out


class Counters:
    """Amounts to add, per counter key and field."""

    def __init__(self, keyspace: KeySpace, now: datetime,
                 model_caps: tuple[ModelCap, ...] = ()) -> None:
        self.keyspace, self.now, self.model_caps = keyspace, now, model_caps
        # The organization's days, as the rollup files spend (periods.day_sql).
        self.starts = {p: start_day(p, now) for p in PERIODS}
        self.ends = {p: local_day(period_end(p, now)) for p in PERIODS}
        self.amounts: dict[str, Sums] = {}
        self.ttl: dict[str, int] = {}

    def add(self, day: date, developer_id: str, team_id: str, cost: int,
            tokens: dict[str, int], sign: int = 1, model: str = "") -> None:
        if model:
            self._add_model(day, developer_id, team_id, model, sign * cost)
        for period in PERIODS:
            if not self.starts[period] <= day < self.ends[period]:
                continue
            fields = _fields(cost, tokens, period == "daily")
            for scope, scope_id in zip(SCOPES, (developer_id, team_id, ""), strict=True):
                key = self.keyspace.counter(scope, scope_id, period, self.now)
                self.ttl[key] = COUNTER_TTL[period]
                sums = self.amounts.setdefault(key, defaultdict(int))
                for name, value in fields.items():
                    sums[name] += sign * value

    def _add_model(self, day: date, developer_id: str, team_id: str, model: str,
                   cost: int) -> None:
        """The per-model caps' counters `model`'s spend counts in (settle.lua adds only
        `spent` to them); each counter once, though a developer's cap and their team's
        per-member cap on the same models share one."""
        keys = set()
        for scope, scope_id, period, matcher in self.model_caps:
            if (self.starts[period] <= day < self.ends[period]
                    and caps.applies(scope, scope_id, developer_id, team_id) and matcher(model)):
                counter = caps.counter(scope, scope_id, developer_id)
                key = self.keyspace.model_counter(*counter, period, self.now, matcher.models)
                keys.add(key)
                self.ttl[key] = COUNTER_TTL[period]
        for key in keys:
            self.amounts.setdefault(key, defaultdict(int))[SPENT] += cost


async def ensure_counters(redis: Any, keyspace: KeySpace, conn: duckdb.DuckDBPyConnection,
                          db: Db, now: datetime | None = None) -> bool:
    """Rebuild the current periods' counters if Redis lost them; True if it did.

    `db` runs a sync function on the DuckDB thread (AdminState.db). Call it before anything
    reads new entries of the event stream into DuckDB (see the module docstring).
    """
    if await redis.exists(keyspace.ready):
        return False
    at = (now or datetime.now(UTC)).astimezone(UTC)
    model_caps = await db(_model_caps, conn)
    counters = Counters(keyspace, at, model_caps)
    first, end = min(counters.starts.values()), max(counters.ends.values())
    events = await _stream_events(redis, keyspace, first, end)
    rows, seen = await db(_history, conn, first, end, [e["id"] for e in events])
    for day, developer_id, team_id, model, cost, *tokens in rows:
        counters.add(day, developer_id, team_id, int(cost),
                     dict(zip(TOKEN_COUNTERS.values(), map(int, tokens), strict=True)),
                     model=model)
    # Which events the counters hold: all, or those after the entry a rewind noted.
    after = await redis.get(keyspace.counted_after)
    cut = _entry_order(_text(after)) if after else (-1, -1)
    counted = {e["id"] for e in events if _entry_order(e["entry"]) > cut}
    twice = [event for event in events if event["id"] in seen]
    for event in twice:  # in DuckDB and already in the counters: once only
        if event["id"] in counted:
            counters.add(event["day"], event["developer_id"], event["team_id"],
                         event["cost_micros"], event, sign=-1, model=event["model"])
    for event in {e["id"]: e for e in events if e["id"] not in seen | counted}.values():
        # Settled before the rewind and not rolled up yet: in no counter.
        counters.add(event["day"], event["developer_id"], event["team_id"],
                     event["cost_micros"], event, model=event["model"])
    # Events in DuckDB and counted once now leave the stream, so that the rollup, which
    # takes back the replays it finds already in DuckDB, leaves them be.
    keys, args = [keyspace.ready, keyspace.counted_after, keyspace.events], []
    for key, sums in counters.amounts.items():
        # settle.lua never writes a zero token field
        fields = [(name, value) for name, value in sums.items() if value]
        keys.append(key)
        args += [counters.ttl[key], len(fields), *(x for pair in fields for x in pair)]
    args += [event["entry"] for event in twice]
    if not await redis.eval(_COMMIT, len(keys), *keys, *args):
        return False  # someone else rebuilt meanwhile
    if counters.amounts:
        log.warning("redis had lost the spend counters: rebuilt %d counters of the current "
                    "periods from DuckDB (%d events settled since were already in them)",
                    len(counters.amounts), len(events))
    else:
        log.info("spend counters marked complete (nothing in DuckDB for the current periods)")
    return True


async def subtract(redis: Any, keyspace: KeySpace, rows: list[tuple[Any, ...]],
                   now: datetime) -> None:
    """Take back from the live counters replayed settlements that DuckDB already held
    (rows: day, developer_id, team_id, cost_micros, then TOKEN_COUNTERS' columns): the rebuild
    counted them from DuckDB and the replay's settlement counted them again."""
    counters = Counters(keyspace, now.astimezone(UTC))
    for day, developer_id, team_id, cost, *tokens in rows:
        counters.add(day, developer_id, team_id, int(cost),
                     dict(zip(TOKEN_COUNTERS.values(), map(int, tokens), strict=True)), sign=-1)
    async with redis.pipeline(transaction=True) as pipe:
        for key, sums in counters.amounts.items():
            for name, value in sums.items():
                if value:
                    pipe.hincrby(key, name, value)
        await pipe.execute()
    log.info("took back %d replayed settlements the ledger already had from the counters",
             len(rows))


def _history(conn: duckdb.DuckDBPyConnection, first: date, end: date,
             stream_ids: list[str]) -> tuple[list[tuple[Any, ...]], set[str]]:
    """Daily sums per developer, team and model since `first`, and which stream ids DuckDB
    holds."""
    tokens = ", ".join(f"sum({col})" for col in TOKEN_COUNTERS.values())
    rows = conn.execute(
        "SELECT day, developer_id, team_id, model, sum(cost_micros), "
        f"{tokens} FROM usage_daily WHERE day >= ? AND day < ? GROUP BY ALL",
        [first, end]).fetchall()
    seen: set[str] = set()
    if stream_ids:
        found = conn.execute(
            "SELECT id FROM requests WHERE ts >= ? AND ts < ? AND id IN "
            "(SELECT unnest($3::VARCHAR[]))",  # ts: naive UTC; the days: the org's
            [_naive(day_start(first)), _naive(day_start(end)), stream_ids]).fetchall()
        seen = {r[0] for r in found}
    return rows, seen


def _naive(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None)


def _model_caps(conn: duckdb.DuckDBPyConnection) -> tuple[ModelCap, ...]:
    rows = conn.execute("SELECT scope, scope_id, period, models FROM model_budgets").fetchall()
    return tuple((scope, scope_id, period, Matcher(tuple(models)))
                 for scope, scope_id, period, models in rows)


_INT_FIELDS = ("ts_ms", "cost_micros", *TOKEN_COUNTERS.values())


async def _stream_events(redis: Any, keyspace: KeySpace, first: date,
                         end: date) -> list[dict[str, Any]]:
    """The stream's events that fall in the current periods (only the fields counters use)."""
    events: list[dict[str, Any]] = []
    start = "-"
    while True:
        chunk = await redis.xrange(keyspace.events, min=start, max="+", count=10_000)
        for entry_id, fields in chunk:
            values = dict(zip(FIELDS, entry_values(fields), strict=True))
            event: dict[str, Any] = {
                name: _text(values[name]) for name in ("id", "developer_id", "team_id",
                                                       "model")}
            for name in _INT_FIELDS:
                try:
                    event[name] = int(values[name] or 0)
                except ValueError:
                    event[name] = 0
            event["day"] = local_day(datetime.fromtimestamp(event["ts_ms"] // 1000, UTC))
            event["entry"] = _text(entry_id)
            if event["id"] and first <= event["day"] < end:
                events.append(event)
        if len(chunk) < 10_000:
            return events
        start = "(" + _text(chunk[-1][0])


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
