"""Claude Code's telemetry rows from the Redis stream into DuckDB (`telemetry`, telemetry.sql).

The proxy (proxy.telemetry) queues one stream entry per OTLP export: the developer, the team
and the export's records as compact rows. The rollup holder moves them here in batches:

1. XRANGE a batch from the start of the stream;
2. in ONE DuckDB transaction insert its rows, skipping entries already present (the stream
   entry id and the row's place in it are the key);
3. commit, then XDEL exactly those entries.

A crash before the commit rolls back and the entries stay for the next run; a crash between
the commit and the XDEL leaves entries whose rows are in DuckDB, and the next run skips them.
Nothing is lost and nothing is stored twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import orjson
from redis.exceptions import RedisError

from ledger.keyspace import KeySpace

log = logging.getLogger("meterd.telemetry")

Db = Callable[..., Awaitable[Any]]  # AdminState.db
Fault = Callable[[str], None]  # tests make it raise at "inserted" or "committed"

# In the order of the proxy's rows (proxy.telemetry._row), after the stream id, the row's
# place in its entry, the time the proxy took it, the developer and the team.
_COLUMNS = (("stream_id", "VARCHAR"), ("seq", "INTEGER"), ("received", "BIGINT"),
            ("developer_id", "VARCHAR"), ("team_id", "VARCHAR"), ("ts", "BIGINT"),
            ("signal", "VARCHAR"), ("name", "VARCHAR"), ("value", "DOUBLE"),
            ("cumulative", "BOOLEAN"), ("session_id", "VARCHAR"), ("request_id", "VARCHAR"),
            ("cost_micros", "BIGINT"), ("attrs", "VARCHAR"))
_SELECT = ", ".join(f"unnest(${i}::{kind}[]) AS {name}"
                    for i, (name, kind) in enumerate(_COLUMNS, 1))


def stream_key(keyspace: KeySpace) -> str:
    """The Redis stream the proxy queues telemetry on."""
    return f"{keyspace.base}:telemetry"


def _flatten(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[list[Any]]:
    """Column lists of every row of `entries` (see _COLUMNS)."""
    columns: list[list[Any]] = [[] for _ in _COLUMNS]
    for entry_id, fields in entries:
        sid = entry_id.decode()
        received = int(sid.split("-", 1)[0])
        dev, team = fields[b"dev"].decode(), fields[b"team"].decode()
        for seq, (ts, signal, name, value, cumulative, session, request, cost, attrs) in \
                enumerate(orjson.loads(fields[b"rows"])):
            ts = ts if 0 < ts < 32503680000000 else received  # none, or nonsense: when taken
            for col, v in zip(columns, (sid, seq, received, dev, team, ts, signal, name, value,
                                        cumulative, session, request, cost,
                                        orjson.dumps(attrs).decode()), strict=True):
                col.append(v)
    return columns


def write_batch(conn: duckdb.DuckDBPyConnection, columns: list[list[Any]],
                fault: Fault | None = None) -> int:
    """Insert the rows not stored yet, in one transaction; returns how many were new."""
    conn.execute("BEGIN")
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE telemetry_batch AS SELECT {_SELECT}",
                     columns)
        # A rerun after a crash: the same entries, received at the same times.
        conn.execute(
            "DELETE FROM telemetry_batch b WHERE EXISTS (SELECT 1 FROM telemetry t WHERE "
            "t.received >= (SELECT epoch_ms(min(received)) FROM telemetry_batch) "
            "AND t.stream_id = b.stream_id AND t.seq = b.seq)")
        row = conn.execute(
            "INSERT INTO telemetry SELECT stream_id, seq, epoch_ms(received), epoch_ms(ts), "
            "developer_id, team_id, signal, name, value, coalesce(cumulative, false), "
            "coalesce(session_id, ''), coalesce(request_id, ''), cost_micros, attrs::JSON "
            "FROM telemetry_batch").fetchone()
        if fault is not None:
            fault("inserted")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(row[0]) if row else 0


class TelemetryRollup:
    """Moves the telemetry stream into DuckDB; run by the rollup lock's holder only."""

    def __init__(self, redis: Any, keyspace: KeySpace, conn: duckdb.DuckDBPyConnection,
                 db: Db, batch: int = 5_000, fault: Fault | None = None) -> None:
        self.redis, self.stream, self.db = redis, stream_key(keyspace), db
        self.conn = conn.cursor()  # our own transaction, apart from catalog writes
        self.batch, self.fault = batch, fault

    async def run_once(self) -> int:
        """Move everything queued; returns how many rows were new. Raises on Redis or
        DuckDB errors (what is not deleted from the stream is moved by the next run)."""
        done = 0
        while entries := await self.redis.xrange(self.stream, count=self.batch):
            done += await self.db(write_batch, self.conn, _flatten(entries), self.fault)
            if self.fault is not None:
                self.fault("committed")
            await self.redis.xdel(self.stream, *(entry_id for entry_id, _ in entries))
            if len(entries) < self.batch:
                break
        return done

    async def tick(self) -> None:
        """A scheduled run: failures are logged, the next run retries."""
        try:
            moved = await self.run_once()
        except (RedisError, duckdb.Error) as exc:
            log.warning("telemetry rollup failed (the next run retries): %s", exc)
        else:
            if moved:
                log.debug("telemetry: %d rows stored", moved)


def purge(conn: duckdb.DuckDBPyConnection, retention_days: int, now: datetime) -> int:
    """Delete telemetry rows received more than `retention_days` ago; returns how many."""
    if retention_days <= 0:
        raise ValueError("telemetry_retention_days must be at least 1")
    cutoff = now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=retention_days)
    row = conn.execute("DELETE FROM telemetry WHERE received < ?", [cutoff]).fetchone()
    return int(row[0]) if row else 0
