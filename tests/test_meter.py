"""Usage extraction: SSE streams across arbitrary chunk splits, and non-streamed bodies."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.usage import Usage
from proxy.meter import MAX_EVENT_BYTES, Metered, StreamMeter, meter_body

MODEL = "claude-sonnet-4-5-20250929"
PING = b'event: ping\ndata: {"type": "ping"}\n\n'  # the API writes this one with spaces


# --- Anthropic SSE bytes, as the API writes them (compact JSON, API key order) ---------------


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_start(usage: dict[str, Any], model: str = MODEL) -> bytes:
    return sse("message_start", {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": usage,
    }})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse("content_block_start",
               {"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, text: str, kind: str = "text_delta") -> bytes:
    field = {"text_delta": "text", "input_json_delta": "partial_json",
             "thinking_delta": "thinking", "signature_delta": "signature"}[kind]
    return sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                       "delta": {"type": kind, field: text}})


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(usage: dict[str, Any], stop_reason: str = "end_turn") -> bytes:
    return sse("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                 "usage": usage})


MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def start_usage(**overrides: Any) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1, "service_tier": "standard", "inference_geo": "not_available",
    }
    usage.update(overrides)
    return usage


def text_stream(texts: list[str], start: dict[str, Any], final: dict[str, Any] | None) -> bytes:
    """A whole text answer; without `final`, the stream stops before message_delta."""
    parts = [message_start(start), block_start(0, {"type": "text", "text": ""}), PING]
    parts += [delta(0, text) for text in texts]
    parts.append(block_stop(0))
    if final is not None:
        parts += [message_delta(final), MESSAGE_STOP]
    return b"".join(parts)


def meter(*chunks: bytes) -> Metered:
    m = StreamMeter()
    for chunk in chunks:
        m.feed(chunk)
    return m.finish()


def bytewise(stream: bytes) -> Metered:
    return meter(*(stream[i : i + 1] for i in range(len(stream))))


def per_event(stream: bytes) -> list[bytes]:
    """One event per chunk, as read from an upstream that flushes every event."""
    return [event + b"\n\n" for event in stream.split(b"\n\n")]


def assert_split_invariant(stream: bytes) -> Metered:
    """The result of feeding stream whole, checked against other ways of chunking it."""
    whole = meter(stream)
    assert bytewise(stream) == whole
    assert meter(*(stream[i : i + 7] for i in range(0, len(stream), 7))) == whole
    if stream.endswith(b"\n\n"):
        assert meter(*per_event(stream[:-2])) == whole
    return whole


# --- Complete streams ------------------------------------------------------------------------


def test_final_usage_is_message_start_overridden_by_message_delta() -> None:
    stream = text_stream(["Hello", "!"], start_usage(input_tokens=25),
                         {"output_tokens": 15})
    result = assert_split_invariant(stream)
    assert result == Metered(
        Usage(input_tokens=25, output_tokens=15, service_tier="standard",
              inference_geo="not_available"),
        estimated=False, error_type="", model=MODEL,
    )


def test_cache_writes_are_split_by_ttl_and_reads_kept() -> None:
    start = start_usage(
        input_tokens=3, cache_creation_input_tokens=4000, cache_read_input_tokens=51234,
        cache_creation={"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2500},
    )
    final = {"input_tokens": 3, "cache_creation_input_tokens": 4000,
             "cache_read_input_tokens": 51234, "output_tokens": 310}
    usage = assert_split_invariant(text_stream(["ok"], start, final)).usage
    # 500 of the 4000 written are not in the split: priced as the 5-minute default.
    assert (usage.cache_write_5m, usage.cache_write_1h, usage.cache_read) == (1500, 2500, 51234)
    assert (usage.input_tokens, usage.output_tokens) == (3, 310)


def test_web_search_requests_come_from_the_final_server_tool_use() -> None:
    tool_id = "srvtoolu_014hJH82Qum7Td6UV8gDXThB"
    stream = b"".join([
        message_start(start_usage(input_tokens=2679, output_tokens=3)),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, "I'll search for the weather."),
        block_stop(0),
        block_start(1, {"type": "server_tool_use", "id": tool_id, "name": "web_search",
                        "input": {}}),
        delta(1, "", "input_json_delta"),
        delta(1, '{"query": "weather NYC today"}', "input_json_delta"),
        block_stop(1),
        block_start(2, {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": [
            {"type": "web_search_result", "title": "NYC weather", "url": "https://w.example/",
             "encrypted_content": "Ev0DCioIAxgCIiQ3" * 200, "page_age": "July 1, 2026"},
        ]}),
        block_stop(2),
        block_start(3, {"type": "text", "text": ""}),
        delta(3, "Sunny, 24 °C."),
        block_stop(3),
        message_delta({"input_tokens": 10682, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0, "output_tokens": 510,
                       "server_tool_use": {"web_search_requests": 1}}),
        MESSAGE_STOP,
    ])
    usage = assert_split_invariant(stream).usage
    assert (usage.input_tokens, usage.output_tokens, usage.web_search) == (10682, 510, 1)


def test_speed_geography_and_tier_from_message_start_survive_the_final_delta() -> None:
    start = start_usage(service_tier="priority", speed="fast", inference_geo="us")
    result = assert_split_invariant(text_stream(["fast"], start, {"output_tokens": 7}))
    assert (result.usage.speed, result.usage.inference_geo, result.usage.service_tier) == (
        "fast", "us", "priority")
    assert result.usage.output_tokens == 7


def test_pings_comments_and_unknown_events_are_ignored() -> None:
    noisy = b"".join([
        b": keep-alive comment\n\n",
        message_start(start_usage(input_tokens=40)),
        PING, PING,
        b"event: brand_new_event\ndata: {\"type\":\"brand_new_event\",\"usage\":{\"x\":1}}\n\n",
        b": another comment\nevent: ping\ndata: {\"type\": \"ping\"}\n\n",
        b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":999}}\n\n",  # unnamed
        b"id: 7\nretry: 1000\n\n",
        block_start(0, {"type": "text", "text": ""}),
        delta(0, "hi"),
        block_stop(0),
        message_delta({"output_tokens": 5}),
        MESSAGE_STOP,
    ])
    result = assert_split_invariant(noisy)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (40, 5)
    assert (result.estimated, result.error_type) == (False, "")


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_endings(newline: bytes) -> None:
    lf = text_stream(["Hello", " wörld"], start_usage(input_tokens=9), {"output_tokens": 4})
    other = lf.replace(b"\n", newline)
    assert assert_split_invariant(other) == meter(lf)
    cut = lf[: lf.index(b"event: message_delta")]  # estimated path too
    assert assert_split_invariant(cut.replace(b"\n", newline)) == meter(cut)


def test_data_field_without_space_multiline_data_and_data_before_event() -> None:
    body = {"type": "message_start", "message": {"model": MODEL, "usage": {"input_tokens": 8}}}
    multiline = b"".join(b"data:" + line + b"\n"
                         for line in json.dumps(body, indent=2).encode().split(b"\n"))
    stream = b"".join([
        b"event:message_start\n" + multiline + b"\n",
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"abcdefghij"}}\nevent: content_block_delta\n\n',
    ])
    result = assert_split_invariant(stream)
    assert (result.usage.input_tokens, result.usage.output_tokens, result.model) == (8, 3, MODEL)
    assert result.estimated


def test_field_values_lose_one_leading_space_only() -> None:
    start_data = message_start(start_usage())[len(b"event: message_start\n") :]
    error_data = b"data: " + orjson.dumps({"error": {"type": "api_error"}}) + b"\n\n"
    stream = b"".join([
        b"event:  message_start\n" + start_data,
        b": the general parser\nevent:  message_start\n" + start_data,
        b"event: error \n" + error_data,
        b": the general parser\nevent: error \n" + error_data,
    ])
    assert assert_split_invariant(stream) == Metered(Usage(), True, "stream_incomplete", "")


def test_leading_byte_order_mark_is_skipped() -> None:
    stream = text_stream(["x"], start_usage(input_tokens=6), {"output_tokens": 2})
    assert assert_split_invariant(b"\xef\xbb\xbf" + stream) == meter(stream)


# --- Errors and cut streams ------------------------------------------------------------------


def test_error_event_after_200_keeps_input_and_estimates_relayed_output() -> None:
    stream = b"".join([
        message_start(start_usage(input_tokens=1200, cache_read_input_tokens=30000)),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, "x" * 40),
        sse("error", {"type": "error", "error": {"details": None, "type": "overloaded_error",
                                                 "message": "Overloaded"},
                      "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
    ])
    result = assert_split_invariant(stream)
    assert result.error_type == "overloaded_error"
    assert result.estimated
    assert (result.usage.input_tokens, result.usage.cache_read) == (1200, 30000)
    assert result.usage.output_tokens == 10


def test_error_event_before_message_start_bills_nothing() -> None:
    stream = sse("error", {"type": "error",
                           "error": {"type": "api_error", "message": "Internal server error"}})
    assert assert_split_invariant(stream) == Metered(Usage(), True, "api_error", "")


def test_stream_cut_before_message_delta_estimates_four_characters_per_token() -> None:
    thinking = "Let me think. " * 7  # 98 characters
    stream = b"".join([
        message_start(start_usage(input_tokens=500, cache_creation_input_tokens=2000,
                                  cache_creation={"ephemeral_5m_input_tokens": 0,
                                                  "ephemeral_1h_input_tokens": 2000})),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, thinking, "thinking_delta"),
        delta(0, "EqQBCgIYAhIM1gbcDa9GJwZA2b3h" * 10, "signature_delta"),  # not output text
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        delta(1, "日本語のテキスト😀"),  # 9 characters, 28 UTF-8 bytes
        delta(1, 'quote " and \\ and \n'),  # 19 characters, escaped on the wire
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {}}),
        delta(2, '{"file_path": "/src/app.py"}', "input_json_delta"),  # 28 characters
    ])
    result = assert_split_invariant(stream)
    assert result.estimated
    assert result.error_type == "stream_incomplete"
    assert result.usage.output_tokens == -(-(98 + 9 + 19 + 28) // 4)  # 39
    assert (result.usage.input_tokens, result.usage.cache_write_1h) == (500, 2000)


def test_estimate_is_never_below_the_output_tokens_message_start_reported() -> None:
    stream = text_stream(["hi"], start_usage(output_tokens=6), final=None)
    assert assert_split_invariant(stream).usage.output_tokens == 6


def test_stream_cut_before_message_start_is_zero_and_estimated() -> None:
    for cut in (b"", b"event: message_st", message_start(start_usage())[:-1]):
        assert assert_split_invariant(cut) == Metered(Usage(), True, "stream_incomplete", "")


def test_event_cut_in_the_middle_is_discarded() -> None:
    whole = text_stream(["abcd" * 10], start_usage(input_tokens=30), {"output_tokens": 99})
    in_final = whole[: whole.index(b"event: message_delta") + 40]
    result = assert_split_invariant(in_final)
    assert (result.estimated, result.usage.output_tokens) == (True, 10)

    in_delta = whole[: whole.index(b"abcd") + 8]
    assert assert_split_invariant(in_delta).usage.output_tokens == 1

    # The last line is complete but the blank line that ends the event never came.
    unterminated = whole[: whole.index(b"event: message_stop") - 1]
    assert assert_split_invariant(unterminated).usage.output_tokens == 10


def test_malformed_events_are_survived() -> None:
    stream = b"".join([
        b"event: message_start\ndata: {not json\n\n",
        b"event: message_start\ndata: [1, 2]\n\n",
        b'event: message_start\ndata: {"message": {"usage": "many", "model": 7}}\n\n',
        b'event: content_block_delta\ndata: {"delta": {"type": ["text_delta"], "text": "x"}}\n\n',
        b'event: content_block_delta\ndata: {"delta": {"type": "text_delta", "text": 5}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"\xff\xfe"}}\n\n',  # not UTF-8
        b'event: message_delta\ndata: {"usage": null}\n\n',
        b'event: error\ndata: {"error": "boom"}\n\n',
        b"\xff\xfe\x00garbage\n\n",
    ])
    assert assert_split_invariant(stream) == Metered(Usage(), True, "error", "")


def test_text_with_raw_control_characters_is_not_json_and_counts_nothing() -> None:
    prefix = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
              b'"delta":{"type":"text_delta","text":"')
    stream = b"".join([
        message_start(start_usage(output_tokens=0)),
        prefix + b'tab\there"}}\n\n',
        # A raw blank line inside the string ends the event there: what follows is an event.
        prefix + b'abc\n\nevent: message_delta\ndata: {"usage":{"output_tokens":5}}\n\n'
        b'event: x\ndata: "}}\n\n',
        delta(0, "counted"),
    ])
    result = assert_split_invariant(stream)
    assert (result.estimated, result.usage.output_tokens) == (False, 5)
    assert meter(stream[: stream.index(b"abc")]).usage.output_tokens == 0


def test_split_surrogate_pair_across_deltas_counts_as_it_would_event_by_event() -> None:
    # Each half alone is not valid JSON (orjson refuses lone surrogates): neither counts, even
    # when the two events are read together.
    halves = [sse_raw_delta(b"\\ud83d"), sse_raw_delta(b"\\ude00"), sse_raw_delta(b"abc\\u00e9")]
    stream = message_start(start_usage(output_tokens=0)) + b"".join(halves)
    assert assert_split_invariant(stream).usage.output_tokens == 1  # "abcé": 4 characters


def sse_raw_delta(body: bytes) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"' + body + b'"}}\n\n')


# --- message_delta semantics -----------------------------------------------------------------


def test_message_delta_null_fields_do_not_override_start() -> None:
    stream = text_stream(["x"], start_usage(input_tokens=77, cache_read_input_tokens=5), {
        "input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 3,
        "server_tool_use": None,
    })
    usage = meter(stream).usage
    assert (usage.input_tokens, usage.cache_read, usage.output_tokens) == (77, 5, 3)


def test_later_message_delta_wins_and_nested_objects_are_replaced_whole() -> None:
    start = start_usage(cache_creation_input_tokens=300, cache_creation={
        "ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200})
    stream = b"".join([
        message_start(start),
        message_delta({"output_tokens": 50, "server_tool_use": {"web_search_requests": 1}}),
        message_delta({"output_tokens": 80, "cache_creation_input_tokens": 300,
                       "cache_creation": {"ephemeral_1h_input_tokens": 300}}),
    ])
    usage = meter(stream).usage
    assert usage.output_tokens == 80
    assert (usage.cache_write_5m, usage.cache_write_1h) == (0, 300)
    # Omitted from the last delta but not null in an earlier one: kept, as the SDK does.
    assert usage.web_search == 1


CUMULATIVE_FIELDS = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                     "server_tool_use"]


@st.composite
def cumulative_deltas(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A message_start usage and message_delta usages that are cumulative, as the API sends."""
    start = {"input_tokens": draw(st.integers(0, 10**6)),
             "cache_creation_input_tokens": draw(st.integers(0, 10**5)),
             "cache_read_input_tokens": draw(st.integers(0, 10**6)),
             "output_tokens": draw(st.integers(0, 5)),
             "speed": draw(st.sampled_from(["standard", "fast"]))}
    deltas: list[dict[str, Any]] = []
    present: set[str] = set()
    output = start["output_tokens"]
    searches = 0
    for _ in range(draw(st.integers(1, 4))):
        present |= set(draw(st.lists(st.sampled_from(CUMULATIVE_FIELDS))))
        output += draw(st.integers(0, 500))
        searches += draw(st.integers(0, 2))
        usage: dict[str, Any] = {"output_tokens": output}
        for field in CUMULATIVE_FIELDS:
            if field == "server_tool_use":
                value: Any = {"web_search_requests": searches}
            else:
                value = draw(st.integers(0, 10**6))
            usage[field] = value if field in present else draw(st.sampled_from([None, "omit"]))
            if usage[field] == "omit":
                del usage[field]
        deltas.append(usage)
    return start, deltas


@given(cumulative_deltas())
def test_cumulative_message_deltas_match_last_one_wins(
    case: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    start, deltas = case
    last = {k: v for k, v in deltas[-1].items() if v is not None}
    expected = Usage.from_api({**start, **last})  # the tiny reference: the last one wins
    stream = message_start(start) + b"".join(message_delta(u) for u in deltas) + MESSAGE_STOP
    assert meter(stream) == Metered(expected, False, "", MODEL)


# --- Memory bound ----------------------------------------------------------------------------


def held_bytes(m: StreamMeter) -> int:
    return sum(map(len, m._pending))


def test_oversized_event_is_dropped_without_growing_memory_and_its_text_counted() -> None:
    huge_text = "é" * (MAX_EVENT_BYTES // 2 + 1000)  # over the limit in UTF-8
    stream = b"".join([
        message_start(start_usage(input_tokens=11)),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, huge_text),
        delta(0, "tail"),
    ])
    m = StreamMeter()
    peak = 0
    for i in range(0, len(stream), 4096):
        m.feed(stream[i : i + 4096])
        peak = max(peak, held_bytes(m))
    assert peak <= MAX_EVENT_BYTES + 4096
    result = m.finish()
    assert m.oversized_events == 1
    # The dropped delta is counted by the characters of the whole event: a little over.
    assert len(huge_text) + 4 <= 4 * result.usage.output_tokens <= len(huge_text) + 4 + 200
    assert (result.estimated, result.usage.input_tokens) == (True, 11)
    assert meter(stream) == result  # the same when the huge event arrives in one chunk


def test_oversized_event_then_final_usage_is_still_read() -> None:
    blob = {"type": "web_search_result", "encrypted_content": "A" * (MAX_EVENT_BYTES + 10)}
    stream = b"".join([
        message_start(start_usage(input_tokens=4)),
        block_start(0, {"type": "web_search_tool_result", "content": [blob]}),
        block_stop(0),
        message_delta({"output_tokens": 21, "server_tool_use": {"web_search_requests": 2}}),
    ])
    m = StreamMeter()
    for i in range(0, len(stream), 65536):
        m.feed(stream[i : i + 65536])
        assert held_bytes(m) <= MAX_EVENT_BYTES + 65536
    result = m.finish()
    assert (result.usage.output_tokens, result.usage.web_search, result.estimated) == (21, 2, False)
    assert meter(stream) == result


@pytest.mark.parametrize("remainder", [0, 1])  # characters 4k or 4k+1: one more or less shows
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_oversized_event_ending_on_any_chunk_boundary_counts_the_same(
    remainder: int, newline: bytes,
) -> None:
    text = "x" * (MAX_EVENT_BYTES + 3)
    text += "x" * ((remainder - len(delta(0, text)) + 2) % 4)
    big = delta(0, text)
    chars = len(big) - 2  # the whole event is counted, less its blank line
    assert chars % 4 == remainder
    last = delta(0, "y" * 4)
    expected = -(-(chars + 4) // 4)
    stream = (message_start(start_usage(input_tokens=1)) + big + last).replace(b"\n", newline)
    end_of_big = len(stream) - len(last.replace(b"\n", newline))
    assert meter(stream).usage.output_tokens == expected
    for cut in range(end_of_big - 5, end_of_big + 3):
        for step in (3, len(stream)):
            m = StreamMeter()
            m.feed(stream[: MAX_EVENT_BYTES // 2])
            m.feed(stream[MAX_EVENT_BYTES // 2 : cut])
            for i in range(cut, len(stream), step):
                m.feed(stream[i : i + step])
            assert m.finish().usage.output_tokens == expected, (cut - end_of_big, step)
            assert m.oversized_events == 1


def test_event_of_exactly_the_limit_is_kept() -> None:
    overhead = len(delta(0, ""))
    block = delta(0, "z" * (MAX_EVENT_BYTES + 2 - overhead))[:-2]
    assert len(block) == MAX_EVENT_BYTES
    stream = message_start(start_usage(output_tokens=0)) + block + b"\n\n"
    m = StreamMeter()
    m.feed(stream[:-1])  # the blank line arrives split: the held event ends in \n
    m.feed(stream[-1:])
    assert m.oversized_events == 0
    assert m.finish() == meter(stream)
    assert meter(stream).usage.output_tokens == -(-(MAX_EVENT_BYTES + 2 - overhead) // 4)


# --- Sub-inferences billed apart (usage.iterations) ------------------------------------------

ADVISOR = {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 20_000,
           "output_tokens": 1500, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": 300}
EXECUTOR = {"type": "message", "input_tokens": 12, "output_tokens": 40,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
COMPACTION = {"type": "compaction", "input_tokens": 9000, "output_tokens": 700,
              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
APART = (("claude-opus-4-8", Usage(input_tokens=20_000, output_tokens=1500, cache_read=300)),
         ("", Usage(input_tokens=9000, output_tokens=700)))


def test_advisor_and_compaction_iterations_of_the_final_delta_are_read() -> None:
    final = {"input_tokens": 24, "output_tokens": 80,
             "iterations": [EXECUTOR, ADVISOR, EXECUTOR, COMPACTION]}
    result = assert_split_invariant(text_stream(["Hi"], start_usage(), final))
    assert (result.usage.input_tokens, result.usage.output_tokens) == (24, 80)
    assert result.usage.apart == APART and not result.estimated


def test_a_later_delta_replaces_the_iterations_of_an_earlier_one() -> None:
    # Each message_delta's usage is cumulative: the last one's iterations are all of them.
    stream = text_stream(["Hi"], start_usage(), {"output_tokens": 5, "iterations": [ADVISOR]})
    stream = stream.replace(MESSAGE_STOP, b"") + message_delta(
        {"output_tokens": 9, "iterations": [ADVISOR, COMPACTION]}) + MESSAGE_STOP
    assert assert_split_invariant(stream).usage.apart == APART


# --- Non-streamed bodies ---------------------------------------------------------------------


def test_meter_body_reads_the_iterations_billed_apart() -> None:
    body = orjson.dumps({"id": "msg_01", "type": "message", "model": MODEL, "content": [],
                         "usage": {"input_tokens": 24, "output_tokens": 80,
                                   "iterations": [EXECUTOR, ADVISOR, COMPACTION]}})
    assert meter_body(body).usage == Usage(input_tokens=24, output_tokens=80, apart=APART)


def test_meter_body_reads_a_message() -> None:
    body = orjson.dumps({
        "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 20,
                  "cache_read_input_tokens": 30, "output_tokens": 40,
                  "cache_creation": {"ephemeral_5m_input_tokens": 5,
                                     "ephemeral_1h_input_tokens": 15},
                  "server_tool_use": {"web_search_requests": 3},
                  "service_tier": "standard", "speed": "fast", "inference_geo": "us"},
    })
    assert meter_body(body) == Metered(
        Usage(input_tokens=10, output_tokens=40, cache_write_5m=5, cache_write_1h=15,
              cache_read=30, web_search=3, service_tier="standard", speed="fast",
              inference_geo="us"),
        estimated=False, error_type="", model=MODEL,
    )


def test_meter_body_reads_an_error_envelope() -> None:
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    assert meter_body(body) == Metered(Usage(), False, "rate_limit_error", "")


@pytest.mark.parametrize("body", [b"", b"<html>502 Bad Gateway</html>", b"[1]", b'"x"',
                                  b'{"type":"message","model":"m"}', b"\x1f\x8b\x08\x00"])
def test_meter_body_marks_unparseable_responses(body: bytes) -> None:
    result = meter_body(body)
    assert (result.usage, result.error_type, result.estimated) == (
        Usage(), "unparseable_response", True)


# --- Property tests: any chunking, and a line-by-line reference parser -----------------------


TEXT_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json",
               "thinking_delta": "thinking"}


def reference_meter(stream: bytes) -> Metered:
    """The SSE spec read line by line over the whole stream, then the rules of DESIGN §3."""
    stream = stream.removeprefix(b"\xef\xbb\xbf")
    lines = re.split(rb"\r\n|\r|\n", stream)[:-1]  # the last piece is an unfinished line
    start: dict[str, Any] | None = None
    deltas: list[dict[str, Any]] = []
    model, error, chars = "", "", 0
    name = b""
    data: list[bytes] = []
    for line in lines:
        if line:
            if not line.startswith(b":"):
                field, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if field == b"event":
                    name = value
                elif field == b"data":
                    data.append(value)
            continue
        # A blank line dispatches the event, if it has data, and resets both buffers.
        event, name, lines_of_data, data = name, b"", data, []
        if not lines_of_data:
            continue
        try:
            doc = orjson.loads(b"\n".join(lines_of_data))
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        if event == b"message_start" and isinstance(doc.get("message"), dict):
            if isinstance(doc["message"].get("usage"), dict):
                start = doc["message"]["usage"]
            if isinstance(doc["message"].get("model"), str):
                model = doc["message"]["model"]
        elif event == b"content_block_delta" and isinstance(doc.get("delta"), dict):
            kind = doc["delta"].get("type")
            text = doc["delta"].get(TEXT_FIELDS[kind]) if kind in TEXT_FIELDS else None
            chars += len(text) if isinstance(text, str) else 0
        elif event == b"message_delta" and isinstance(doc.get("usage"), dict):
            deltas.append(doc["usage"])
        elif event == b"error" and not error:
            err = doc.get("error")
            kind = err.get("type") if isinstance(err, dict) else None
            error = kind if isinstance(kind, str) and kind else "error"
    if deltas:
        final = dict(start or {})
        for usage in deltas:
            final.update({k: v for k, v in usage.items() if v is not None})
        return Metered(Usage.from_api(final), False, error, model)
    if start is None:
        return Metered(Usage(), True, error or "stream_incomplete", model)
    usage = Usage.from_api(start)
    usage.output_tokens = max(usage.output_tokens, -(-chars // 4))
    return Metered(usage, True, error or "stream_incomplete", model)


def reference_complete(stream: bytes) -> bool:
    """Whether, by the SSE spec read line by line, a `message_stop` event (one with data) was
    dispatched in `stream`: from there the client holds the whole answer."""
    lines = re.split(rb"\r\n|\r|\n", stream.removeprefix(b"\xef\xbb\xbf"))[:-1]
    name, has_data = b"", False
    for line in lines:
        if not line:
            if name == b"message_stop" and has_data:
                return True
            name, has_data = b"", False
        elif not line.startswith(b":"):
            field, _, value = line.partition(b":")
            if field == b"event":
                name = value.removeprefix(b" ")
            has_data = has_data or field == b"data"
    return False


def render(draw: st.DrawFn, event: str, data: dict[str, Any]) -> bytes:
    """One event in one of the layouts the SSE spec allows, with any line ending."""
    layout = draw(st.sampled_from(
        ["api", "api", "api", "spaced", "nospace", "data_first", "multiline", "comment", "id"]))
    compact = orjson.dumps(data)
    spaced = json.dumps(data).encode()  # ", " / ": " and \uXXXX escapes, surrogate pairs too
    name = event.encode()
    if layout == "api":
        text = b"event: " + name + b"\ndata: " + compact + b"\n\n"
    elif layout == "spaced":
        text = b"event: " + name + b"\ndata: " + spaced + b"\n\n"
    elif layout == "nospace":
        text = b"event:" + name + b"\ndata:" + compact + b"\n\n"
    elif layout == "data_first":
        text = b"data: " + compact + b"\nevent: " + name + b"\n\n"
    elif layout == "multiline":
        lines = json.dumps(data, indent=1).encode().split(b"\n")
        text = b"event: " + name + b"\n" + b"".join(b"data: " + ln + b"\n" for ln in lines) + b"\n"
    elif layout == "comment":
        text = b": " + draw(st.sampled_from([b"", b"ka", b"x: y"])) + b"\n" + (
            b"event: " + name + b"\ndata: " + compact + b"\n\n")
    else:
        text = b"id: 1\nevent: " + name + b"\nretry: 5\ndata: " + compact + b"\n\n"
    text = b"\n" * draw(st.sampled_from([0, 0, 0, 1, 2])) + text
    newline = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"]))
    return text.replace(b"\n", newline)


delta_texts = st.text(max_size=12) | st.sampled_from(
    ["Hello", " world", "😀", "naïve", "\\", '"', "\n", "a\u2028b", "\x00", "{\"k\": 1}"])
usage_values = st.none() | st.integers(0, 10**6)


@st.composite
def usages(draw: st.DrawFn) -> dict[str, Any]:
    usage = draw(st.fixed_dictionaries({}, optional={
        "input_tokens": usage_values, "output_tokens": usage_values,
        "cache_creation_input_tokens": usage_values, "cache_read_input_tokens": usage_values,
        "cache_creation": st.none() | st.fixed_dictionaries({
            "ephemeral_5m_input_tokens": usage_values,
            "ephemeral_1h_input_tokens": usage_values}),
        "server_tool_use": st.none() | st.fixed_dictionaries(
            {"web_search_requests": usage_values}),
        "service_tier": st.sampled_from(["standard", "priority", "batch"]),
        "speed": st.sampled_from(["standard", "fast"]),
        "inference_geo": st.sampled_from(["us", "global", "not_available"]),
        "iterations": st.none() | st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["message", "advisor_message", "compaction", "other"]),
             "input_tokens": usage_values, "output_tokens": usage_values},
            optional={"model": st.sampled_from(["claude-opus-4-8", "", 7])}), max_size=3),
    }))
    return usage


@st.composite
def anthropic_streams(draw: st.DrawFn) -> bytes:
    """A stream in the Messages API's event order, in varied layouts, maybe cut anywhere."""
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {
        "type": "message_start",
        "message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "model": draw(st.sampled_from([MODEL, "claude-opus-5", ""])),
                    "content": [], "usage": draw(usages())},
    })]
    for index in range(draw(st.integers(0, 3))):
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "text", "text": ""}}))
        for text in draw(st.lists(delta_texts, max_size=8)):
            kind = draw(st.sampled_from([*TEXT_FIELDS, "signature_delta"]))
            field = TEXT_FIELDS.get(kind, "signature")
            events.append(("content_block_delta", {"type": "content_block_delta",
                                                   "index": index,
                                                   "delta": {"type": kind, field: text}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    for usage in draw(st.lists(usages(), max_size=3)):
        events.append(("message_delta", {"type": "message_delta", "delta": {}, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    for _ in range(draw(st.integers(0, 3))):
        extra = draw(st.sampled_from([
            ("ping", {"type": "ping"}),
            ("mystery", {"type": "mystery", "usage": {"output_tokens": 10**9}}),
            ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "o"}}),
            ("error", {"type": "error", "error": {"type": "api_error", "message": "a"}}),
        ]))
        events.insert(draw(st.integers(0, len(events))), extra)
    stream = b"".join(render(draw, name, data) for name, data in events)
    if draw(st.booleans()):
        stream = b"\xef\xbb\xbf" + stream
    if draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream)))]  # client abort, upstream reset
    return stream


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


FUZZ_PIECES = [
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
    b'{"type":"text_delta","text":"', b'"}}\n\n', b"\t", b"event:  error\n",
    b"event: ", b"event:", b"data: ", b"data:", b"\n", b"\n\n", b"\r", b"\r\n", b": c\n", b" ",
    b"content_block_delta", b"message_start", b"message_delta", b"message_stop", b"error",
    b"ping",
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"',
    b'{"message":{"model":"m","usage":{"input_tokens":3,"output_tokens":1}}}',
    b'{"usage":{"output_tokens":4}}', b'{"error":{"type":"e"}}', b'"}}', b"\\", b"\\u00e9",
    b"\\ud83d", b"\\ude00", b"\xef\xbb\xbf", b"\xc3\xa9", b"\xe6\x97", b"\xa5", b"\x00",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_streams(), st.lists(st.integers(0, 10**6), max_size=12))
def test_any_chunking_gives_the_whole_stream_result_and_matches_the_reference(
    stream: bytes, cuts: list[int],
) -> None:
    whole = meter(stream)
    assert meter(*split_at(stream, cuts)) == whole
    assert whole == reference_meter(stream)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(FUZZ_PIECES) | st.binary(max_size=4), max_size=40).map(b"".join),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_arbitrary_bytes_never_raise_and_match_the_reference(
    stream: bytes, cuts: list[int],
) -> None:
    whole = meter(stream)
    assert meter(*split_at(stream, cuts)) == whole
    assert whole == reference_meter(stream)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_streams() | st.lists(st.sampled_from(FUZZ_PIECES) | st.binary(max_size=4),
                                      max_size=40).map(b"".join),
       st.lists(st.integers(0, 10**6), max_size=12))
def test_the_answer_is_complete_from_the_chunk_that_ends_message_stop(
    stream: bytes, cuts: list[int],
) -> None:
    """The proxy settles a stream as soon as the meter says the client will hold the whole
    answer: after the chunk that completes `message_stop`, whatever the split, never before."""
    m, fed = StreamMeter(), b""
    for chunk in split_at(stream, cuts):
        m.feed(chunk)
        fed += chunk
        assert m.complete == reference_complete(fed)


def test_message_stop_split_in_its_name_completes_the_answer_at_its_blank_line() -> None:
    stream = text_stream(["Hi"], start_usage(), {"output_tokens": 3})
    cut = stream.index(b"message_stop") + len(b"message_")
    m = StreamMeter()
    for chunk in (stream[:cut], stream[cut:-1]):  # the name split, the last \n held back
        m.feed(chunk)
        assert not m.complete
    m.feed(stream[-1:])
    assert m.complete and m.finish().usage.output_tokens == 3


@given(st.lists(delta_texts, min_size=1, max_size=30), st.lists(st.integers(0, 10**6)))
def test_delta_characters_are_counted_exactly_under_any_chunking(
    texts: list[str], cuts: list[int],
) -> None:
    stream = text_stream(texts, start_usage(output_tokens=0), final=None)
    expected = -(-sum(map(len, texts)) // 4)
    assert meter(*split_at(stream, cuts)).usage.output_tokens == expected
    assert bytewise(stream).usage.output_tokens == expected
