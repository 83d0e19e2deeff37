"""The organization's OpenID Connect provider, as meterd's sign-in uses it: discovery, the
authorization code flow with PKCE (S256), ID tokens verified against the provider's JWKS, and
refresh (where the provider says whether someone may still sign in, and in which groups).

JOSE (the ID token's signature and claims) is joserfc's; the HTTP calls are aiohttp's. The
group rules decide, from the groups the provider lists, a developer's team and dashboard role.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

log = logging.getLogger("meterd.oidc")

ID_TOKEN_ALGS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
METADATA_TTL = 3600.0
JWKS_REFETCH = 60.0  # an unknown key id refetches the JWKS at most this often (rotation)
LEEWAY = 60  # seconds of clock skew tolerated on the provider's timestamps


class OidcError(Exception):
    """The provider cannot be used right now (unreachable, misconfigured, bad answer)."""


class ProviderRefused(OidcError):
    """The provider said no (an `error` answer, e.g. invalid_grant on refresh: the person was
    removed or their session ended there)."""


@dataclass(frozen=True)
class GroupRule:
    group: str
    team: str = ""
    role: str = ""  # admin, finance, team_lead or "" (none)


@dataclass(frozen=True)
class Placement:
    team: str  # "" when nothing maps this person to a team
    role: str  # "" when no rule gives them a dashboard role


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    groups_claim: str
    allowed_domains: tuple[str, ...]
    default_team: str
    rules: tuple[GroupRule, ...]
    allow_loopback: bool

    @classmethod
    def from_settings(cls, settings: Any) -> OidcConfig:
        """From meterd's Settings (read by attribute; the dashboard does not import meterd)."""
        return cls(
            issuer=settings.oidc_issuer.rstrip("/"), client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret, scopes=tuple(settings.oidc_scopes),
            groups_claim=settings.oidc_groups_claim,
            allowed_domains=tuple(d.lower().lstrip("@") for d in settings.oidc_allowed_domains),
            default_team=settings.oidc_default_team,
            rules=tuple(GroupRule(str(r["group"]), str(r.get("team", "")), str(r.get("role", "")))
                        for r in settings.oidc_group_rules),
            allow_loopback=settings.oidc_allow_loopback)

    @property
    def provider_name(self) -> str:
        return urlsplit(self.issuer).hostname or self.issuer

    def place(self, groups: list[str]) -> Placement:
        """The team of the first rule that names a team and matches, else the default team;
        the role of the first matching rule that names one."""
        held = set(groups)
        team = next((r.team for r in self.rules if r.team and r.group in held),
                    self.default_team)
        role = next((r.role for r in self.rules if r.role and r.group in held), "")
        return Placement(team, role)

    def domain_allowed(self, email: str) -> bool:
        domain = email.rpartition("@")[2].lower()
        return bool(domain) and (not self.allowed_domains or domain in self.allowed_domains)


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in."""

    issuer: str
    subject: str
    email: str
    name: str
    groups: list[str]
    refresh_token: str | None  # the provider's, for re-checking at each meterd refresh


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def secure_url(url: str, allow_loopback: bool) -> bool:
    """https, or plain http to a loopback address when that is allowed (development, tests):
    codes and tokens travel over these URLs."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not allow_loopback or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class OidcClient:
    """One provider, one aiohttp session (made by the caller's cleanup context)."""

    def __init__(self, config: OidcConfig, session: aiohttp.ClientSession) -> None:
        self.config, self.session = config, session
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self.session.get(url, headers={"Accept": "application/json"}) as r:
                if r.status != 200:
                    raise OidcError(f"{url} answered {r.status}")
                doc = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"cannot read {url}: {type(exc).__name__}") from None
        if not isinstance(doc, dict):
            raise OidcError(f"{url} did not answer a JSON object")
        return doc

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached an hour), checked: its issuer is the one
        configured, and every endpoint meterd uses is https (or loopback when allowed)."""
        if self._metadata is not None and time.monotonic() - self._metadata_at < METADATA_TTL:
            return self._metadata
        cfg = self.config
        doc = await self._get_json(f"{cfg.issuer}/.well-known/openid-configuration")
        if str(doc.get("issuer", "")).rstrip("/") != cfg.issuer:
            raise OidcError(f"the provider calls itself {doc.get('issuer')!r}, not {cfg.issuer!r}")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not secure_url(str(doc.get(name, "")), cfg.allow_loopback):
                raise OidcError(f"the provider's {name} {doc.get(name)!r} is not https")
        self._metadata, self._metadata_at = doc, time.monotonic()
        return doc

    async def _keys(self, kid: str | None) -> KeySet:
        stale = time.monotonic() - self._jwks_at >= JWKS_REFETCH
        known = self._jwks is not None and (kid is None or any(
            k.kid == kid for k in self._jwks.keys))
        jwks = self._jwks
        if jwks is None or (not known and stale):
            doc = await self._get_json(str((await self.metadata())["jwks_uri"]))
            try:
                jwks = self._jwks = KeySet.import_key_set(doc)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError) as exc:
                raise OidcError(f"the provider's JWKS cannot be read: {exc}") from None
            self._jwks_at = time.monotonic()
        return jwks

    async def authorization_url(self, redirect_uri: str, state: str, nonce: str,
                                challenge: str) -> str:
        endpoint = str((await self.metadata())["authorization_endpoint"])
        query = urlencode({
            "response_type": "code", "client_id": self.config.client_id,
            "redirect_uri": redirect_uri, "scope": " ".join(self.config.scopes),
            "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256"})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def exchange(self, code: str, verifier: str, redirect_uri: str,
                       nonce: str) -> Identity:
        """The identity behind an authorization code (its ID token verified, nonce included)."""
        answer = await self._token({"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": redirect_uri, "code_verifier": verifier})
        return await self._identity(answer, nonce, None)

    async def refresh(self, refresh_token: str, subject: str) -> Identity:
        """Ask the provider again; ProviderRefused when it will not refresh (removed,
        disabled, signed out there)."""
        answer = await self._token({"grant_type": "refresh_token",
                                    "refresh_token": refresh_token})
        answer.setdefault("refresh_token", refresh_token)  # providers that do not rotate
        return await self._identity(answer, None, subject)

    async def _token(self, form: dict[str, str]) -> dict[str, Any]:
        meta = await self.metadata()
        cfg = self.config
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        headers = {"Accept": "application/json"}
        if "client_secret_basic" in methods:
            # RFC 6749 §2.3.1: each part form-encoded, then HTTP Basic.
            pair = f"{quote(cfg.client_id, safe='')}:{quote(cfg.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form = {**form, "client_id": cfg.client_id, "client_secret": cfg.client_secret}
        try:
            async with self.session.post(str(meta["token_endpoint"]), data=form,
                                         headers=headers) as r:
                body = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"the provider's token endpoint failed: {type(exc).__name__}") \
                from None
        if not isinstance(body, dict):
            raise OidcError("the provider's token endpoint did not answer a JSON object")
        if status >= 500:
            raise OidcError(f"the provider's token endpoint answered {status}")
        if status != 200 or "error" in body:
            raise ProviderRefused(f"the provider refused: {body.get('error', status)}")
        return body

    async def _identity(self, answer: dict[str, Any], nonce: str | None,
                        subject: str | None) -> Identity:
        cfg = self.config
        raw = answer.get("id_token")
        if not isinstance(raw, str):
            if subject is None:
                raise OidcError("the provider answered without an ID token")
            claims = await self._userinfo(str(answer.get("access_token", "")))
        else:
            claims = await self._verify(raw, nonce)
        if subject is not None and claims.get("sub") != subject:
            raise ProviderRefused("the provider answered for someone else")
        if cfg.groups_claim not in claims and "access_token" in answer and \
                (await self.metadata()).get("userinfo_endpoint"):
            claims = {**await self._userinfo(str(answer["access_token"])), **claims}
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise ProviderRefused("the provider gave no email address")
        if claims.get("email_verified") is False:
            raise ProviderRefused(f"the provider has not verified {email}")
        groups = claims.get(cfg.groups_claim) or []
        if not isinstance(groups, list):
            groups = [groups]
        return Identity(cfg.issuer, str(claims["sub"]), email.lower(),
                        str(claims.get("name") or ""), [str(g) for g in groups],
                        answer.get("refresh_token") if isinstance(
                            answer.get("refresh_token"), str) else None)

    async def _verify(self, raw: str, nonce: str | None) -> dict[str, Any]:
        """An ID token's claims once its signature (the provider's JWKS) and claims (issuer,
        audience, expiry, nonce) hold."""
        cfg = self.config
        try:
            kid = jws.extract_compact(raw.encode()).headers().get("kid")
            token = jwt.decode(raw, await self._keys(kid), algorithms=list(ID_TOKEN_ALGS))
            options: dict[str, Any] = {
                "iss": {"essential": True, "value": cfg.issuer},
                "aud": {"essential": True, "value": cfg.client_id},
                "sub": {"essential": True}, "exp": {"essential": True}}
            if nonce is not None:
                options["nonce"] = {"essential": True, "value": nonce}
            JWTClaimsRegistry(leeway=LEEWAY, **options).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise ProviderRefused(f"the provider's ID token is not valid: {exc}") from None
        claims = dict(token.claims)
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != cfg.client_id:
            raise ProviderRefused("the provider's ID token is for another party (azp)")
        return claims

    async def _userinfo(self, access_token: str) -> dict[str, Any]:
        url = (await self.metadata()).get("userinfo_endpoint")
        if not url or not access_token:
            raise OidcError("the provider has no userinfo endpoint to ask")
        try:
            async with self.session.get(str(url), headers={
                    "Authorization": f"Bearer {access_token}",
                    "Accept": "application/json"}) as r:
                if r.status != 200:
                    raise ProviderRefused(f"the provider's userinfo answered {r.status}")
                doc = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"the provider's userinfo failed: {type(exc).__name__}") from None
        if not isinstance(doc, dict) or "sub" not in doc:
            raise OidcError("the provider's userinfo did not answer a subject")
        return doc
