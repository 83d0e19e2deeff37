"""meterd's own bearer tokens, for developers signed in through the device flow.

An access token is a short-lived JWT (ES256) that the admin process signs with a key pair it
keeps in the catalog. The public keys reach every proxy in the policy snapshot
(ledger/policy.py), so a proxy verifies a bearer without a database or Redis round trip. A
verified token is remembered per token string (bounded), so the hot path checks a signature
once per token rather than once per request; expiry, revocation and the developer's standing
are still checked on every request, against the clock and the snapshot.

The signature is made and checked by joserfc (a maintained JOSE library): it refuses `alg:
none` and any algorithm it is not told to accept, and we accept ES256 only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

ALG = "ES256"
# Claude Code reads the spend-notice headers for a JWT bearer with this audience (protocol).
AUDIENCE = "claude-gateway"
# A JWS in compact form starts with its base64url JSON header, `{"`: a cheap test that never
# matches a static gateway key (`mtd_…`).
TOKEN_PREFIX = "eyJ"
MAX_TOKEN_BYTES = 4096
_CACHE_LIMIT = 50_000  # verified tokens kept per process (~1 KB each at most)


class BearerRefused(Exception):
    """The bearer is not a token of ours (forged, malformed, or signed by a key this gateway
    does not hold): no retry will help. An unknown key is no key "not heard of yet": the
    signing key is published before the sign-in endpoints serve, and a token is handed out
    only once every proxy can have read the policy (dashboard/oauth.py)."""


@dataclass(frozen=True, slots=True)
class BearerClaims:
    sub: str  # the developer's id
    sid: str  # the sign-in it was issued to: what a revocation names
    exp: int
    kid: str
    email: str


def new_signing_key() -> ECKey:
    """A fresh P-256 key pair; its id is its RFC 7638 thumbprint, so one id is one key."""
    return ECKey.generate_key("P-256", auto_kid=True)


def load_signing_key(private_jwk: Mapping[str, Any]) -> ECKey:
    return ECKey.import_key(dict(private_jwk))


def public_jwk(key: ECKey) -> dict[str, Any]:
    return {**key.as_dict(private=False), "alg": ALG, "use": "sig"}


def public_keys(jwks: Mapping[str, Mapping[str, Any]]) -> dict[str, ECKey]:
    """The published public keys (kid → JWK), ready to verify with."""
    return {kid: ECKey.import_key(dict(jwk)) for kid, jwk in jwks.items()}


def issue(key: ECKey, *, issuer: str, developer_id: str, sid: str, email: str, ttl: int,
          billing_group_tag: str = "", now: float | None = None) -> tuple[str, int]:
    """A signed access token and its expiry (Unix seconds). With `billing_group_tag`, Claude
    Code puts the developer's `attributionProject` setting in each Messages body under that
    name in `tags` (protocol: only for a gateway that takes `tags` out before any upstream,
    as the proxy does for a signed-in developer)."""
    iat = int(time.time() if now is None else now)
    exp = iat + ttl
    claims: dict[str, Any] = {"iss": issuer, "aud": AUDIENCE, "sub": developer_id, "sid": sid,
                              "email": email, "iat": iat, "exp": exp}
    if billing_group_tag:
        claims["billing_group_tag"] = billing_group_tag
    token = jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key,
                       algorithms=[ALG])
    return token, exp


_verified: dict[str, BearerClaims] = {}


def verify(token: str, keys: Mapping[str, ECKey]) -> BearerClaims:
    """The claims of a token signed by one of `keys`, or BearerRefused. Does not look at the
    expiry: the caller compares `exp` with its clock on every use (a cached token expires
    too)."""
    found = _verified.get(token)
    if found is not None and found.kid in keys:
        return found
    claims = _check(token, keys)
    if len(_verified) >= _CACHE_LIMIT:
        del _verified[next(iter(_verified))]  # the oldest: tokens live minutes, not days
    _verified[token] = claims
    return claims


def _check(token: str, keys: Mapping[str, ECKey]) -> BearerClaims:
    if len(token) > MAX_TOKEN_BYTES:
        raise BearerRefused("bearer token is too long")
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError):
        raise BearerRefused("bearer token is malformed") from None
    if header.get("alg") != ALG:
        raise BearerRefused(f"bearer token algorithm {header.get('alg')!r} is not accepted")
    key = keys.get(str(header.get("kid", "")))
    if key is None:
        raise BearerRefused("bearer token is signed by a key this gateway does not know")
    try:
        claims = jwt.decode(token, key, algorithms=[ALG]).claims
    except (JoseError, ValueError):
        raise BearerRefused("bearer token signature is not valid") from None
    try:
        aud = claims["aud"]
        if aud != AUDIENCE and not (isinstance(aud, list) and AUDIENCE in aud):
            raise BearerRefused("bearer token is not for this gateway")
        return BearerClaims(str(claims["sub"]), str(claims["sid"]), int(claims["exp"]),
                            str(header["kid"]), str(claims.get("email", "")))
    except (KeyError, TypeError, ValueError):
        raise BearerRefused("bearer token lacks the claims of a meterd token") from None
