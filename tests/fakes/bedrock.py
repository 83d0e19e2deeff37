"""A fake Bedrock Runtime that checks what the real one checks.

Every request must carry a SigV4 signature that botocore's own signer reproduces from the
request as received (or a Bedrock API key as Bearer); bodies must be in Bedrock's form
(`anthropic_version` "bedrock-2023-05-31", no `model`/`stream`, betas as a body list).
Streams answer in event-stream frames whose `chunk` events carry base64 Anthropic events.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakes.events import message, stream_events
from tests.fakes.eventstream import chunk_frame, exception_frame

BEDROCK_VERSION = "bedrock-2023-05-31"
_ERROR_NS = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


@dataclass
class Behaviour:
    """How the fake answers; tests change it between requests."""

    usage: dict[str, Any] = field(default_factory=dict)
    text_chunks: int = 6
    status: int = 0  # answer every request with this error status
    message: str = "Bedrock is unavailable right now."  # that error's message
    fail: str = ""  # "drop-before", "drop-mid", "exception"
    exception: tuple[str, str] = (  # that exception's type and message
        "throttlingException", "Too many tokens, please wait before trying again.")
    gap_ms: int = 0  # silence after message_start
    set_cookie: str = ""  # on every answer, as a provider's load balancer may
    reject_betas: frozenset[str] = frozenset({"files-api-2025-04-14", "oauth-2025-04-20"})


class FakeBedrock:
    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1",
                 session_token: str | None = None, api_key: str = "") -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.session_token, self.api_key = session_token, api_key
        self.behaviour = Behaviour()
        self.recorded: list[dict[str, Any]] = []
        self.rejected: list[str] = []  # why requests were refused
        self.said: dict[str, str] = {}  # the whole message Bedrock answers a refusal with
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{model}/{action}", self.handle)
        app.on_response_prepare.append(self._set_cookie)
        return app

    async def _set_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.behaviour.set_cookie:
            response.headers["Set-Cookie"] = self.behaviour.set_cookie

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rid = f"bedrock-req-{next(self._ids)}"
        self.recorded.append({"path": request.raw_path, "headers": dict(request.headers),
                              "body": body})
        why = self._check_auth(request, body)
        if why:
            self.rejected.append(why)
            return _error(403, "InvalidSignatureException", self.said.pop(why, why), rid)
        model = unquote(request.match_info["model"])
        action = request.match_info["action"]
        if action not in ("invoke", "invoke-with-response-stream", "count-tokens"):
            return _error(404, "UnknownOperationException", "unknown operation", rid)
        if action == "count-tokens":
            if not model.startswith("anthropic."):  # CountTokens takes foundation models only
                return _error(400, "ValidationException",
                              "The provided model identifier is invalid.", rid)
            return self._count_tokens(body, rid)
        try:
            doc = self._check_body(body)
        except ValueError as exc:
            return _error(400, "ValidationException", str(exc), rid)
        if "anthropic.claude" not in model and ":application-inference-profile/" not in model:
            return _error(400, "ValidationException",
                          "The provided model identifier is invalid.", rid)
        b = self.behaviour
        if b.status:
            name = {400: "ValidationException", 429: "ThrottlingException",
                    503: "ServiceUnavailableException"}.get(b.status, "InternalServerException")
            return _error(b.status, name, b.message, rid)
        if b.fail == "drop-before":
            request.transport.close()  # type: ignore[union-attr]
            return web.Response()
        msg_id = f"msg_bdrk_{rid}"
        if action == "invoke":
            answer = message(msg_id, model.split("anthropic.")[-1], b.usage, b.text_chunks)
            usage = answer["usage"]
            return web.json_response(answer, headers={
                "x-amzn-RequestId": rid,
                "X-Amzn-Bedrock-Input-Token-Count": str(usage["input_tokens"]),
                "X-Amzn-Bedrock-Output-Token-Count": str(usage["output_tokens"])},
                dumps=lambda v: orjson.dumps(v).decode())
        return await self._stream(request, rid, msg_id, model, doc)

    def _check_auth(self, request: web.Request, body: bytes) -> str:
        auth = request.headers.get("Authorization", "")
        if self.api_key and auth == f"Bearer {self.api_key}":
            return ""
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "missing SigV4 authorization"
        parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        akid, date, region, service, term = parts["Credential"].split("/")
        if akid != self.access_key:
            return "The security token included in the request is invalid."
        if (region, service, term) != (self.region, "bedrock", "aws4_request"):
            return f"credential scope {region}/{service} is wrong"
        amz_date = request.headers.get("X-Amz-Date", "")
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if abs(time.time() - when.timestamp()) > 300 or not amz_date.startswith(date):
            return "Signature expired"
        if self.session_token and request.headers.get("X-Amz-Security-Token") != \
                self.session_token:
            return "The security token included in the request is invalid."
        signed = parts["SignedHeaders"].split(";")
        if "host" not in signed:
            return "host is not signed"
        # Rebuild the request as received and sign it with botocore's own signer.
        headers = {name: request.headers.get(name, "") for name in signed}
        url = f"http://{request.headers['Host']}{request.raw_path}"
        rebuilt = AWSRequest(method=request.method, url=url, data=body, headers=headers)
        rebuilt.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key, self.session_token),
                           "bedrock", self.region)
        canonical = signer.canonical_request(rebuilt)
        expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
        if expected != parts["Signature"]:
            why = ("The request signature we calculated does not match the signature you "
                   "provided.")
            # As AWS does: the canonical request (session token included) and string to sign.
            self.said[why] = (
                f"{why} Check your AWS Secret Access Key and signing method. Consult the "
                "service documentation for details.\n\nThe Canonical String for this request "
                f"should have been\n'{canonical}'\n\nThe String-to-Sign should have been\n"
                f"'{signer.string_to_sign(rebuilt, canonical)}'\n")
            return why
        return ""

    def _check_body(self, body: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("Malformed input request, please reformat your input and try "
                             "again.") from None
        if not isinstance(doc, dict):
            raise ValueError("Malformed input request: expected an object")
        for extraneous in ("model", "stream"):
            if extraneous in doc:
                raise ValueError(f"Malformed input request: #: extraneous key [{extraneous}] "
                                 "is not permitted, please reformat your input and try again.")
        version = doc.get("anthropic_version")
        # Claude Code sends "bedrock-2023-05-31"; the anthropic SDK 2.x sends its dated API
        # version (e.g. "2026-10-21") to Bedrock too.
        if version != BEDROCK_VERSION and not (isinstance(version, str)
                                               and re.fullmatch(r"\d{4}-\d{2}-\d{2}", version)):
            raise ValueError("Malformed input request: #/anthropic_version: "
                             f"{doc.get('anthropic_version')!r} is not a valid enum value")
        if not isinstance(doc.get("max_tokens"), int) or not isinstance(doc.get("messages"),
                                                                          list):
            raise ValueError("Malformed input request: #: required key [max_tokens] not found")
        betas = doc.get("anthropic_beta", [])
        if not isinstance(betas, list) or not all(isinstance(b, str) for b in betas):
            raise ValueError("Malformed input request: #/anthropic_beta: expected type: JSONArray")
        if any(b in self.behaviour.reject_betas for b in betas):
            raise ValueError("invalid beta flag")
        return doc

    def _count_tokens(self, body: bytes, rid: str) -> web.Response:
        try:
            inner = base64.b64decode(orjson.loads(body)["input"]["invokeModel"]["body"])
            self._check_body(inner)
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, "ValidationException", f"Malformed input request: {exc}", rid)
        return web.json_response({"inputTokens": len(inner) // 4}, headers={
            "x-amzn-RequestId": rid})

    async def _stream(self, request: web.Request, rid: str, msg_id: str, model: str,
                      doc: dict[str, Any]) -> web.StreamResponse:
        b = self.behaviour
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": rid,
            "X-Amzn-Bedrock-Content-Type": "application/json"})
        await response.prepare(request)
        events = [e for e in stream_events(msg_id, model.split("anthropic.")[-1], b.usage,
                                           b.text_chunks) if e["type"] != "ping"]
        usage = events[-2]["usage"]
        events[-1] = {**events[-1], "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": usage["input_tokens"], "outputTokenCount": usage["output_tokens"],
            "invocationLatency": 120, "firstByteLatency": 40}}
        for i, event in enumerate(events):
            await response.write(chunk_frame(event))
            if i == 0 and b.gap_ms:
                await asyncio.sleep(b.gap_ms / 1000)
            if i == 3 and b.fail == "drop-mid":
                request.transport.close()  # type: ignore[union-attr]
                return response
            if i == 3 and b.fail == "exception":
                await response.write(exception_frame(*b.exception))
                await response.write_eof()
                return response
        await response.write_eof()
        return response


def _error(status: int, name: str, message_text: str, rid: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"message": message_text}),
                        content_type="application/json",
                        headers={"x-amzn-ErrorType": name + _ERROR_NS, "x-amzn-RequestId": rid})
