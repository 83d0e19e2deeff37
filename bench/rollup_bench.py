"""Rollup throughput: usage events per second from a real Redis stream into DuckDB.

    python bench/rollup_bench.py [--events 500000] [--batch 20000] [--db PATH]

Starts a throwaway `redis-server --port <free> --save ''`, fills the stream with realistic
events (the fields the proxy settles, Claude Code-like token counts and headers), then times
`Rollup.run_once()` draining it into a DuckDB file (a fresh temporary one, or `--db`, e.g. the
10-million-request file of gen_requests.py, to measure against a large `requests` table; the
events get fresh ids so they are all new). Prints events/s for the whole run and the split
between reading Redis and writing DuckDB. Target: at least 50,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from ledger.catalog import connect
from ledger.keyspace import KeySpace
from ledger.rollup import Rollup
from ledger.settlement import Settlement
from meterd.ports import free_port

MODELS = ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-sonnet-4-5")


def start_redis(port: int, directory: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("redis-server did not start")


def event(i: int, run: str, now_ms: int, rng: random.Random) -> dict[str, Any]:
    dev = rng.randrange(500)
    cache_read = rng.choice((0, rng.randrange(10_000, 150_000)))
    return {
        "id": f"mreq_{run}{i:010d}", "ts_ms": now_ms - rng.randrange(3_600_000),
        "developer_id": f"dev_{dev:05d}", "team_id": f"team_{dev % 25:03d}",
        "key_id": f"key_{dev:05d}", "model": rng.choice(MODELS), "provider": "anthropic",
        "status": 200 if rng.random() > 0.02 else 529, "stream": 1,
        "input_tokens": rng.randrange(1, 5000), "output_tokens": rng.randrange(1, 4000),
        "cache_write_5m": rng.randrange(0, 3000), "cache_write_1h": 0,
        "cache_read": cache_read, "web_search": 0, "cost_micros": rng.randrange(100, 200_000),
        "price_row": "claude-sonnet-4-6", "price_version": "p-1a2b3c4d", "priced": 1,
        "latency_ms": rng.randrange(200, 60_000), "ttfb_ms": rng.randrange(100, 3000),
        "estimated": 0, "error_type": "", "service_tier": "standard", "speed": "",
        "inference_geo": "not_available",
        "session_id": f"5c0e6f1a-{dev:04d}-4b2d-9d7e-{rng.randrange(3):012d}",
        "agent_id": "", "parent_agent_id": "", "request_class": "", "prompt_id": "",
    }


async def fill(redis: Any, keyspace: KeySpace, events: int) -> None:
    rng = random.Random(7)
    run = f"{random.randrange(16**6):06x}"
    now_ms = int(time.time() * 1000)
    for start in range(0, events, 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(events, start + 2000)):
                fields = event(i, run, now_ms, rng)
                pipe.xadd(keyspace.events, {"e": Settlement(**fields).packed()})
            await pipe.execute()


def timed(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


async def run(args: argparse.Namespace, url: str, db_path: Path) -> None:
    redis = aioredis.Redis.from_url(url)
    keyspace = KeySpace("bench")
    conn = connect(db_path)
    before = conn.execute("SELECT count(*) FROM requests").fetchone()
    executor = concurrent.futures.ThreadPoolExecutor(1, "duckdb")

    async def db(fn: Callable[..., Any], *a: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, lambda: fn(*a))

    rollup = Rollup(redis, keyspace, conn, db, batch=args.batch)
    await rollup.run_once()  # an empty stream: creates the group, rebuilds (no) counters
    t0 = time.perf_counter()
    await fill(redis, keyspace, args.events)
    print(f"filled the stream with {args.events:,} events in {time.perf_counter() - t0:.1f} s")
    totals: dict[str, float] = {}
    rollup._read = timed(totals, "redis read", rollup._read)  # type: ignore[method-assign]
    rollup.db = timed(totals, "duckdb write", db)
    # Reads overlap writes, so the two shares can add up to more than 100%.
    await redis.config_resetstat()
    t0 = time.perf_counter()
    done = await rollup.run_once()
    elapsed = time.perf_counter() - t0
    after = conn.execute("SELECT count(*) FROM requests").fetchone()
    stats = (await redis.info("commandstats")).get("cmdstat_xreadgroup", {})
    await rollup.close()
    await redis.aclose()
    executor.shutdown()
    assert before and after and after[0] - before[0] == done == args.events, (done, before, after)
    print(f"rows in requests before: {before[0]:,}, after: {after[0]:,}")
    print(f"rolled up {done:,} events in {elapsed:.2f} s: {done / elapsed:,.0f} events/s "
          f"(batch {args.batch:,})")
    for name, seconds in totals.items():
        print(f"  {name:<13} {seconds:6.2f} s  ({seconds / elapsed:4.0%})")
    print(f"  redis parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python (no hiredis)'}; "
          f"redis-server busy {stats.get('usec_per_call', 0) / 1000:.1f} ms per XREADGROUP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--db", type=Path, help="DuckDB file to roll up into (default: fresh)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="meterd-rollup-bench-")
    port = free_port()
    proc = start_redis(port, tmp)
    try:
        asyncio.run(run(args, f"redis://127.0.0.1:{port}/0", args.db or Path(tmp) / "b.duckdb"))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
