"""Provider errors as clients in a provider's own format see them (Claude Code with
CLAUDE_CODE_USE_BEDROCK / _VERTEX, through meterd's /bedrock and /vertex paths): the same rule
as on the translated path, in the shape those clients read. The provider's text goes to the
operator's log; the developer gets a generic message with the same error type, except the
messages the client's recovery reads; a refused organization credential moves on to the next
provider, or is a 502."""

from __future__ import annotations

import base64
import contextlib

import aiohttp
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer

from proxy.providers.bedrock import public_frame
from proxy.providers.eventstream import encode_message
from tests.conftest import Gateway
from tests.fakes.eventstream import exception_frame
from tests.fakes.gateways import (
    AWS_TOKEN,
    VERTEX_PROJECT,
    VERTEX_REGION,
    Served,
    StartGateway,
    bedrock_provider,
    vertex_provider,
)
from tests.provider_requests import BODY

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures

MODEL_PATH = "/bedrock/model/us.anthropic.claude-sonnet-4-6/"
BEDROCK_BODY = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                             "messages": BODY["messages"]})
COUNT_BODY = orjson.dumps({"input": {"invokeModel": {
    "body": base64.b64encode(BEDROCK_BODY).decode()}}})
REFUSED = "provider bedrock refused the gateway's credential; an operator must fix its " \
          "configuration"
VERTEX_MODELS = (f"/vertex/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}"
                 "/publishers/anthropic/models/")


async def bedrock_answer(gw: Gateway, key: str, action: str) -> aiohttp.ClientResponse:
    body = COUNT_BODY if action == "count-tokens" else BEDROCK_BODY
    resp = await gw.client.post(MODEL_PATH + action, data=body,
                                headers={"authorization": f"Bearer {key}"})
    await resp.read()
    return resp


async def bedrock_call(gw: Gateway, key: str, action: str) -> tuple[int, bytes]:
    resp = await bedrock_answer(gw, key, action)
    return resp.status, await resp.read()


@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream", "count-tokens"])
async def test_a_signature_mismatch_quoting_the_session_token_never_reaches_a_bedrock_client(
        start_gateway: StartGateway, wrong_secret_bedrock: Served,
        caplog: pytest.LogCaptureFixture, action: str) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(wrong_secret_bedrock)})
    key = await gw.developer()
    resp = await bedrock_answer(gw, key, action)
    body = await resp.read()
    assert resp.status == 502
    assert orjson.loads(body) == {"message": REFUSED}  # Bedrock's error shape
    # what an AWS SDK names the error by: a server fault, not the developer's access
    assert resp.headers["x-amzn-errortype"] == "InternalServerException"
    assert AWS_TOKEN.encode() not in body
    # The operator's line has all Bedrock said, the session token in its canonical request.
    (line,) = [r.getMessage() for r in caplog.records
               if "refused the gateway's credential (403)" in r.getMessage()]
    assert f"x-amz-security-token:{AWS_TOKEN}" in line
    assert "The Canonical String for this request should have been" in line


@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream", "count-tokens"])
async def test_a_refused_credential_moves_a_bedrock_client_to_the_next_bedrock(
        start_gateway: StartGateway, wrong_secret_bedrock: Served, bedrock: Served,
        action: str) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(wrong_secret_bedrock),
                                        "bedrock-b": bedrock_provider(bedrock)})
    key = await gw.developer()
    status, body = await bedrock_call(gw, key, action)
    assert status == 200, body
    assert AWS_TOKEN.encode() not in body
    assert len(wrong_secret_bedrock.fake.rejected) == 1 and len(bedrock.fake.recorded) == 1
    if action != "count-tokens":
        (event,) = await gw.settled(1)
        assert event["provider"] == "bedrock-b" and event["status"] == "200"


@pytest.mark.parametrize(("text", "seen"), [
    ("Input is too long.", "Input is too long."),  # Claude Code's recovery reads it
    (f"Malformed input request: #/messages/0 sent with {AWS_TOKEN}",
     "provider bedrock answered 400 (invalid_request_error); the gateway's log has its message"),
])
@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream"])
async def test_bedrock_errors_reach_a_bedrock_client_in_bedrocks_shape_keeping_only_what_it_reads(
        start_gateway: StartGateway, bedrock: Served, caplog: pytest.LogCaptureFixture,
        text: str, seen: str, action: str) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    bedrock.fake.behaviour.status, bedrock.fake.behaviour.message = 400, text
    key = await gw.developer()
    resp = await gw.client.post(MODEL_PATH + action, data=BEDROCK_BODY,
                                headers={"authorization": f"Bearer {key}"})
    assert resp.status == 400
    assert await resp.read() == orjson.dumps({"message": seen})
    # The error type the AWS SDKs read is Bedrock's own.
    assert resp.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert f"provider bedrock answered 400 invalid_request_error: {text}" in caplog.text


@pytest.mark.parametrize(("exception", "seen"), [
    (("throttlingException", f"Too many tokens for role session {AWS_TOKEN}"),
     "provider bedrock failed mid-stream (rate_limit_error); the gateway's log has its message"),
    (("validationException", "Input is too long."), "Input is too long.")])
async def test_a_stream_exception_frame_reaches_a_bedrock_client_with_the_public_text(
        start_gateway: StartGateway, bedrock: Served, caplog: pytest.LogCaptureFixture,
        exception: tuple[str, str], seen: str) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    bedrock.fake.behaviour.fail, bedrock.fake.behaviour.exception = "exception", exception
    key = await gw.developer()
    status, raw = await bedrock_call(gw, key, "invoke-with-response-stream")
    assert status == 200
    assert AWS_TOKEN.encode() not in raw
    buffer = EventStreamBuffer()  # botocore checks both CRCs of every frame
    buffer.add_data(raw)
    *events, last = list(buffer)
    assert [m.headers[":message-type"] for m in events] == ["event"] * 4
    assert last.headers == {":exception-type": exception[0], ":content-type": "application/json",
                            ":message-type": "exception"}
    assert orjson.loads(last.payload) == {"message": seen}
    if seen == exception[1]:  # kept: the very frame Bedrock sent
        assert raw.endswith(exception_frame(*exception))
    assert f"provider bedrock failed mid-stream {_kind(exception[0])}: {exception[1]}" \
        in caplog.text
    # Billed as today: what the stream showed before it failed.
    (event,) = await gw.settled(1)
    assert event["error_type"] == _kind(exception[0]) and event["input_tokens"] == "1200"


def _kind(exception: str) -> str:
    return {"throttlingException": "rate_limit_error",
            "validationException": "invalid_request_error"}[exception]


@pytest.mark.parametrize(("text", "seen"), [
    ("Request payload size exceeds the limit: 31457280 bytes.",
     "Request payload size exceeds the limit: 31457280 bytes."),
    ("Project 12345 lacks quota in us-east5 for service account sa@fake-project",
     "provider vertex answered 400 (invalid_request_error); the gateway's log has its message"),
])
@pytest.mark.parametrize("method", ["rawPredict", "streamRawPredict"])
async def test_vertex_errors_reach_a_vertex_client_in_googles_shape_keeping_only_what_it_reads(
        start_gateway: StartGateway, vertex: Served, caplog: pytest.LogCaptureFixture,
        text: str, seen: str, method: str) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    b = vertex.fake.behaviour
    b.status, b.message = 400, text  # in Google's error format
    key = await gw.developer()
    doc = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
           "messages": BODY["messages"], "stream": method == "streamRawPredict"}
    resp = await gw.client.post(f"{VERTEX_MODELS}claude-sonnet-4-6:{method}",
                                data=orjson.dumps(doc),
                                headers={"authorization": f"Bearer {key}"})
    assert resp.status == 400
    assert await resp.json() == {"error": {"code": 400, "message": seen,
                                           "status": "INVALID_ARGUMENT"}}
    assert f"provider vertex answered 400 invalid_request_error: {text}" in caplog.text


async def test_an_anthropic_envelope_400_reaches_a_vertex_client_as_vertex_sent_it(
        start_gateway: StartGateway, vertex: Served) -> None:
    gw = await start_gateway(providers={"vertex": vertex_provider(vertex)})
    b = vertex.fake.behaviour
    b.status, b.envelope = 400, True
    b.message = "prompt is too long: 212345 tokens > 200000 maximum"
    key = await gw.developer()
    doc = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
           "messages": BODY["messages"]}
    resp = await gw.client.post(f"{VERTEX_MODELS}claude-sonnet-4-6:rawPredict",
                                data=orjson.dumps(doc),
                                headers={"authorization": f"Bearer {key}"})
    assert resp.status == 400
    assert await resp.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": b.message}}


def test_an_error_frame_is_re_encoded_with_the_public_text_in_its_header() -> None:
    raw = encode_message({":message-type": "error", ":error-code": "InternalFailure",
                          ":error-message": f"failed for session {AWS_TOKEN}"}, b"")
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    (message,) = list(buffer)
    buffer.add_data(public_frame("bedrock", message, raw))
    (public,) = list(buffer)
    assert public.headers == {":message-type": "error", ":error-code": "InternalFailure",
                              ":error-message": "provider bedrock failed mid-stream "
                              "(api_error); the gateway's log has its message"}
    assert public.payload == b""


async def test_a_bedrock_stream_the_provider_cuts_breaks_off_the_client_and_is_billed(
        start_gateway: StartGateway, bedrock: Served) -> None:
    gw = await start_gateway(providers={"bedrock": bedrock_provider(bedrock)})
    bedrock.fake.behaviour.fail = "drop-mid"
    key = await gw.developer()
    resp = await gw.client.post(MODEL_PATH + "invoke-with-response-stream", data=BEDROCK_BODY,
                                headers={"authorization": f"Bearer {key}"})
    raw = b""
    with contextlib.suppress(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            raw += chunk
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    assert [m.headers[":message-type"] for m in buffer] == ["event"] * 4
    (event,) = await gw.settled(1)
    assert event["error_type"] == "upstream_reset" and event["input_tokens"] == "1200"


@pytest.mark.parametrize("fallback", [True, False])
async def test_a_refused_credential_moves_a_vertex_client_on_or_is_a_502(
        start_gateway: StartGateway, vertex: Served, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fallback: bool) -> None:
    monkeypatch.setenv("MTD_PROVIDER_VERTEX_STALE_KEY", "an-expired-token")  # Vertex: 401
    providers = {"vertex-stale": vertex_provider(vertex)}
    if fallback:
        providers["vertex"] = vertex_provider(vertex)
    gw = await start_gateway(providers=providers)
    key = await gw.developer()
    doc = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
           "messages": BODY["messages"]}
    resp = await gw.client.post(f"{VERTEX_MODELS}claude-sonnet-4-6:rawPredict",
                                data=orjson.dumps(doc),
                                headers={"authorization": f"Bearer {key}"})
    assert vertex.fake.rejected[0] == "bad token"
    if fallback:
        assert resp.status == 200
        (event,) = await gw.settled(1)
        assert event["provider"] == "vertex"
        return
    assert resp.status == 502
    assert await resp.json() == {"type": "error", "error": {
        "type": "api_error", "message": "provider vertex-stale refused the gateway's "
        "credential; an operator must fix its configuration"}}
    assert "provider vertex-stale refused the gateway's credential (401): " \
        '{"error": {"code": 401, "message": "Request had invalid authentication' in caplog.text
    assert "OAuth" not in await resp.text()
