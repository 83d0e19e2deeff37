"""The rollup: usage events from the Redis stream into DuckDB, each exactly once.

One pass over a batch of events:

1. read them with the consumer group (first the entries this consumer read but never
   acknowledged, i.e. a batch whose run died; then new ones);
2. in ONE DuckDB transaction: insert the requests that are not in `requests` yet (the request id
   is the primary key), and add exactly those rows to `usage_daily` and `usage_sessions`;
3. commit; then XACK and XDEL the entries (so the stream stays short).

A crash before the commit rolls the transaction back and the entries stay pending: the rerun
reads them again. A crash after the commit and before the acknowledgement leaves entries pending
whose requests are already in DuckDB: the rerun finds them there and adds nothing. Either way
nothing is lost and nothing is counted twice.

Only one process rolls up at a time: the holder of a Redis lock (SET NX PX with a random token,
renewed on every run and between batches, released on close). A standby admin process runs the
same job; it does nothing while another holds the lock and takes over when that one closes or
its lock expires. Because only the lock holder reads, all holders share one consumer name, so a
new holder picks up what a dead one left pending.

Before reading any new entry, a run makes sure the live counters are complete
(`ledger.rebuild.ensure_counters`): if Redis came back empty they are rebuilt from DuckDB first.

Each event is one packed stream field (ledger.events), which keeps reading, the rollup's
bottleneck, cheap; `hiredis` (a dependency) parses the replies.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import duckdb
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError, ResponseError, WatchError

from ledger.events import EVENT_COLUMNS, RS, US, event_values
from ledger.keyspace import KeySpace
from ledger.pricing import MTOK, US_GEO_MULTIPLIER, PriceTable
from ledger.usage import Usage

log = logging.getLogger("meterd.rollup")

Db = Callable[..., Awaitable[Any]]  # AdminState.db: run a sync function on the DuckDB thread
Fault = Callable[[str], None]

GROUP = "rollup"
CONSUMER = "rollup"  # one name for every lock holder: a new holder inherits what is pending
STEPS = ("inserted", "daily", "committed")  # where a test's fault hook may strike
JOB_ID = "meterd-rollup"
PURGE_JOB_ID = "meterd-purge"

# A request is an error when the provider did not answer 2xx or the exchange broke (an error
# event after a 200, a reset, a client that left before the end).
ERROR_SQL = "(status < 200 OR status >= 300 OR error_type <> '')"

REQUEST_COLUMNS = ("id", "ts", *(n for n, _, _ in EVENT_COLUMNS[2:16]), "cache_saved_micros",
                   *(n for n, _, _ in EVENT_COLUMNS[16:]))
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


def _batch_sql() -> str:
    # f[1] is the stream entry id, for events without a request id or time.
    cols = [_typed(i, n, k, d) for i, (n, k, d) in enumerate(EVENT_COLUMNS, 2)]
    cols[0] = "CASE WHEN coalesce(f[2], '') = '' THEN 'stream:' || f[1] ELSE f[2] END AS id"
    cols[1] = ("epoch_ms(CASE WHEN TRY_CAST(f[3] AS BIGINT) BETWEEN 1 AND 32503680000000 "
               "THEN TRY_CAST(f[3] AS BIGINT) ELSE TRY_CAST(split_part(f[1], '-', 1) AS BIGINT) "
               "END) AS ts")
    # In the column order of `requests`; the saving is priced afterwards.
    cols.insert(REQUEST_COLUMNS.index("cache_saved_micros"), "0::BIGINT AS cache_saved_micros")
    return (
        "CREATE OR REPLACE TEMP TABLE rollup_batch AS "
        f"SELECT * FROM (SELECT {', '.join(cols)} FROM "
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


def _add(conn: duckdb.DuckDBPyConnection, table: str, keys: tuple[str, ...],
         source: str) -> None:
    """Add the sums of `source` grouped by `keys` to `table` (day = the request's UTC start
    date). UPDATE then INSERT of the missing keys: several times faster in DuckDB than
    INSERT ... ON CONFLICT DO UPDATE or MERGE on these tables."""
    select = ", ".join(f"ts::DATE AS {k}" if k == "day" else k for k in keys)
    sums = ", ".join(f"CAST(sum({m}) AS BIGINT) AS {m}" for m in MEASURES[3:])
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE rollup_sums AS SELECT {select}, count(*) AS requests, "
        f"count(*) FILTER (WHERE {ERROR_SQL}) AS errors, count(*) FILTER (WHERE estimated) "
        f"AS estimated, {sums} FROM {source} GROUP BY ALL")
    match = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    conn.execute(f"UPDATE {table} t SET {', '.join(f'{m} = t.{m} + s.{m}' for m in MEASURES)} "
                 f"FROM rollup_sums s WHERE {match}")
    conn.execute(f"INSERT INTO {table} BY NAME SELECT s.* FROM rollup_sums s "
                 f"ANTI JOIN {table} t ON {match}")


def add_to_rollups(conn: duckdb.DuckDBPyConnection, source: str,
                   fault: Fault | None = None) -> None:
    """Add the request rows of `source` (a table or view shaped like `requests`) to the daily
    and per-session rollups. The caller owns the transaction."""
    _add(conn, "usage_daily", ("day", "developer_id", "team_id", "model"), source)
    if fault is not None:
        fault("daily")
    _add(conn, "usage_sessions", ("day", "session_id", "developer_id", "team_id"), source)


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


def _encode(entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> str:
    """The batch as one US/RS-separated string (see _BATCH_SQL), stream entry id first."""
    us = US.encode()
    rows = [entry_id + us + us.join(event_values(fields))
            for entry_id, fields in entries
            if fields]  # an entry deleted while pending: nothing to insert, only to acknowledge
    return RS.encode().join(rows).decode("utf-8", "replace")


def write_batch(conn: duckdb.DuckDBPyConnection, payload: str, savings: Savings,
                fault: Fault | None = None) -> int:
    """Insert one batch of events in one transaction; returns how many requests were new."""
    try:
        return _write_batch(conn, payload, savings, fault, anywhere=False)
    except duckdb.ConstraintException:
        # A repeat outside its own time range (an event that carried no start time, so each
        # copy took its stream entry's): look for repeats in the whole table instead.
        return _write_batch(conn, payload, savings, fault, anywhere=True)


def _write_batch(conn: duckdb.DuckDBPyConnection, payload: str, savings: Savings,
                 fault: Fault | None, anywhere: bool) -> int:
    conn.execute("BEGIN")
    try:
        conn.execute(_BATCH_SQL, [payload])
        lo, hi, repeats = conn.execute(
            "SELECT min(ts), max(ts), count(*) - count(DISTINCT id) FROM rollup_batch"
        ).fetchone() or (0, 0, 0)
        if repeats:  # the same request twice in one batch (a replayed settlement): keep one
            conn.execute("DELETE FROM rollup_batch WHERE rowid NOT IN "
                         "(SELECT min(rowid) FROM rollup_batch GROUP BY id)")
        # Requests already rolled up (a rerun after a crash): same request, same start time,
        # so only that time range is searched and DuckDB skips every other row group.
        conn.execute("DELETE FROM rollup_batch WHERE id IN (SELECT id FROM requests WHERE "
                     + ("true)" if anywhere else "ts BETWEEN ? AND ?)"),
                     [] if anywhere else [lo, hi])
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
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(row[0]) if row else 0


def lock_key(keyspace: KeySpace) -> str:
    """The Redis key of the rollup lock (under the keyspace's hash tag)."""
    return f"{keyspace.base}:rollup:lock"


class Rollup:
    """The rollup job of one admin process. See the module docstring."""

    def __init__(self, redis: Any, keyspace: KeySpace, conn: duckdb.DuckDBPyConnection,
                 db: Db, *, batch: int = 10_000, lock_ttl_ms: int = 30_000,
                 prices: PriceTable | None = None, fault: Fault | None = None,
                 rebuild: bool = True, clock: Callable[[], datetime] | None = None) -> None:
        """`db` runs a sync function on the DuckDB thread (AdminState.db). The lock must
        outlive the gap between runs: keep `lock_ttl_ms` at a few scheduler intervals.
        `prices` (the admin's configured table) prices what caching saved. `fault` is called
        at each of STEPS (tests make it raise). `rebuild=False` leaves the counter rebuild to
        the caller (see ledger.rebuild). `clock` gives "now" (tests pin it)."""
        self.redis, self.keyspace, self.db = redis, keyspace, db
        # Our own connection to the database: our transaction never mixes with catalog writes.
        self.conn = conn.cursor()
        self.batch, self.lock_ttl_ms = batch, lock_ttl_ms
        self.savings = Savings(prices or PriceTable.load())
        self.fault, self.rebuild = fault, rebuild
        self.clock = clock or (lambda: datetime.now(UTC))
        self.lock = lock_key(keyspace)
        self.token = secrets.token_hex(16)
        self.leader = False  # held the lock at the last run
        self.redis_down = False  # the last run could not reach Redis
        self._group_ready = False
        self._running = asyncio.Lock()

    async def run_once(self) -> int:
        """Roll up everything in the stream if we hold (or get) the lock; returns how many
        requests were committed. Raises on Redis or DuckDB errors (the next run retries)."""
        async with self._running:
            self.leader = await self._hold()
            if not self.leader:
                return 0
            await self._ensure_counters()
            if not self._group_ready:
                await self._create_group()
            done = 0
            # Our unacknowledged entries first (a run that died), then new ones. The next
            # batch is read from Redis while DuckDB writes the current one.
            for pending in (True, False):
                entries = await self._read("0" if pending else ">")
                while entries:
                    writing = asyncio.create_task(self._commit(entries))
                    try:
                        more = pending or len(entries) == self.batch
                        after = _text(entries[-1][0]) if pending else ">"
                        following = await self._read(after) if more else []
                    finally:
                        done += await writing
                    entries = following
                    if entries and not await self._hold():
                        # Lost the lock mid-run; what we read stays pending for the
                        # next holder.
                        self.leader = False
                        return done
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
        """Release the lock (if ours) so a standby takes over at once."""
        async with self._running:
            try:
                await self._if_ours(lambda pipe: pipe.delete(self.lock))
            except RedisError as exc:
                log.warning("could not release the rollup lock (it expires): %s", exc)
            self.leader = False

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

    async def _ensure_counters(self) -> None:
        # Imported here: ledger.rebuild imports this module for the event format.
        from ledger.rebuild import ensure_counters

        if self.rebuild:
            await ensure_counters(self.redis, self.keyspace, self.conn, self.db, self.clock())

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keyspace.events, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, cursor: str) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        for _ in range(2):
            try:
                reply = await self.redis.xreadgroup(GROUP, CONSUMER, {self.keyspace.events: cursor},
                                                    count=self.batch)
            except ResponseError as exc:
                # Real Redis says NOGROUP; the embedded backend complains that the key is gone.
                if "NOGROUP" not in str(exc) and "key to exist" not in str(exc):
                    raise
                # Redis lost the stream and its group (restarted empty): the counters are
                # rebuilt before we read anything new, then the group starts over.
                await self._ensure_counters()
                await self._create_group()
                continue
            return list(reply[0][1]) if reply else []
        return []

    async def _commit(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> int:
        payload = _encode(entries)
        new = await self.db(write_batch, self.conn, payload, self.savings,
                            self.fault) if payload else 0
        if self.fault is not None:
            self.fault("committed")
        ids = [entry_id for entry_id, _ in entries if entry_id is not None]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keyspace.events, GROUP, *ids)
            # Exactly these ids: trimming by id range could drop entries of a stream that
            # Redis recreated meanwhile (restart), with ids from a clock that went back.
            pipe.xdel(self.keyspace.events, *ids)
            await pipe.execute()
        return int(new)

    # -- the lock --------------------------------------------------------------------------

    async def _hold(self) -> bool:
        """Take the lock, or renew it if it is ours."""
        if await self.redis.set(self.lock, self.token, nx=True, px=self.lock_ttl_ms):
            return True
        return await self._if_ours(lambda pipe: pipe.pexpire(self.lock, self.lock_ttl_ms))

    async def _if_ours(self, action: Callable[[Any], Any]) -> bool:
        """Apply `action` to the lock only while it holds our token (compare-and-set)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.lock)
                value = await pipe.get(self.lock)
                if value is None or _text(value) != self.token:
                    return False
                pipe.multi()
                action(pipe)
                await pipe.execute()
                return True
            except WatchError:
                return False


def schedule(scheduler: AsyncIOScheduler, rollup: Rollup, interval: float,
             on_tick: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the rollup every `interval` seconds, never two at a time (the caller runs the
    first one at start, before budgets are enforced).

    `on_tick` runs after every run (leader or not) that reached Redis. A Redis outage is
    logged when it starts and when it ends, not on every tick. The scheduler does not run
    jobs at shutdown: after `scheduler.shutdown()`, await `rollup.final_run()`.
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


def purge(conn: duckdb.DuckDBPyConnection, retention_days: int, now: datetime) -> int:
    """Delete raw request rows older than `retention_days` (the rollups keep their sums);
    returns how many were deleted."""
    if retention_days <= 0:
        raise ValueError("retention_days must be at least 1")
    cutoff = now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=retention_days)
    row = conn.execute("DELETE FROM requests WHERE ts < ?", [cutoff]).fetchone()
    return int(row[0]) if row else 0


def schedule_purge(scheduler: AsyncIOScheduler, conn: duckdb.DuckDBPyConnection, db: Db,
                   retention_days: int, every_hours: float = 6) -> None:
    """Apply the retention every few hours (first at once)."""
    async def job() -> None:
        deleted = await db(purge, conn, retention_days, datetime.now(UTC))
        if deleted:
            log.info("retention: deleted %d request rows older than %d days", deleted,
                     retention_days)

    scheduler.add_job(job, "interval", hours=every_hours, id=PURGE_JOB_ID, name="purge",
                      max_instances=1, coalesce=True, replace_existing=True,
                      next_run_time=datetime.now(UTC))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
