"""A mid-stream `event: error` from Vertex, on the translated path (Anthropic-format clients)
and the passthrough path (Claude Code with CLAUDE_CODE_USE_VERTEX): the operator's log has the
provider's text, the developer an error event with the generic message and the same
`error.type` (except the messages the client's recovery reads), the stream is relayed as it
comes, and the request is billed as before."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.providers.sse_errors import PublicErrors
from tests.claude_code import QUIET, claude_p
from tests.conftest import Gateway
from tests.fakes.gateways import (
    VERTEX_PROJECT,
    VERTEX_REGION,
    Served,
    StartGateway,
    vertex_provider,
)
from tests.provider_requests import BODY
from tests.test_meter import FUZZ_PIECES, anthropic_streams, meter, split_at

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures

SECRET = "projects/fake-project/serviceAccounts/sa@fake-project quota 4711"
GENERIC = "provider vertex failed mid-stream ({}); the gateway's log has its message"
KEPT = "prompt is too long: 212345 tokens > 200000 maximum"
VERTEX_MODELS = (f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}"
                 "/publishers/anthropic/models/")


def public(*chunks: bytes) -> bytes:
    errors = PublicErrors("vertex")
    return b"".join(errors.feed(chunk) for chunk in chunks) + errors.finish()


def error_event(kind: str, message: str) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": message}}) + b"\n\n"


START = b'event: message_start\ndata: {"type":"message_start","message":{"model":"m",' \
        b'"usage":{"input_tokens":1200,"output_tokens":1}}}\n\n'
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' \
        b'"delta":{"type":"text_delta","text":"Hello "}}\n\n'


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([("overloaded_error", SECRET, GENERIC.format("overloaded_error")),
                        ("invalid_request_error", KEPT, KEPT)]),
       st.integers(0, 3), st.lists(st.integers(0, 10**6), max_size=12))
def test_an_error_event_is_rewritten_whatever_the_chunks_and_the_rest_passes_unchanged(
        error: tuple[str, str, str], at: int, cuts: list[int]) -> None:
    kind, text, seen = error
    events = [START, DELTA, DELTA, b"event: ping\ndata: {}\n\n"]
    stream = b"".join([*events[:at], error_event(kind, text), *events[at:]])
    expected = b"".join([*events[:at], error_event(kind, seen), *events[at:]])
    assert public(*split_at(stream, cuts)) == expected
    assert meter(*split_at(expected, cuts)) == meter(stream)


def test_bytes_before_an_event_is_named_are_held_and_no_more() -> None:
    errors = PublicErrors("vertex")
    assert errors.feed(START + DELTA[:10]) == START  # "event: con": maybe an error event
    assert errors.feed(DELTA[10:30]) == DELTA[:30]  # named: relayed as it comes from here
    assert errors.feed(DELTA[30:]) == DELTA[30:]
    held = error_event("api_error", SECRET)
    assert errors.feed(held[:-1]) == b""  # an error event is held to its blank line
    assert errors.feed(held[-1:]) == error_event("api_error", GENERIC.format("api_error"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_streams(), st.lists(st.integers(0, 10**6), max_size=12))
def test_any_stream_is_metered_as_before_in_any_chunking(stream: bytes,
                                                          cuts: list[int]) -> None:
    """Every layout the SSE spec allows (the meter's own strategy): the error events' text is
    gone, chunking makes no difference, and the meter reads what it read from the original."""
    whole = public(stream)
    assert public(*split_at(stream, cuts)) == whole
    assert meter(*split_at(whole, cuts)) == meter(stream)
    assert b'"message":"o"' not in whole and b'"message":"a"' not in whole


@settings(max_examples=300)
@given(st.lists(st.sampled_from(FUZZ_PIECES) | st.binary(max_size=4), max_size=40).map(b"".join),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_arbitrary_bytes_never_raise_and_do_not_depend_on_chunking(
        stream: bytes, cuts: list[int]) -> None:
    assert public(*split_at(stream, cuts)) == public(stream)


@pytest.mark.parametrize(("text", "seen"), [
    (SECRET, GENERIC.format("overloaded_error")),
    (KEPT, KEPT)])
@pytest.mark.parametrize("path", ["translated", "passthrough"])
async def test_a_vertex_stream_error_reaches_the_developer_with_the_public_text(
        start_gateway: StartGateway, vertex: Served, caplog: pytest.LogCaptureFixture,
        text: str, seen: str, path: str) -> None:
    caplog.set_level(logging.WARNING, "meterd.providers")
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    vertex.fake.behaviour.stream_error = ("overloaded_error", text)
    key = await gw.developer()
    body = await _stream(gw, key, path)
    assert SECRET.encode() not in body
    # The answer as it came: message_start, content_block_start, ping, one delta, then this.
    assert body.count(b"\n\n") == 5
    assert body.endswith(error_event("overloaded_error", seen))
    (line,) = [r.getMessage() for r in caplog.records if "mid-stream" in r.getMessage()]
    assert line == f"provider vertex failed mid-stream overloaded_error: {text}"
    # Billed as before: the input from message_start, the output estimated from what was
    # streamed ("Hello " is 6 characters: 2 tokens at 4 a token, above the start's 1).
    # 1200 * 3 + 2 * 15 = 3630 µ$, 10% over it in us-east5.
    (event,) = await gw.settled(1)
    assert (event["status"], event["error_type"], event["input_tokens"],
            event["output_tokens"], event["estimated"], event["cost_micros"]) == (
        "200", "overloaded_error", "1200", "2", "1", "3993")


async def _stream(gw: Gateway, key: str, path: str) -> bytes:
    if path == "translated":
        resp = await gw.client.post("/v1/messages", data=orjson.dumps({**BODY, "stream": True}),
                                    headers={"x-api-key": key})
    else:
        doc = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
               "messages": BODY["messages"], "stream": True}
        resp = await gw.client.post(f"{VERTEX_MODELS}claude-sonnet-4-6:streamRawPredict",
                                    data=orjson.dumps(doc),
                                    headers={"authorization": f"Bearer {key}"})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    return await resp.read()


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_claude_code_in_vertex_mode_handles_a_stream_error_it_sees_no_text_of(
        start_gateway: StartGateway, vertex: Served, tmp_path: Path) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    vertex.fake.behaviour.stream_error = ("invalid_request_error", SECRET)
    key = await gw.developer()
    run = await claude_p(tmp_path / "home", {
        **QUIET, "ANTHROPIC_AUTH_TOKEN": key, "CLAUDE_CODE_USE_VERTEX": "1",
        "ANTHROPIC_VERTEX_BASE_URL": gw.url + "/vertex/v1", "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1",
        "ANTHROPIC_VERTEX_PROJECT_ID": "laptop-project", "CLOUD_ML_REGION": "us-east5"},
        debug=True)
    assert run.code == 0 and run.output.startswith("Hello from the fake provider")
    assert SECRET not in run.output + run.debug
    # It read the rewritten event as the stream's failure and asked again without streaming.
    assert "Error streaming, falling back to non-streaming mode: " + error_event(
        "invalid_request_error", GENERIC.format("invalid_request_error"))[19:-2].decode() \
        in run.debug
    # Both billed: us-east5 is regional, 10% over Sonnet 4.6's $3 / $15 per MTok. The stream:
    # 1200 input, 2 output estimated from its one delta: (3600 + 30) * 1.1 = 3993 µ$; the
    # answer: (3600 + 60 * 15) * 1.1 = 4950 µ$.
    events = sorted(await gw.settled(2), key=lambda e: e["stream"])
    assert [(e["stream"], e["error_type"], e["input_tokens"], e["output_tokens"],
             e["cost_micros"]) for e in events] == [
        ("0", "", "1200", "60", "4950"), ("1", "invalid_request_error", "1200", "2", "3993")]
