"""Memory under many slow streams: N concurrent Claude Code-like requests held open by the upstream.

    python bench/slow_streams.py [--streams 1000] [--duration 60] [--quick]

Starts the same stack as `bench/run.py` (throwaway Redis, mock upstream, `meterd proxy` with a
budget and rate limits), then opens `--streams` streaming requests through meterd (over 2 s)
that all run at once. The
mock answers each with `message_start`, then a `ping` every second for `--duration` seconds
(`x-mock-ping-interval-ms`, `x-mock-duration-ms`), then the rest of the answer, like a long
extended-thinking turn. While they run, it samples the resident memory (RSS) of the meterd
process; at the end it checks that every stream arrived complete and that meterd wrote one
usage event per stream to `{meterd}:events`, each with its full usage (not an estimate).

Prints RSS before, peak during, after; exits 1 if a stream was lost or not metered, or if the
peak passes `--limit-mb` (default 200). `--quick`: 10 s streams.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bodies import HEADERS, large_body, small_body
from run import EVENTS, Stack, stack_or

from ledger.settlement import unpack_entry


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Outcome:
    complete: int = 0  # streams that ended with message_stop
    failed: int = 0
    pings: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # what failed streams saw


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                     body: bytes, outcome: Outcome) -> None:
    try:
        async with session.post(url, data=body, headers=headers) as r:
            tail = b""
            async for chunk in r.content.iter_any():
                outcome.pings += chunk.count(b"event: ping")
                tail = (tail + chunk)[-64:]
            if r.status == 200 and b"message_stop" in tail:
                outcome.complete += 1
            else:
                outcome.failed += 1
                outcome.failures[f"{r.status} {tail[-200:].decode(errors='replace')}"] += 1
    except aiohttp.ClientError as exc:
        outcome.failed += 1
        outcome.failures[repr(exc)] += 1


async def drive(url: str, key: str, streams: int, duration_s: int, pid: int,
                body: bytes, ramp_s: float = 2.0) -> tuple[Outcome, list[float]]:
    headers = {**HEADERS, "x-api-key": key, "x-mock-ping-interval-ms": "1000",
               "x-mock-duration-ms": str(duration_s * 1000)}
    outcome, samples = Outcome(), []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=duration_s + 60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        tasks = []
        for _ in range(streams):
            tasks.append(asyncio.create_task(one_stream(session, url + "/v1/messages", headers,
                                                        body, outcome)))
            # Developers do not all connect in the same millisecond: 1,000 streams open over
            # about 2 s. (Opened all at once, they overflow the mock upstream's listen backlog
            # of 128 and some upstream connections are reset: a flaw of the test rig.)
            await asyncio.sleep(ramp_s / streams)
        while not all(t.done() for t in tasks):
            samples.append(rss_mb(pid)[0])
            await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)
    return outcome, samples


def main(argv: list[str] | None = None, on: Stack | None = None) -> int:
    """The command line; `on`: run on this already started stack instead of a new one (its
    meterd's memory then includes what ran on it before: the tests check metering only)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--duration", type=int, help="seconds each stream lasts (default 60)")
    parser.add_argument("--quick", action="store_true", help="10 s streams")
    parser.add_argument("--limit-mb", type=float, default=200.0)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--body", choices=("large", "small"), default="large",
                        help="request body: Claude Code-like ~60 KB (default) or ~400 B")
    args = parser.parse_args(argv)
    duration = args.duration or (10 if args.quick else 60)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets

    with stack_or(on) as s:
        url = s.url(s.meterd_port)
        before, _ = rss_mb(s.meterd_pid)
        events0 = s.events()
        started = time.monotonic()
        body = large_body() if args.body == "large" else small_body()
        outcome, samples = asyncio.run(drive(url, s.key, args.streams, duration, s.meterd_pid,
                                             body))
        took = time.monotonic() - started
        metered = s.wait_events(events0 + args.streams) - events0
        entries: list[tuple[bytes, dict[bytes, bytes]]] = (
            s.redis().xrevrange(EVENTS, count=metered) if metered else [])  # type: ignore[assignment]
        events = [unpack_entry(fields) for _, fields in entries]
        full = sum(e["status"] == "200" and e["estimated"] == "0" and e["error_type"] == ""
                   and int(e["input_tokens"]) > 0 for e in events)
        errors = Counter(e["error_type"] for e in events if e["error_type"])
        after, high_water = rss_mb(s.meterd_pid)
    peak = max(*samples, high_water)

    print(f"slow streams: {args.streams} concurrent streams through one meterd process, "
          f"{len(body):,} B requests, each answer {duration} s long with a ping every second "
          f"({took:.0f} s in all)")
    print(f"  meterd RSS: {before:.1f} MiB idle, peak {peak:.1f} MiB, {after:.1f} MiB after")
    print(f"  streams complete: {outcome.complete}/{args.streams} "
          f"({outcome.failed} failed), pings relayed: {outcome.pings:,}")
    for failure, count in outcome.failures.most_common(3):
        print(f"    {count} x {failure}")
    print(f"  usage events: {metered} (of {args.streams}), with full usage: {full}"
          + (f"; errors: {dict(errors)}" if errors else ""))
    ok = (outcome.complete == args.streams and metered == args.streams
          and full == args.streams and peak < args.limit_mb)
    print(("PASS" if ok else "FAIL") + f"  RSS < {args.limit_mb:.0f} MiB and every stream "
          "complete and metered")
    if args.json:
        args.json.write_bytes(orjson.dumps({
            "streams": args.streams, "duration": duration, "body_bytes": len(body),
            "rss_idle_mb": before, "rss_peak_mb": peak, "rss_after_mb": after,
            "complete": outcome.complete, "failed": outcome.failed, "pings": outcome.pings,
            "usage_events": metered, "full_usage_events": full}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
