"""Redis came back as an older copy of itself: its counters lack what the ledger has since.

A restart from an older snapshot, or a failover to a replica that lagged, brings back a Redis
that still has its epoch marker and its `ready` marker, but whose counters stopped at the copy's
time. The journals replay what the ledger may not have (ledger.journal); what the ledger rolled
up after the copy was taken and the journals have since trimmed is in DuckDB only, and the
counters would read low by it until the period ends.

The rollup records in DuckDB the highest `rolled_until` it published after a run that
committed (the watermark); Redis's own `rolled_until` only grows, so a Redis whose value is
lower is behind the ledger. Such a Redis is turned into the case the rebuild already handles
exactly (ledger.rebuild, Redis came back empty), in one atomic step (rewind.lua): the spend and
token fields of the current periods' counters are zeroed, the stream's last entry noted (the
counters now hold exactly the events after it: `counted_after`), the `ready` marker dropped
(admission waits for the rebuild, as after an empty restart), and a new epoch set, so that every
proxy replays its journal, and the rollup takes back the replays of lines sent under an older
epoch that DuckDB already had. The rebuild then adds DuckDB's sums and the stream's events up to
that entry that DuckDB lacks.

A false alarm (an admin that died between recording the watermark and publishing it) costs a
rebuild and a replay, not a miscount.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from importlib import resources
from typing import Any

import duckdb

from ledger.keyspace import KeySpace
from ledger.periods import PERIODS, period_tag
from ledger.settlement import SPENT, TOKEN_COUNTERS

log = logging.getLogger("meterd.rewind")
_SCRIPT = resources.files("ledger").joinpath("rewind.lua").read_text()


def watermark(conn: duckdb.DuckDBPyConnection) -> int:
    """The highest `rolled_until` published after a committed run (0 before the first)."""
    row = conn.execute("SELECT max(rolled_until) FROM rollup_watermark").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def record(conn: duckdb.DuckDBPyConnection, rolled_until: int) -> None:
    conn.execute("INSERT OR REPLACE INTO rollup_watermark VALUES (1, ?)", [rolled_until])


async def rewind_if_behind(redis: Any, keyspace: KeySpace, mark: int, now: datetime) -> bool:
    """Zero the counters and start a new epoch if Redis's `rolled_until` is below the
    ledger's watermark `mark`; True if it did."""
    tags = [period_tag(period, now) for period in PERIODS]
    after = await redis.eval(
        _SCRIPT, 5, keyspace.ready, keyspace.epoch, keyspace.events, keyspace.rolled_until,
        keyspace.counted_after, mark, secrets.token_hex(8), f"{keyspace.base}:spend:",
        len(tags), *tags, SPENT, *TOKEN_COUNTERS)
    if after is None:
        return False
    log.warning("redis is behind the ledger (an older copy of it answers): its spend counters "
                "are rebuilt from DuckDB and the proxies replay their journals")
    return True
