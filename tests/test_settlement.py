"""The settlement record (ledger/settlement.py): the one shape of a request's usage and cost
from the proxy to the `requests` table, the same bytes on the wire as before it existed."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.catalog import connect
from ledger.gate import Gate, Hold, Ticket
from ledger.keyspace import KeySpace
from ledger.policy import Cap, Limits, Principal
from ledger.pricing import Cost
from ledger.settlement import (
    FIELDS,
    REQUEST_COLUMNS,
    SQL_COLUMNS,
    TOKEN_COUNTERS,
    US,
    Settlement,
    entry_values,
    unpack_entry,
)
from ledger.spool import Spool
from ledger.usage import Usage

AT = datetime(2026, 11, 28, 12, 0, 5, 250000, tzinfo=UTC)
# A spool line written by meterd e2ca541 (before ledger/settlement.py) for REQUEST below,
# and the event line it carries.
OLD_SPOOL = Path(__file__).parent / "data" / "spool_e2ca541.jsonl"
OLD_LINE = ("mreq_0001\x1f1795867205250\x1fd1\x1ft1\x1fk1\x1fclaude-sonnet-4-6\x1fanthropic"
            "\x1f200\x1f1\x1f120\x1f48\x1f300\x1f5\x1f2000\x1f1\x1f12345\x1fclaude-sonnet-4-6"
            "\x1fabc123\x1f1\x1f1500\x1f400\x1f0\x1f\x1fstandard\x1f\x1fus\x1fcaf\u00e9 sess"
            "\x1f\x1f\x1fmain\x1fp1")
PRINCIPAL = Principal("k1", "d1", "Ada", "t1", "platform",
                      (Cap("b1", "developer", "d1", "Ada", "monthly", 10_000, "estimate"),),
                      (Limits("developer", "d1", "Ada", rpm=10),))
USAGE = Usage(input_tokens=120, output_tokens=48, cache_write_5m=300, cache_write_1h=5,
              cache_read=2000, web_search=1, service_tier="standard", inference_geo="us")
COST = Cost(12345, row="claude-sonnet-4-6", known=True, version="abc123")
DETAILS: dict[str, Any] = {
    "model": "claude-sonnet-4-6", "provider": "anthropic", "status": 200, "stream": True,
    "latency_ms": 1500, "ttfb_ms": 400, "session_id": "caf\u00e9\x1fsess",
    "request_class": "main", "prompt_id": "p1"}


def ticket(gate: Gate) -> Ticket:
    """The ticket admission gave the captured request: a monthly hold, a rate window."""
    counters = gate.counters(PRINCIPAL, AT)
    window = gate.keyspace.window("developer", "d1", int(AT.timestamp()) // 60)
    return Ticket("mreq_0001", PRINCIPAL, AT, holds=[Hold(7, gate.keyspace.holds(counters[6]),
                                                           1000, 10_000)],
                  windows=[(window, 100, 50)])


@pytest.fixture
async def gate(redis: Any, tmp_path: Path) -> Any:
    ks = KeySpace("test")
    await redis.set(ks.ready, 1)
    spool = Spool(tmp_path / "spool")
    yield Gate(redis, ks, spool)
    spool.close()


def test_the_fields_are_the_columns_of_the_requests_table() -> None:
    """Names, order and types, read from DuckDB: `ts` holds `ts_ms`, and the cache saving is
    priced by the rollup."""
    conn = connect(":memory:")
    columns = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_name = 'requests' ORDER BY ordinal_position").fetchall()
    assert tuple(name for name, _ in columns) == REQUEST_COLUMNS
    types = dict(columns)
    assert types.pop("ts") == "TIMESTAMP" and types.pop("cache_saved_micros") == "BIGINT"
    assert types == {name: kind for name, kind, _ in SQL_COLUMNS if name != "ts_ms"}
    assert [name for name, _, _ in SQL_COLUMNS] == list(FIELDS)


def test_a_misspelt_or_unknown_field_is_an_error() -> None:
    t = Ticket("r1", PRINCIPAL, AT)
    with pytest.raises(TypeError, match="sesion_id"):
        Settlement.of(t, USAGE, COST, sesion_id="s1")
    with pytest.raises(TypeError, match="cost"):
        Settlement(cost=5)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        Settlement.of(t, USAGE, COST).model = "other"  # type: ignore[misc]


def test_the_packed_line_is_the_one_meterd_wrote_before(gate: Gate) -> None:
    """Fields are only ever added at the end: a settlement without the newer ones (here
    `project`, `upstream_request_id`, `refusal`) packs as the old line plus their separators."""
    settlement = Settlement.of(ticket(gate), USAGE, COST, **DETAILS)
    assert settlement.packed().encode() == (OLD_LINE + US + US + US).encode()
    assert [v.decode() for v in entry_values({b"e": OLD_LINE.encode()})] == [
        str(v) for v in settlement]


def test_the_settlement_script_gets_the_arguments_it_got_before(gate: Gate) -> None:
    """Same keys, same arguments: what a spooled settlement holds did not change (but for
    the event line's new empty `project`, `upstream_request_id`, `refusal` at its end)."""
    settlement = Settlement.of(ticket(gate), USAGE, COST, **DETAILS)
    old = orjson.loads(OLD_SPOOL.read_bytes())
    assert old["args"][-1] == OLD_LINE
    old["args"][-1] += US + US + US
    assert gate._settlement(ticket(gate), settlement) == old


def test_a_line_with_fewer_fields_reads_with_their_defaults() -> None:
    """A stream entry of a meterd that had fewer fields: the missing ones are empty, which the
    rollup reads as the field's default."""
    values = unpack_entry({b"e": b"r1\x1f1795867205250\x1fd1"})
    assert values["id"] == "r1" and values["developer_id"] == "d1"
    assert values["prompt_id"] == values["ttfb_ms"] == values["upstream_request_id"] == ""
    assert list(values) == list(FIELDS)


async def test_an_old_spool_line_replays(gate: Gate, tmp_path: Path) -> None:
    """A settlement spooled by meterd e2ca541 (a process that died) lands once, with its
    counters, reservation release, rate-window correction and event line."""
    shutil.copy(OLD_SPOOL, gate.spool.directory / "oldhost-1234.jsonl")
    redis, ks = gate.redis, gate.keyspace
    counters = gate.counters(PRINCIPAL, AT)
    await redis.hset(counters[6], "held", 1000)  # what admission had reserved
    await redis.zadd(ks.holds(counters[6]), {"mreq_0001:1000": AT.timestamp() * 1000 + 60_000})
    assert await gate.replay_spool() == 1
    daily = {k.decode(): int(v) for k, v in (await redis.hgetall(counters[0])).items()}
    assert daily == {"spent": 12345, **{f: getattr(USAGE, col) for f, col in
                                        TOKEN_COUNTERS.items() if f != "est"}}
    monthly = {k.decode(): int(v) for k, v in (await redis.hgetall(counters[6])).items()}
    assert monthly["spent"] == 12345 and monthly["held"] == 0
    window = await redis.hgetall(ks.window("developer", "d1", int(AT.timestamp()) // 60))
    assert {k.decode(): int(v) for k, v in window.items()} == {"i": 325, "o": -2}
    ((_, fields),) = await redis.xrange(ks.events)
    assert fields == {b"e": OLD_LINE.encode()}
    assert await gate.replay_spool() == 0  # the file is gone once replayed
    await gate.apply(orjson.loads(OLD_SPOOL.read_bytes()))
    assert await redis.xlen(ks.events) == 1  # and a second copy is not counted again


async def test_counters_take_the_names_settlement_gives_them(gate: Gate) -> None:
    """settle.lua writes the counter fields ledger.settlement names (the rebuild reads them)."""
    t = Ticket("r1", PRINCIPAL, AT)
    settlement = Settlement.of(t, USAGE, COST, estimated=True)
    await gate.settle(t, settlement)
    daily = await gate.redis.hgetall(gate.counters(PRINCIPAL, AT)[0])
    assert {k.decode(): int(v) for k, v in daily.items()} == {
        "spent": 12345, **{f: getattr(settlement, col) for f, col in TOKEN_COUNTERS.items()}}
