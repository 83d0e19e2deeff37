"""Micro-benchmark of StreamMeter: a typical 200-event response fed in 4 KB chunks.

    PYTHONPATH=. python bench/meter_bench.py [seconds]

Prints events/s (and responses/s) for the meter alone, next to a bare loop that only finds
event boundaries, so the cost of metering itself is visible. Each figure is the best of many
short runs over `seconds` (default 3), so a busy machine disturbs it less.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import orjson

from proxy.meter import StreamMeter

CHUNK = 4096
REPEAT = 50


def sse(event: str, data: dict[str, object]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def typical_stream() -> tuple[bytes, int]:
    events = typical_events()
    return b"".join(events), len(events)


def typical_events() -> list[bytes]:
    """message_start, ping, one text block of 194 deltas, message_delta, message_stop."""
    usage: dict[str, object] = {
        "input_tokens": 3,
        "cache_creation_input_tokens": 1843,
        "cache_read_input_tokens": 48211,
        "cache_creation": {"ephemeral_5m_input_tokens": 1843, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    message: dict[str, object] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events = [
        sse("message_start", {"type": "message_start", "message": message}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    words = "The quick brown fox jumps over the lazy dog; naïve café — 日本語 too. "
    for i in range(194):
        text = words[i % 20 :][:24]
        events.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": text}}))
    events += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"input_tokens": 3, "cache_creation_input_tokens": 1843,
                                        "cache_read_input_tokens": 48211, "output_tokens": 1203}}),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def meter_all(chunks: list[bytes]) -> None:
    for _ in range(REPEAT):
        meter = StreamMeter()
        for c in chunks:
            meter.feed(c)
        meter.finish()


def boundaries_only(chunks: list[bytes]) -> None:
    """Baseline: split the same chunks at blank lines and do nothing else."""
    for _ in range(REPEAT):
        rest = b""
        for c in chunks:
            buf = rest + c if rest else c
            pos = 0
            while (end := buf.find(b"\n\n", pos)) >= 0:
                pos = end + 2
            rest = buf[pos:]


def best_time(fn: Callable[[list[bytes]], None], chunks: list[bytes], seconds: float) -> float:
    """Seconds per response, best of many short runs (the machine may be shared)."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(chunks)
        best = min(best, (time.perf_counter() - t0) / REPEAT)
    return best


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    stream, events = typical_stream()
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    result = StreamMeter()
    for c in chunks:
        result.feed(c)
    print(f"stream: {events} events, {len(stream)} bytes, {len(chunks)} chunks of {CHUNK} B")
    print(f"result: {result.finish()}")
    # An upstream that flushes every event often reaches the proxy one event per read.
    one_per_read = typical_events()
    cases = (
        ("boundaries only, 4 KB chunks", boundaries_only, chunks),
        ("StreamMeter, 4 KB chunks", meter_all, chunks),
        ("StreamMeter, 1 event per chunk", meter_all, one_per_read),
    )
    for label, fn, feed in cases:
        per_response = best_time(fn, feed, seconds)
        print(f"{label:>31}: {events / per_response:>10,.0f} events/s "
              f"{1 / per_response:>8,.0f} responses/s {per_response * 1e6:7.1f} µs/response")


if __name__ == "__main__":
    main()
