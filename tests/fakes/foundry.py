"""A fake Microsoft Entra ID token endpoint and a fake Claude on Foundry that trusts it.

Entra (https on loopback: azure-identity refuses any other authority) answers the client
credentials grant for one service principal with an RS256 JWT for the audience the scope
names, signed with its own key, as Entra does. Foundry serves the Anthropic Messages API
under `/anthropic` and accepts a Bearer token only if its signature checks against Entra's
key, its audience is Cognitive Services and it has not expired; anything else is a 401 in
Azure's error shape.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from tests.fakes.events import message, stream_events

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0b1f2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
CLIENT_SECRET = "entra-test-secret~0123456789"
AUDIENCE = "https://cognitiveservices.azure.com"


@dataclass
class EntraBehaviour:
    token_lifetime: int = 3600
    audience: str = AUDIENCE  # the `aud` it signs (a wrong one: a token for something else)
    forge: bool = False  # sign with a key Foundry does not trust


class FakeEntra:
    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "entra-1"})
        self._forger = RSAKey.generate_key(2048, parameters={"kid": "entra-1"})
        self.behaviour = EntraBehaviour()
        self.requests: list[dict[str, str]] = []  # token request forms as received
        self.issued: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        return app

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        if request.match_info["tenant"] != TENANT:
            return _entra_error(400, "invalid_request", "AADSTS90002: Tenant not found.")
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != CLIENT_ID:
            return _entra_error(400, "unauthorized_client", "AADSTS700016: no such app.")
        if form.get("client_secret") != CLIENT_SECRET:
            return _entra_error(401, "invalid_client", "AADSTS7000215: Invalid client secret.")
        if form.get("scope") != AUDIENCE + "/.default":
            return _entra_error(400, "invalid_scope", "AADSTS70011: invalid scope.")
        b = self.behaviour
        now = int(time.time())
        claims = {"aud": b.audience, "iss": f"https://sts.windows.net/{TENANT}/",
                  "appid": CLIENT_ID, "tid": TENANT, "iat": now, "nbf": now,
                  "exp": now + b.token_lifetime, "jti": f"t{len(self.issued)}"}
        token = jwt.encode({"alg": "RS256", "typ": "JWT", "kid": "entra-1"}, claims,
                           self._forger if b.forge else self.key)
        self.issued.append(token)
        return web.json_response({"token_type": "Bearer", "expires_in": b.token_lifetime,
                                  "ext_expires_in": b.token_lifetime, "access_token": token})


class FakeFoundry:
    def __init__(self, entra: FakeEntra, api_key: str = "") -> None:
        self.entra, self.api_key = entra, api_key
        self.usage: dict[str, Any] = {}
        self.recorded: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.accepted: list[str] = []  # the bearer tokens it served
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/anthropic/v1/messages", self.messages)
        app.router.add_post("/anthropic/v1/messages/count_tokens", self.count_tokens)
        return app

    def _refusal(self, request: web.Request) -> str:
        """Why the request's credential is refused ("" if it is not)."""
        if self.api_key and request.headers.get("api-key",
                                                request.headers.get("x-api-key")) == self.api_key:
            return ""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return "no bearer token"
        try:
            token = jwt.decode(auth[7:], self.entra.key, algorithms=["RS256"])
            jwt.JWTClaimsRegistry(aud={"essential": True, "value": AUDIENCE},
                                  exp={"essential": True}).validate(token.claims)
        except (JoseError, ValueError) as exc:
            return f"bad token: {exc!r}"
        self.accepted.append(auth[7:])
        return ""

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.recorded.append({"path": request.raw_path, "headers": dict(request.headers),
                              "body": body})
        if why := self._refusal(request):
            self.rejected.append(why)
            return _azure_error(401, "Access denied due to invalid subscription key or wrong "
                                     "API endpoint, or an invalid or expired token.")
        doc = orjson.loads(body)
        msg_id, model = f"msg_fdry_{next(self._ids)}", doc["model"]
        if doc.get("stream") is not True:
            return web.json_response(message(msg_id, model, self.usage, 4))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in stream_events(msg_id, model, self.usage, 4):
            await response.write(b"event: " + event["type"].encode() + b"\ndata: "
                                 + orjson.dumps(event) + b"\n\n")
        await response.write_eof()
        return response

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await request.read()
        if why := self._refusal(request):
            self.rejected.append(why)
            return _azure_error(401, "Access denied due to an invalid or expired token.")
        return web.json_response({"input_tokens": len(body) // 4})


def _entra_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description},
                             status=status)


def _azure_error(status: int, text: str) -> web.Response:
    return web.json_response({"error": {"code": str(status), "message": text}}, status=status)


def loopback_tls(directory: Path) -> tuple[ssl.SSLContext, bytes]:
    """A server context for 127.0.0.1 (a leaf signed by a fresh test CA) and that CA's PEM,
    which the client side must trust."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name,
             signer: rsa.RSAPrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meterd test CA")])
    ca_cert = cert("meterd test CA", ca_key, ca_name, ca_key, ca=True)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = cert("127.0.0.1", leaf_key, ca_name, ca_key, ca=False)
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    return context, ca_cert.public_bytes(serialization.Encoding.PEM)
