"""Streaming latency: how long an SSE event spends inside meterd on its way to the client.

    python bench/stream_latency.py [--streams 10] [--events 100] [--gap-ms 10] [--quick]

Two measurements, each direct to the upstream and through `meterd proxy` (full metering on a
throwaway Redis, as in `bench/run.py`), with the same streams:

1. Stamped upstream (started here, `--serve-stamped`): every event it writes carries the
   moment it was written (CLOCK_MONOTONIC, shared by all processes on the machine), so the
   client knows each event's one-way delay upstream -> client. Through meterd minus direct is
   what meterd adds per event.
2. The mock upstream (`meterd mock-upstream`, `x-mock-event-delay-ms`): time to first byte and
   the gaps between events as the client sees them, direct and through meterd; buffering in the
   proxy would merge events (gaps near 0 and 2x the pacing) instead of keeping the pacing.

Target: each event leaves meterd within 1 ms of arriving from the upstream (p99 of the added
per-event delay). `--quick`: fewer, shorter streams.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bodies import HEADERS, small_body
from run import MOCK_KEY, Stack, free_port, stack_or

_STAMP = re.compile(rb"t=(\d+) ")
_DELTA = b"event: content_block_delta"


# -- the stamped upstream ---------------------------------------------------------------------

def _sse(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_USAGE = {"input_tokens": 1200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


async def _stamped(request: web.Request) -> web.StreamResponse:
    """A Messages API stream whose text deltas say when they were written."""
    await request.read()
    events = int(request.headers.get("x-stamp-events", "100"))
    gap = int(request.headers.get("x-stamp-gap-ms", "10")) / 1000
    response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    message: dict[str, object] = {"id": "msg_stamped", "type": "message", "role": "assistant",
               "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
               "stop_sequence": None, "usage": {**_USAGE, "output_tokens": 1}}
    await response.write(_sse("message_start", {"type": "message_start", "message": message}))
    await response.write(_sse("content_block_start", {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
    for _ in range(events):
        await asyncio.sleep(gap)
        text = f"t={time.monotonic_ns()} "
        await response.write(_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}))
    await response.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    await response.write(_sse("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {**_USAGE, "output_tokens": events * 8}}))
    await response.write(_sse("message_stop", {"type": "message_stop"}))
    await response.write_eof()
    return response


def serve_stamped(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/messages", _stamped)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(),
                access_log=None, print=None)


# -- the client -------------------------------------------------------------------------------

@dataclass
class Samples:
    ttfb_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)  # per event, upstream write -> client
    gap_ms: list[float] = field(default_factory=list)  # between consecutive deltas at the client
    deltas: int = 0
    failed: int = 0


async def _stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                  body: bytes, out: Samples, start_after: float = 0) -> None:
    await asyncio.sleep(start_after)
    sent = time.monotonic_ns()
    last_delta = None
    try:
        async with session.post(url + "/v1/messages", data=body, headers=headers) as r:
            first = True
            async for chunk in r.content.iter_any():
                now = time.monotonic_ns()
                if first:
                    out.ttfb_ms.append((now - sent) / 1e6)
                    first = False
                for stamp in _STAMP.findall(chunk):
                    out.delay_ms.append((now - int(stamp)) / 1e6)
                n = chunk.count(_DELTA)
                if n:
                    if last_delta is not None:
                        out.gap_ms.append((now - last_delta) / 1e6)
                    out.gap_ms.extend([0.0] * (n - 1))  # events that came merged
                    last_delta = now
                    out.deltas += n
            if r.status != 200:
                out.failed += 1
    except aiohttp.ClientError:
        out.failed += 1


async def measure(url: str, headers: dict[str, str], streams: int, rounds: int,
                  gap_ms: int) -> Samples:
    """`rounds` times, `streams` streams that start spread over one event gap (clients do not
    start in lockstep), all running at once."""
    out = Samples()
    body = small_body()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await _stream(session, url, headers, body, Samples())  # warm the connections
        for _ in range(rounds):
            await asyncio.gather(*(_stream(session, url, headers, body, out,
                                           i * gap_ms / streams / 1000)
                                   for i in range(streams)))
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None, on: Stack | None = None) -> int:
    """The command line; `on`: run on this already started stack instead of a new one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams")
    parser.add_argument("--events", type=int, default=100, help="text deltas per stream")
    parser.add_argument("--gap-ms", type=int, default=10, help="upstream pacing between events")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 30 events")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--serve-stamped", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stamped:
        serve_stamped(args.serve_stamped)
        return 0
    if args.quick:
        args.rounds, args.events = 2, 30

    with stack_or(on) as s:
        stamped_port = free_port()
        s.spawn([sys.executable, __file__, "--serve-stamped", str(stamped_port)],
                "stamped-upstream", stamped_port)
        via_port = free_port()
        s.start_meterd(via_port, upstream=s.url(stamped_port), name="meterd-stamped")
        bare_port = free_port()  # the floor for the stamped upstream: any proxy adds a hop
        s.spawn([sys.executable, str(Path(__file__).parent / "bare_proxy.py"), "--port",
                 str(bare_port), "--upstream", s.url(stamped_port)], "bare-stamped", bare_port)
        events0 = s.events()
        stamp_headers = {**HEADERS, "x-stamp-events": str(args.events),
                         "x-stamp-gap-ms": str(args.gap_ms)}
        mock_headers = {**HEADERS, "x-mock-text-chunks": str(args.events),
                        "x-mock-event-delay-ms": str(args.gap_ms)}
        results = {}
        for name, url, key, headers in (
            ("stamped direct", s.url(stamped_port), MOCK_KEY, stamp_headers),
            ("stamped bare", s.url(bare_port), MOCK_KEY, stamp_headers),
            ("stamped meterd", s.url(via_port), s.key, stamp_headers),
            ("mock direct", s.url(s.mock_port), MOCK_KEY, mock_headers),
            ("mock bare", s.url(s.bare_port), MOCK_KEY, mock_headers),
            ("mock meterd", s.url(s.meterd_port), s.key, mock_headers),
        ):
            results[name] = asyncio.run(measure(url, {**headers, "x-api-key": key},
                                                args.streams, args.rounds, args.gap_ms))
        expected = 2 * (args.rounds * args.streams + 1)
        metered = s.wait_events(events0 + expected) - events0

    per_stream = args.rounds * args.streams
    print(f"streaming latency: {per_stream} streams per path ({args.streams} at a time), "
          f"{args.events} text deltas each, one every {args.gap_ms} ms")
    print(f"{'':34}{'direct':>9}{'bare':>9}{'meterd':>9}{'added':>9}{'vs bare':>9}")

    def row(label: str, path: str, what: str, p: float) -> float:
        d, b, m = (pct(getattr(results[f"{path} {via}"], what), p)
                   for via in ("direct", "bare", "meterd"))
        print(f"{label:34}{d:>9.3f}{b:>9.3f}{m:>9.3f}{m - d:>+9.3f}{m - b:>+9.3f}")
        return m - d

    print("stamped upstream (ms; added = meterd - direct)")
    row("  per-event delay p50", "stamped", "delay_ms", 50)
    row("  per-event delay p90", "stamped", "delay_ms", 90)
    added_p99 = row("  per-event delay p99", "stamped", "delay_ms", 99)
    row("  per-event delay max", "stamped", "delay_ms", 100)
    row("  time to first byte p50", "stamped", "ttfb_ms", 50)
    row("  time to first byte p99", "stamped", "ttfb_ms", 99)
    print(f"mock upstream (ms; events paced {args.gap_ms} ms apart)")
    row("  time to first byte p50", "mock", "ttfb_ms", 50)
    row("  time to first byte p99", "mock", "ttfb_ms", 99)
    row("  inter-event gap p1", "mock", "gap_ms", 1)
    row("  inter-event gap p50", "mock", "gap_ms", 50)
    row("  inter-event gap p99", "mock", "gap_ms", 99)
    sd, mm = results["stamped direct"], results["mock meterd"]
    merged = {n: sum(1 for g in r.gap_ms if g < args.gap_ms / 4) for n, r in results.items()
              if n.startswith("mock")}
    print(f"  events merged with the previous one (gap < {args.gap_ms / 4:g} ms): "
          f"direct {merged['mock direct']}, bare {merged['mock bare']}, meterd "
          f"{merged['mock meterd']} of {mm.deltas} each way")
    failed = sum(r.failed for r in results.values())
    complete = all(r.deltas == per_stream * args.events for r in results.values())
    print(f"streams failed: {failed}; every event arrived: {complete}; usage events for the "
          f"metered streams: {metered} of {expected}")
    ok = added_p99 <= 1.0 and failed == 0 and complete and metered == expected
    print(("PASS" if ok else "FAIL") + f"  meterd adds {added_p99:.3f} ms at p99 per event "
          "(target <= 1 ms), every stream complete and metered")
    print(f"(stamped median delay direct {statistics.median(sd.delay_ms):.3f} ms: the client's "
          "own read latency, the same on both paths)")
    if args.json:
        args.json.write_bytes(orjson.dumps({
            "streams": per_stream, "events": args.events, "gap_ms": args.gap_ms,
            "added_p99_ms": added_p99, "failed": failed, "complete": complete,
            "usage_events": metered, "expected_usage_events": expected,
            "paths": {name: {"deltas": r.deltas, "failed": r.failed,
                             **{f"{what}_p{p}": pct(getattr(r, what), p)
                                for what in ("ttfb_ms", "delay_ms", "gap_ms")
                                for p in (50, 99)}}
                      for name, r in results.items()}}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
