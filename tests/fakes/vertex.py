"""A fake Vertex AI (Claude publisher models) with its own OAuth token endpoint.

The token endpoint checks the service account's signed JWT assertion (RS256, with the
account's public key) as Google's does and issues short-lived access tokens; the model
endpoints accept only those tokens, only for the configured project and region, and only
bodies in Vertex's form (`anthropic_version` "vertex-2023-10-16", model in the path).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.events import message, stream_events

VERTEX_VERSION = "vertex-2023-10-16"
CLIENT_EMAIL = "meterd-test@fake-project.iam.gserviceaccount.com"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def make_service_account(path: Path, token_uri: str, project: str) -> rsa.RSAPublicKey:
    """Write a service-account key file (a fresh RSA key) and return its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "k1",
        "private_key": pem, "client_email": CLIENT_EMAIL, "client_id": "1234567890",
        "token_uri": token_uri,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    }))
    return key.public_key()


@dataclass
class Behaviour:
    usage: dict[str, Any] = field(default_factory=dict)
    text_chunks: int = 6
    gap_ms: int = 0  # silence after message_start
    set_cookie: str = ""  # on every answer, as a provider's load balancer may
    status: int = 0  # answer model calls with this error (Google error format)
    message: str = "Vertex could not serve the request."  # that error's message
    envelope: bool = False  # that error in the Anthropic envelope (the model's own errors)
    # (error.type, message) of an `event: error` sent after the fourth event, ending the stream
    stream_error: tuple[str, str] | None = None
    token_lifetime: int = 3600


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class FakeVertex:
    def __init__(self, project: str, region: str, public_key: rsa.RSAPublicKey | None = None,
                 static_token: str = "") -> None:
        self.project, self.region = project, region
        self.public_key = public_key
        self.behaviour = Behaviour()
        self.tokens: dict[str, float] = {static_token: float("inf")} if static_token else {}
        self.token_requests = 0
        self.recorded: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self._ids = itertools.count(1)
        self.token_uri = ""  # set by the test once the server has a port

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_post(
            "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{tail}",
            self.predict)
        app.on_response_prepare.append(self._set_cookie)
        return app

    async def _set_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.behaviour.set_cookie:
            response.headers["Set-Cookie"] = self.behaviour.set_cookie

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            header_b64, claims_b64, signature_b64 = str(form["assertion"]).split(".")
            header, claims = orjson.loads(_b64(header_b64)), orjson.loads(_b64(claims_b64))
            assert header["alg"] == "RS256" and self.public_key is not None
            self.public_key.verify(_b64(signature_b64), f"{header_b64}.{claims_b64}".encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except Exception as exc:
            self.rejected.append(f"bad assertion: {exc!r}")
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "Invalid JWT Signature."}, status=400)
        now = time.time()
        # google-auth addresses the assertion to Google's token endpoint whatever token_uri is.
        if (claims.get("iss") != CLIENT_EMAIL or claims.get("aud") != GOOGLE_TOKEN_AUDIENCE
                or "cloud-platform" not in claims.get("scope", "") or claims["exp"] < now):
            self.rejected.append(f"bad claims: {claims}")
            return web.json_response({"error": "invalid_grant"}, status=400)
        token = f"ya29.fake-{next(self._ids)}"
        self.tokens[token] = now + self.behaviour.token_lifetime
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.behaviour.token_lifetime})

    async def predict(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.recorded.append({"path": request.raw_path, "headers": dict(request.headers),
                              "body": body})
        auth = request.headers.get("Authorization", "")
        expiry = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if expiry is None or expiry < time.time():
            self.rejected.append("bad token")
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                                 "credentials. Expected OAuth 2 access token.")
        info = request.match_info
        if (info["project"], info["region"]) != (self.project, self.region):
            self.rejected.append(f"wrong place {info['project']}/{info['region']}")
            return _google_error(403, "PERMISSION_DENIED", "Permission denied on resource "
                                 f"project {info['project']}.")
        model, _, method = info["tail"].partition(":")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if doc.get("anthropic_version") != VERTEX_VERSION:
            return _anthropic_error(400, "invalid_request_error",
                                    "anthropic_version: Input should be 'vertex-2023-10-16'")
        if model == "count-tokens" and method == "rawPredict":
            return web.json_response({"input_tokens": len(body) // 4})
        if method not in ("rawPredict", "streamRawPredict"):
            return _google_error(404, "NOT_FOUND", "Method not found.")
        if "model" in doc:
            return _anthropic_error(400, "invalid_request_error",
                                    "model: Extra inputs are not permitted")
        if not model.startswith("claude-"):
            return _google_error(404, "NOT_FOUND", f"Publisher model {model} not found.")
        b = self.behaviour
        if b.status:
            if b.envelope:
                return _anthropic_error(b.status, "invalid_request_error", b.message)
            status = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                      503: "UNAVAILABLE"}.get(b.status, "INTERNAL")
            return _google_error(b.status, status, b.message)
        msg_id = f"msg_vrtx_{next(self._ids)}"
        streaming = doc.get("stream") is True
        if streaming != (method == "streamRawPredict"):
            return _anthropic_error(400, "invalid_request_error",
                                    "stream must match the method (streamRawPredict)")
        if not streaming:
            return web.json_response(message(msg_id, model, b.usage, b.text_chunks))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(stream_events(msg_id, model, b.usage, b.text_chunks)):
            await response.write(b"event: " + event["type"].encode() + b"\ndata: "
                                 + orjson.dumps(event) + b"\n\n")
            if i == 0 and b.gap_ms:
                await asyncio.sleep(b.gap_ms / 1000)
            if i == 3 and b.stream_error is not None:
                kind, text = b.stream_error
                await response.write(b"event: error\ndata: " + orjson.dumps(
                    {"type": "error", "error": {"type": kind, "message": text}}) + b"\n\n")
                break
        await response.write_eof()
        return response


def _google_error(status: int, kind: str, text: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": text, "status": kind}},
                             status=status)


def _anthropic_error(status: int, kind: str, text: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": text}},
                             status=status)
