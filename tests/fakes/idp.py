"""A small OpenID Connect provider for tests, on loopback: discovery, JWKS, authorize (code
flow, PKCE S256 required), token (authorization code and refresh), userinfo. ID tokens are
RS256 and carry a `groups` claim.

The provider's browser session is `current`: /authorize signs that user in at once, as an IdP
does for someone already signed in. Tests change `users` between calls (drop a group, disable
someone) and the next token or refresh answers with what is true then, as real providers do.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

CLIENT_ID = "meterd-test-client"
CLIENT_SECRET = "idp-test-secret-0123456789abcdef"


@dataclass
class IdpUser:
    sub: str
    email: str
    name: str
    groups: list[str] = field(default_factory=list)
    active: bool = True
    email_verified: bool = True


@dataclass
class _Code:
    sub: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    scope: str
    at: float


class FakeIdP:
    def __init__(self, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.issuer = ""  # set once the server listens
        self.key = RSAKey.generate_key(2048, parameters={"kid": "idp-1", "use": "sig"})
        self.users: dict[str, IdpUser] = {}
        self.current: str | None = None
        self.token_ttl = 3600
        self.codes: dict[str, _Code] = {}
        self.refresh: dict[str, str] = {}  # refresh token -> sub
        self.access: dict[str, str] = {}  # access token -> sub
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, params) as received
        # For tests of the relying party: claims to overwrite in the next ID tokens, and a key
        # (not in the JWKS) to sign them with instead of ours.
        self.id_token_overrides: dict[str, Any] = {}
        self.sign_with: RSAKey | None = None

    def add_user(self, sub: str, email: str, groups: list[str] | None = None,
                 name: str = "") -> IdpUser:
        user = IdpUser(sub, email, name or email.split("@")[0].title(), list(groups or []))
        self.users[sub] = user
        return user

    def sign_in(self, sub: str) -> None:
        """The browser's session at the provider is now this user's."""
        self.current = sub

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/userinfo", self.userinfo)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        iss = self.issuer
        return web.json_response({
            "issuer": iss, "authorization_endpoint": f"{iss}/authorize",
            "token_endpoint": f"{iss}/token", "userinfo_endpoint": f"{iss}/userinfo",
            "jwks_uri": f"{iss}/jwks", "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile", "offline_access", "groups"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        })

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        self.requests.append(("/authorize", dict(q)))
        if q.get("client_id") != self.client_id or not q.get("redirect_uri"):
            return web.Response(status=400, text="unknown client or no redirect_uri")
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return web.Response(status=400, text="only the code flow with openid")
        if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) < 43:
            return web.Response(status=400, text="PKCE with S256 is required")
        if self.current is None or not self.users[self.current].active:
            return web.Response(status=401, text="nobody is signed in at the provider")
        code = secrets.token_urlsafe(24)
        self.codes[code] = _Code(self.current, q["redirect_uri"], q["code_challenge"],
                                 q.get("nonce"), q.get("scope", ""), time.time())
        params = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode(params)}")

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        cid, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            cid, _, secret = (unquote(part) for part in
                              base64.b64decode(auth[6:]).decode().partition(":"))
        return cid == self.client_id and secret == self.client_secret

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(("/token", {k: v for k, v in form.items()
                                         if k not in ("client_secret", "code_verifier")}))
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None or code.redirect_uri != form.get("redirect_uri") or \
                    time.time() - code.at > 600:
                return web.json_response({"error": "invalid_grant"}, status=400)
            verifier = form.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()) \
                .rstrip(b"=").decode()
            if challenge != code.challenge:
                return web.json_response({"error": "invalid_grant",
                                          "error_description": "PKCE verifier"}, status=400)
            return web.json_response(self._tokens(code.sub, code.nonce,
                                                  "offline_access" in code.scope.split()))
        if form.get("grant_type") == "refresh_token":
            sub = self.refresh.get(form.get("refresh_token", ""))
            if sub is None or sub not in self.users or not self.users[sub].active:
                return web.json_response({"error": "invalid_grant"}, status=400)
            return web.json_response(self._tokens(sub, None, True))
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    def _claims(self, user: IdpUser) -> dict[str, Any]:
        return {"sub": user.sub, "email": user.email, "email_verified": user.email_verified,
                "name": user.name, "groups": list(user.groups)}

    def id_token(self, sub: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "azp": self.client_id,
                  "iat": now, "nbf": now - 5, "exp": now + self.token_ttl, "auth_time": now,
                  **self._claims(self.users[sub]), **({"nonce": nonce} if nonce else {}),
                  **self.id_token_overrides}
        key = self.sign_with or self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid or "idp-1"}, claims, key)

    def _tokens(self, sub: str, nonce: str | None, offline: bool) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        self.access[access] = sub
        answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                  "expires_in": self.token_ttl,
                                  "id_token": self.id_token(sub, nonce)}
        if offline:
            refresh = secrets.token_urlsafe(24)
            self.refresh[refresh] = sub
            answer["refresh_token"] = refresh
        return answer

    async def userinfo(self, request: web.Request) -> web.Response:
        sub = self.access.get(request.headers.get("Authorization", "")[7:])
        if sub is None or not self.users[sub].active:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(self._claims(self.users[sub]))

