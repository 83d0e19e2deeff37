"""The rollup: usage events from the Redis stream into DuckDB, each exactly once.

One pass over a batch of events:

1. read them with the consumer group (first the entries this consumer read but never
   acknowledged, i.e. a batch whose run died; then new ones);
2. in ONE DuckDB transaction: insert the requests that are not in `requests` yet (the request id
   is the primary key), and add exactly those rows to `usage_daily`, `usage_sessions` and
   `usage_projects`;
3. commit; then XACK and XDEL the entries (so the stream stays short).

A crash before the commit rolls the transaction back and the entries stay pending: the rerun
reads them again. A crash after the commit and before the acknowledgement leaves entries pending
whose requests are already in DuckDB: the rerun finds them there and adds nothing. Either way
nothing is lost and nothing is counted twice.

Only one process rolls up at a time: the holder of a Redis lock (SET NX PX with a random token,
a TTL of a few seconds, released on close). A heartbeat renews it every fifth of its TTL while
the process lives, so a holder that dies without cleaning up (SIGKILL, power) loses it within
the TTL, and a standby or restarted admin, whose heartbeat keeps asking, takes over and runs at
once. Because only the lock holder reads, all holders share one consumer name, so a new holder
picks up what a dead one left pending.

A holder that lost the lock without noticing (a stall longer than the TTL) must not write:
- each batch renews the lock before it starts, and commits to DuckDB only while the lock is
  surely still ours by our own clock (Redis keeps it at least a TTL from when we last asked;
  the commit must start before 80 % of that has passed);
- the acknowledgement runs in a transaction that checks the lock still holds our token, so a
  batch that committed is left pending rather than acknowledged after the lock moved on.
What makes a slip harmless anyway is the write itself: DuckDB inserts only request ids that
`requests` does not hold yet, and XACK and XDEL are idempotent, so the same entry committed by
two holders into one DuckDB file counts once. The lock is what keeps a standby that has its
own DuckDB file from splitting the history between two files.

Before reading any new entry, a run makes sure the live counters are complete
(`ledger.rebuild.ensure_counters`): if Redis came back empty, or as an older copy of itself
(`ledger.rewind`), they are rebuilt from DuckDB first.

Each event is one settlement packed in one stream field (ledger.settlement), which keeps
reading, the rollup's bottleneck, cheap; `hiredis` (a dependency) parses the replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from importlib import resources
from typing import Any

import duckdb
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError, ResponseError

from ledger import rewind, telemetry
from ledger.journal import REPLAY_FIELD
from ledger.keyspace import KeySpace
from ledger.periods import day_sql
from ledger.pricing import MTOK, US_GEO_MULTIPLIER, PriceTable
from ledger.rebuild import ensure_counters, subtract
from ledger.settlement import (
    FIELDS,
    REQUEST_COLUMNS,
    RS,
    SQL_COLUMNS,
    TOKEN_COUNTERS,
    US,
    entry_values,
)
from ledger.usage import Usage

log = logging.getLogger("meterd.rollup")

Db = Callable[..., Awaitable[Any]]  # AdminState.db: run a sync function on the DuckDB thread
Fault = Callable[[str], None]
Fence = Callable[[], bool]  # may this batch still commit?
Entries = list[tuple[bytes, dict[bytes, bytes] | None]]  # stream entries (deleted: None)

GROUP = "rollup"
_LEASE = resources.files("ledger").joinpath("lease.lua").read_text()
_ID = FIELDS.index("id")
_REPLAY_FIELD = REPLAY_FIELD.encode()
CONSUMER = "rollup"  # one name for every lock holder: a new holder inherits what is pending
STEPS = ("inserted", "daily", "committed")  # where a test's fault hook may strike
JOB_ID = "meterd-rollup"
LOCK_TTL_MS = 5_000  # a dead holder's lock lapses this long after its last renewal
LEASE_SHARE = 0.8  # of the TTL since we last asked Redis: the window a commit may start in
PURGE_JOB_ID = "meterd-purge"

# A request is an error when the provider did not answer 2xx or the exchange broke (an error
# event after a 200, a reset, a client that left before the end).
ERROR_SQL = "(status < 200 OR status >= 300 OR error_type <> '')"

MEASURES = ("requests", "errors", "estimated", "input_tokens", "output_tokens", "cache_write_5m",
            "cache_write_1h", "cache_read", "web_search", "cost_micros", "cache_saved_micros")

# A batch travels to DuckDB as one string: fields joined by US (0x1f), entries by RS (0x1e),
# split in SQL. That is several times faster than binding one list per column.


def _typed(i: int, name: str, kind: str, default: str) -> str:
    raw = f"f[{i}]"
    if kind == "VARCHAR":
        return f"coalesce({raw}, {default}) AS {name}"
    value = f"coalesce(TRY_CAST({raw} AS {'BIGINT' if kind == 'BOOLEAN' else kind}), {default})"
    return f"{value} <> 0 AS {name}" if kind == "BOOLEAN" else f"{value} AS {name}"


def _column(i: int, name: str, kind: str, default: str) -> str:
    """The SQL of field `name`, the i-th value of `f` (f[1] is the stream entry id: the
    request id and time of an event that has none)."""
    raw = f"f[{i}]"
    if name == "id":
        return f"CASE WHEN coalesce({raw}, '') = '' THEN 'stream:' || f[1] ELSE {raw} END AS id"
    if name == "ts_ms":
        ms = f"TRY_CAST({raw} AS BIGINT)"
        return (f"epoch_ms(CASE WHEN {ms} BETWEEN 1 AND 32503680000000 THEN {ms} "
                "ELSE TRY_CAST(split_part(f[1], '-', 1) AS BIGINT) END) AS ts")
    return _typed(i, name, kind, default)


def _batch_sql() -> str:
    cols = {"ts" if n == "ts_ms" else n: _column(i, n, k, d)
            for i, (n, k, d) in enumerate(SQL_COLUMNS, 2)}
    cols["cache_saved_micros"] = "0::BIGINT AS cache_saved_micros"  # priced afterwards
    return (
        "CREATE OR REPLACE TEMP TABLE rollup_batch AS "
        f"SELECT * FROM (SELECT {', '.join(cols[c] for c in REQUEST_COLUMNS)} FROM "
        "(SELECT string_split(unnest(string_split($1, chr(30))), chr(31)) AS f))"
    )


_BATCH_SQL = _batch_sql()
# Saved by caching: cache reads × (input rate − cache-read rate) × multiplier, half up (µ$).
_SAVE_SQL = (
    "UPDATE rollup_batch b SET cache_saved_micros = CAST((2 * b.cache_read::HUGEINT * (CASE"
    " WHEN r.threshold > 0 AND b.input_tokens + b.cache_write_5m + b.cache_write_1h"
    " + b.cache_read > r.threshold THEN r.diff_long ELSE r.diff END) * r.num + r.den)"
    " // (2 * r.den) AS BIGINT) FROM rollup_rates r WHERE b.cache_read > 0"
    " AND r.model = b.model AND r.speed = b.speed AND r.geo = b.inference_geo"
)

def _team_sql() -> str:
    """Each request's team: the stay (ledger/tenure.sql: the organization's days valid_from
    .. valid_to - 1) covering the request's day, the same day the rollups file it under."""
    day = day_sql("b.ts")
    return ("UPDATE rollup_batch b SET team_id = m.team_id FROM memberships m"
            f" WHERE m.developer_id = b.developer_id AND m.valid_from <= {day}"
            f" AND (m.valid_to IS NULL OR {day} < m.valid_to) AND b.team_id <> m.team_id")


def _add(conn: duckdb.DuckDBPyConnection, table: str, keys: tuple[str, ...],
         source: str) -> None:
    """Add the sums of `source` grouped by `keys` to `table` (day = the organization's date
    of the request's start, ledger.periods.day_sql). UPDATE then INSERT of the missing keys:
    several times faster in DuckDB than INSERT ... ON CONFLICT DO UPDATE or MERGE on these
    tables."""
    select = ", ".join(f"{day_sql()} AS {k}" if k == "day" else k for k in keys)
    sums = ", ".join(f"CAST(sum({m}) AS BIGINT) AS {m}" for m in MEASURES[3:])
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE rollup_sums AS SELECT {select}, count(*) AS requests, "
        f"count(*) FILTER (WHERE {ERROR_SQL}) AS errors, count(*) FILTER (WHERE estimated) "
        f"AS estimated, {sums} FROM {source} WHERE refusal = '' GROUP BY ALL")
    match = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    conn.execute(f"UPDATE {table} t SET {', '.join(f'{m} = t.{m} + s.{m}' for m in MEASURES)} "
                 f"FROM rollup_sums s WHERE {match}")
    conn.execute(f"INSERT INTO {table} BY NAME SELECT s.* FROM rollup_sums s "
                 f"ANTI JOIN {table} t ON {match}")


def add_to_rollups(conn: duckdb.DuckDBPyConnection, source: str,
                   fault: Fault | None = None) -> None:
    """Add the request rows of `source` (a table or view shaped like `requests`) to the daily,
    per-session and per-project rollups. The caller owns the transaction. Refusals (a
    `refusal` set) are left out: they are not usage, only rows of the request log."""
    _add(conn, "usage_daily", ("day", "developer_id", "team_id", "model"), source)
    if fault is not None:
        fault("daily")
    _add(conn, "usage_sessions", ("day", "session_id", "developer_id", "team_id"), source)
    _add(conn, "usage_projects", ("day", "project", "developer_id", "team_id"), source)
    _add_keys(conn, source)


def _add_keys(conn: duckdb.DuckDBPyConnection, source: str) -> None:
    """Per key: requests, spend and the last request's start (what the key list shows);
    refusals are not use, as they are not usage (_add)."""
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE rollup_keys AS SELECT key_id, count(*) AS requests, "
        f"CAST(sum(cost_micros) AS BIGINT) AS cost_micros, max(ts) AS last_used_at FROM {source} "
        "WHERE refusal = '' GROUP BY key_id")
    conn.execute("UPDATE key_usage t SET requests = t.requests + s.requests, cost_micros = "
                 "t.cost_micros + s.cost_micros, last_used_at = greatest(t.last_used_at, "
                 "s.last_used_at) FROM rollup_keys s WHERE t.key_id = s.key_id")
    conn.execute("INSERT INTO key_usage BY NAME SELECT s.* FROM rollup_keys s "
                 "ANTI JOIN key_usage t ON t.key_id = s.key_id")


class Savings:
    """Per (model, speed, geography): how much cheaper a cache read is than an input token.

    Priced with the admin's price table when the request is rolled up. The route multiplier of
    regional cloud endpoints is not in the event, so it is not applied here.
    """

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._known: dict[tuple[str, str, str], tuple[int, int, int, int, int]] = {}

    def rates(self, model: str, speed: str, geo: str) -> tuple[int, int, int, int, int]:
        """(long-tier threshold or 0, µ$/MTok saved, the same above the threshold, multiplier
        numerator, denominator × MTOK)."""
        key = (model, speed, geo)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = self._compute(model, speed, geo)
        return found

    def _compute(self, model: str, speed: str, geo: str) -> tuple[int, int, int, int, int]:
        row = self.prices.row_for(model)
        if row is None:
            # The fallback row has one tier and charges the US multiplier; read its rates
            # through cost(): a million tokens at a rate in µ$/MTok costs the rate.
            diff = (self.prices.cost(model, Usage(input_tokens=MTOK)).micros
                    - self.prices.cost(model, Usage(cache_read=MTOK)).micros)
            threshold, diff_long, us = 0, diff, True
        else:
            base = row.rates_for(Usage(speed=speed))
            diff = base.input - base.cache_read
            threshold, diff_long = 0, diff
            if row.long_rates is not None and not (row.fast_rates is not None and speed == "fast"):
                threshold = row.long_threshold
                diff_long = row.long_rates.input - row.long_rates.cache_read
            us = row.us_geo_multiplier
        factor = US_GEO_MULTIPLIER if us and geo.lower() == "us" else Fraction(1)
        return (threshold, max(diff, 0), max(diff_long, 0), factor.numerator,
                factor.denominator * MTOK)


def _encode(entries: Entries) -> str:
    """The batch as one US/RS-separated string (see _BATCH_SQL), stream entry id first."""
    us = US.encode()
    rows = [entry_id + us + us.join(entry_values(fields))
            for entry_id, fields in entries
            if fields]  # an entry deleted while pending: nothing to insert, only to acknowledge
    return RS.encode().join(rows).decode("utf-8", "replace")


class LockLost(Exception):
    """The rollup lock is no longer surely ours: the batch is not committed or acknowledged."""


def write_batch(conn: duckdb.DuckDBPyConnection, payload: str, savings: Savings,
                fault: Fault | None = None, fence: Fence | None = None,
                replays: list[str] | None = None,
                known: list[tuple[Any, ...]] | None = None) -> int:
    """Insert one batch of events in one transaction; returns how many requests were new.
    `fence` is asked right before the commit; when it says no, the batch is rolled back and
    LockLost raised. The request ids in `replays` that `requests` already holds are added to
    `known` (day, developer_id, team_id, cost_micros, TOKEN_COUNTERS' columns)."""
    try:
        return _write_batch(conn, payload, savings, fault, fence, False, replays, known)
    except duckdb.ConstraintException:
        # A repeat outside its own time range (an event that carried no start time, so each
        # copy took its stream entry's): look for repeats in the whole table instead.
        return _write_batch(conn, payload, savings, fault, fence, True, replays, known)


def _known_sql() -> str:
    """The rows of `replays` that `requests` already holds, filed under the day _add uses."""
    return (f"SELECT {day_sql()}, developer_id, team_id, cost_micros, "
            + ", ".join(TOKEN_COUNTERS.values()) + " FROM rollup_batch WHERE id IN "
            "(SELECT unnest($1::VARCHAR[])) AND id IN (SELECT id FROM requests)")


def _write_batch(conn: duckdb.DuckDBPyConnection, payload: str, savings: Savings,
                 fault: Fault | None, fence: Fence | None, anywhere: bool,
                 replays: list[str] | None, known: list[tuple[Any, ...]] | None) -> int:
    conn.execute("BEGIN")
    try:
        conn.execute(_BATCH_SQL, [payload])
        lo, hi, repeats = conn.execute(
            "SELECT min(ts), max(ts), count(*) - count(DISTINCT id) FROM rollup_batch"
        ).fetchone() or (0, 0, 0)
        if repeats:  # the same request twice in one batch (a replayed settlement): keep one
            conn.execute("DELETE FROM rollup_batch WHERE rowid NOT IN "
                         "(SELECT min(rowid) FROM rollup_batch GROUP BY id)")
        found = conn.execute(_known_sql(), [replays]).fetchall() if replays else []
        # Requests already rolled up (a rerun after a crash): same request, same start time,
        # so only that time range is searched and DuckDB skips every other row group.
        conn.execute("DELETE FROM rollup_batch WHERE id IN (SELECT id FROM requests WHERE "
                     + ("true)" if anywhere else "ts BETWEEN ? AND ?)"),
                     [] if anywhere else [lo, hi])
        # The team is the one the developer belonged to when the request started: a request
        # admitted just before a move, or settled after a back-dated one, follows the move.
        conn.execute(_team_sql())
        keys = conn.execute("SELECT DISTINCT model, speed, inference_geo FROM rollup_batch "
                            "WHERE cache_read > 0").fetchall()
        if keys:
            rates = [(m, s, g, *savings.rates(m, s, g)) for m, s, g in keys]
            conn.execute(
                "CREATE OR REPLACE TEMP TABLE rollup_rates AS SELECT unnest($1::VARCHAR[]) AS "
                "model, unnest($2::VARCHAR[]) AS speed, unnest($3::VARCHAR[]) AS geo, "
                "unnest($4::BIGINT[]) AS threshold, unnest($5::BIGINT[]) AS diff, "
                "unnest($6::BIGINT[]) AS diff_long, unnest($7::BIGINT[]) AS num, "
                "unnest($8::BIGINT[]) AS den", [list(c) for c in zip(*rates, strict=True)])
            conn.execute(_SAVE_SQL)
        conn.execute(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
                     "SELECT * FROM rollup_batch")
        if fault is not None:
            fault("inserted")
        add_to_rollups(conn, "rollup_batch", fault)
        row = conn.execute("SELECT count(*) FROM rollup_batch").fetchone()
        if fence is not None and not fence():
            raise LockLost("the rollup lock may have passed to another process")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if known is not None:
        known.extend(found)
    return int(row[0]) if row else 0


def lock_key(keyspace: KeySpace) -> str:
    """The Redis key of the rollup lock (under the keyspace's hash tag)."""
    return f"{keyspace.base}:rollup:lock"


class Rollup:
    """The rollup job of one admin process. See the module docstring."""

    def __init__(self, redis: Any, keyspace: KeySpace, conn: duckdb.DuckDBPyConnection,
                 db: Db, *, batch: int = 10_000, lock_ttl_ms: int = LOCK_TTL_MS,
                 prices: PriceTable | None = None, fault: Fault | None = None,
                 rebuild: bool = True, clock: Callable[[], datetime] | None = None,
                 token: str | None = None) -> None:
        """`db` runs a sync function on the DuckDB thread (AdminState.db). Without the
        heartbeat (`start_heartbeat`, which `schedule` starts) the lock lapses `lock_ttl_ms`
        after a run's last batch. `prices` (the admin's configured table) prices what caching
        saved. `fault` is called at each of STEPS (tests make it raise). `rebuild=False`
        leaves the counter rebuild to the caller (see ledger.rebuild). `clock` gives "now"
        (tests pin it). `token`: the lock's token when the caller already took it
        (`take_lease`: a standby admin, before it opened the DuckDB file)."""
        self.redis, self.keyspace, self.db = redis, keyspace, db
        # Our own connection to the database: our transaction never mixes with catalog writes.
        self.conn = conn.cursor()
        self.batch, self.lock_ttl_ms = batch, lock_ttl_ms
        self.savings = Savings(prices or PriceTable.load())
        self.fault, self.rebuild = fault, rebuild
        self.clock = clock or (lambda: datetime.now(UTC))
        self.lock = lock_key(keyspace)
        self.token = token or secrets.token_hex(16)
        self.leader = False  # held the lock when we last asked
        self.redis_down = False  # the last run could not reach Redis
        self._group_ready = False
        self._running = asyncio.Lock()
        self._lease_until = 0.0  # monotonic time until which the lock is surely ours
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False  # ends the heartbeat's loop (see close)
        self.on_lost: Callable[[], None] | None = None  # called when the lock is taken from us

    async def run_once(self) -> int:
        """Roll up everything in the stream if we hold (or get) the lock; returns how many
        requests were committed. Raises on Redis or DuckDB errors (the next run retries)."""
        async with self._running:
            if not await self._hold():
                return 0
            started = int(time.time() * 1000)  # what is in the stream now is read below
            mark = await self.db(rewind.watermark, self.conn)
            await self._ensure_counters(mark)
            if not self._group_ready:
                await self._create_group()
            done = 0
            try:
                # Our unacknowledged entries first (a run that died), then new ones. The
                # next batch is read from Redis while DuckDB writes the current one.
                for pending in (True, False):
                    entries, epoch = await self._read("0" if pending else ">")
                    while entries:
                        writing = asyncio.create_task(self._commit(entries, epoch))
                        try:
                            more = pending or len(entries) == self.batch
                            after = _text(entries[-1][0]) if pending else ">"
                            entries, epoch = await self._read(after) if more else ([], None)
                        finally:
                            done += await writing
            except LockLost:
                # What we read and did not acknowledge stays pending for the next holder.
                log.warning("lost the rollup lock during a run; another process continues")
                self.leader = False
                return done
            # Everything that reached Redis before `started` is in DuckDB: the proxies may
            # trim their journals up to it (ledger.journal). It only grows, across admins
            # whose clocks differ too (ledger.rewind compares it with the ledger's).
            until = max(started, mark)
            if done:
                await self.db(rewind.record, self.conn, until)
            await self.redis.set(self.keyspace.rolled_until, until)
            return done

    async def final_run(self) -> int:
        """The run at shutdown: roll up what is left, then release the lock."""
        try:
            return await self.run_once()
        except (RedisError, duckdb.Error) as exc:
            log.warning("final rollup failed (the next leader picks it up): %s", exc)
            return 0
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the heartbeat and release the lock (if ours) so a standby takes over at once."""
        if self._heartbeat is not None:
            # A flag as well as the cancel: redis-py can swallow a CancelledError that lands
            # inside a command, and the loop would then run (and this wait) forever.
            self._closing = True
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        async with self._running:
            try:
                await _lease(self.redis, [self.lock], self.token, "release")
            except RedisError as exc:
                log.warning("could not release the rollup lock (it expires): %s", exc)
            self.leader = False
            self._lease_until = 0.0

    def start_heartbeat(self, on_taken: Callable[[], None]) -> None:
        """Every fifth of the lock's TTL, renew the lock if ours or take it if free, until
        `close`. `on_taken` is called when this process takes the lock (a standby, or a
        restart after a holder died), so that it rolls up at once."""
        self._closing = False
        self._heartbeat = asyncio.create_task(self._beat(on_taken), name="rollup-heartbeat")

    async def _beat(self, on_taken: Callable[[], None]) -> None:
        while not self._closing:
            await asyncio.sleep(self.lock_ttl_ms / 5000)
            held_before = self.leader
            try:
                held = await self._hold()
            except RedisError as exc:
                self.redis_failed(exc)
                continue
            self.redis_answered()
            if held and not held_before:
                on_taken()
            if held_before and not held and self.on_lost is not None:
                self.on_lost()

    def redis_failed(self, exc: RedisError) -> None:
        """Note a run that could not reach Redis. Logged when Redis goes away, not on every
        tick of an outage (the next runs retry)."""
        if not self.redis_down:
            log.warning("redis unavailable, rollups wait until it answers: %s", exc)
        self.redis_down = True

    def redis_answered(self) -> None:
        if self.redis_down:
            log.info("redis answers again, rollups resume")
        self.redis_down = False

    # -- steps -----------------------------------------------------------------------------

    async def _ensure_counters(self, mark: int = 0) -> None:
        """Rebuild the counters if Redis lost them, or if it is behind the ledger's
        watermark `mark` (ledger.rewind)."""
        if self.rebuild:
            if mark:
                await rewind.rewind_if_behind(self.redis, self.keyspace, mark, self.clock())
            await ensure_counters(self.redis, self.keyspace, self.conn, self.db, self.clock())

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keyspace.events, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, cursor: str) -> tuple[Entries, bytes | None]:
        """A batch of entries, and the epoch Redis had when it gave them (see _commit)."""
        for _ in range(2):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.get(self.keyspace.epoch)
                    pipe.xreadgroup(GROUP, CONSUMER, {self.keyspace.events: cursor},
                                    count=self.batch)
                    epoch, reply = await pipe.execute()
            except ResponseError as exc:
                # Real Redis says NOGROUP; the embedded backend complains that the key is gone.
                if "NOGROUP" not in str(exc) and "key to exist" not in str(exc):
                    raise
                # Redis lost the stream and its group (restarted empty): the counters are
                # rebuilt before we read anything new, then the group starts over.
                await self._ensure_counters()
                await self._create_group()
                continue
            return (list(reply[0][1]) if reply else []), epoch
        return [], None

    async def _commit(self, entries: Entries, epoch: bytes | None) -> int:
        if not await self._hold():  # renewed: a whole lease for this batch's write
            raise LockLost("another process holds the rollup lock")
        payload = _encode(entries)
        # Only replays of lines sent under another epoch can be in the rebuilt counters twice
        # (one sent under this epoch filled in what a promoted replica's counters lacked).
        replays = [_text(entry_values(fields)[_ID]) for _, fields in entries
                   if fields and fields.get(_REPLAY_FIELD, epoch) != epoch]
        known: list[tuple[Any, ...]] = []
        new = await self.db(write_batch, self.conn, payload, self.savings, self.fault,
                            self._lease_valid, replays, known) if payload else 0
        if self.fault is not None:
            self.fault("committed")
        # Exactly these ids are deleted: trimming by id range could drop entries of a stream
        # that Redis recreated meanwhile (restart), with ids from a clock that went back.
        ids = [entry_id for entry_id, _ in entries if entry_id is not None]
        if not await _lease(self.redis, [self.lock, self.keyspace.events], self.token, "ack",
                            GROUP, *ids):
            raise LockLost("the rollup lock passed on before the acknowledgement")
        if known:
            # Replays of settlements DuckDB had before Redis lost them: the rebuild counted
            # them from DuckDB, their replay counted them again. (A crash right here leaves
            # the counters over by them: budgets err towards refusing.)
            await subtract(self.redis, self.keyspace, known, self.clock())
        return int(new)

    # -- the lock --------------------------------------------------------------------------

    async def _hold(self) -> bool:
        """Take the lock, or renew it if it is ours; note until when it surely is."""
        asked = time.monotonic()  # Redis keeps the key at least a TTL from here
        held = await _lease(self.redis, [self.lock], self.token, "take", self.lock_ttl_ms)
        self._lease_until = asked + self.lock_ttl_ms * LEASE_SHARE / 1000 if held else 0.0
        self.leader = held
        return held

    def _lease_valid(self) -> bool:
        """The fence of a commit (asked on the DuckDB thread)."""
        return time.monotonic() < self._lease_until


async def take_lease(redis: Any, keyspace: KeySpace, token: str,
                     ttl_ms: int = LOCK_TTL_MS) -> bool:
    """Take the rollup lock with `token` if it is free (or already ours)."""
    return await _lease(redis, [lock_key(keyspace)], token, "take", ttl_ms)


async def _lease(redis: Any, keys: list[str], token: str, action: str, *args: Any) -> bool:
    """Run one action on the lock (lease.lua); True if the lock was ours."""
    return bool(await redis.eval(_LEASE, len(keys), *keys, token, action, *args))


def schedule(scheduler: AsyncIOScheduler, rollup: Rollup, interval: float,
             on_tick: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the rollup every `interval` seconds, never two at a time (the caller runs the
    first one at start, before budgets are enforced).

    `on_tick` runs after every run (leader or not) that reached Redis. A Redis outage is
    logged when it starts and when it ends, not on every tick. Also starts the lock's
    heartbeat, so call this before the first run. The scheduler does not run jobs at
    shutdown: after `scheduler.shutdown()`, await `rollup.final_run()` (which stops the
    heartbeat and releases the lock).
    """
    async def tick() -> None:
        try:
            await rollup.run_once()
            if on_tick is not None:
                await on_tick()
        except RedisError as exc:
            rollup.redis_failed(exc)
        else:
            rollup.redis_answered()

    scheduler.add_job(tick, "interval", seconds=interval, id=JOB_ID, name="rollup",
                      max_instances=1, coalesce=True, replace_existing=True,
                      misfire_grace_time=max(1, int(interval)))

    def take_over() -> None:  # the lock just became ours: roll up now, not an interval later
        if scheduler.running:
            scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    rollup.start_heartbeat(take_over)


def purge(conn: duckdb.DuckDBPyConnection, retention_days: int, now: datetime) -> int:
    """Delete raw request rows older than `retention_days` (the rollups keep their sums);
    returns how many were deleted."""
    if retention_days <= 0:
        raise ValueError("retention_days must be at least 1")
    cutoff = now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=retention_days)
    row = conn.execute("DELETE FROM requests WHERE ts < ?", [cutoff]).fetchone()
    return int(row[0]) if row else 0


def schedule_purge(scheduler: AsyncIOScheduler, conn: duckdb.DuckDBPyConnection, db: Db,
                   retention_days: int, every_hours: float = 6,
                   telemetry_days: int = 90) -> None:
    """Apply the retentions (requests, telemetry) every few hours (first at once)."""
    async def job() -> None:
        deleted = await db(purge, conn, retention_days, datetime.now(UTC))
        if deleted:
            log.info("retention: deleted %d request rows older than %d days", deleted,
                     retention_days)
        deleted = await db(telemetry.purge, conn, telemetry_days, datetime.now(UTC))
        if deleted:
            log.info("retention: deleted %d telemetry rows older than %d days", deleted,
                     telemetry_days)

    scheduler.add_job(job, "interval", hours=every_hours, id=PURGE_JOB_ID, name="purge",
                      max_instances=1, coalesce=True, replace_existing=True,
                      next_run_time=datetime.now(UTC))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
