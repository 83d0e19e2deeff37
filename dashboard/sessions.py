"""Dashboard sessions: a signed cookie, HttpOnly and SameSite=Lax, that names who signed in.

The cookie holds a small JSON document and an HMAC-SHA256 over it; nothing in it is secret,
but nothing in it can be changed without the key. It carries the CSRF token of the session
(anonymous visitors get one too, so the sign-in form is protected), when it was issued, and
once signed in the id of its server-side record (dashboard.accounts): signing out, disabling the
account or changing its password deletes the record, so a copied cookie stops working too.
Who the session names is re-checked against the catalog on every request (a disabled account
or a revoked key ends it at once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import orjson
from aiohttp import web

COOKIE = "meterd_session"
FLASH_COOKIE = "meterd_flash"
SECRET_FILE = "session.secret"
MAX_AGE = 12 * 3600  # a signed-in session ends after this, whatever happens
ANONYMOUS_MAX_AGE = 3600


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The signing key: the configured secret, else one generated once into the data dir
    (0600), so sessions survive a restart without anyone having to set one."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if len(value) < 32:
            raise RuntimeError(f"{path} holds no usable session secret; delete it") from None
        return value.encode()
    with os.fdopen(fd, "w") as f:
        value = secrets.token_hex(32)
        f.write(value + "\n")
    return value.encode()


@dataclass(frozen=True)
class Session:
    """kind: anonymous | user (an account) | developer (signed in with a gateway key)."""

    csrf: str
    issued: int
    kind: str = "anonymous"
    subject: str = ""  # account name or developer id
    key_id: str = ""  # developer sessions: the key used to sign in
    sid: str = ""  # signed-in sessions: the id of their row in dashboard_sessions

    @classmethod
    def anonymous(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(24), issued=int(time.time()))

    def signed_in(self, kind: str, subject: str, key_id: str = "", sid: str = "") -> Session:
        """A new session for whoever just signed in: fresh CSRF token, fresh clock."""
        return replace(Session.anonymous(), kind=kind, subject=subject, key_id=key_id, sid=sid)

    def expired(self, now: float | None = None) -> bool:
        limit = ANONYMOUS_MAX_AGE if self.kind == "anonymous" else MAX_AGE
        return (now or time.time()) - self.issued > limit


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(payload: bytes, secret: bytes, purpose: str) -> str:
    body = _b64(payload)
    mac = hmac.new(secret, f"{purpose}:{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(value: str, secret: bytes, purpose: str) -> bytes | None:
    body, _, mac = value.partition(".")
    expected = hmac.new(secret, f"{purpose}:{body}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), expected):
            return None
        return _unb64(body)
    except (ValueError, TypeError):
        return None


def encode(session: Session, secret: bytes) -> str:
    return sign(orjson.dumps(asdict(session)), secret, COOKIE)


def decode(value: str | None, secret: bytes) -> Session | None:
    """The session in a cookie value, or None when absent, tampered with or expired."""
    if not value:
        return None
    payload = unsign(value, secret, COOKIE)
    if payload is None:
        return None
    try:
        session = Session(**orjson.loads(payload))
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(session.csrf, str) or not isinstance(session.issued, int):
        return None
    return None if session.expired() else session


def store(response: web.StreamResponse, request: web.Request, session: Session,
          secret: bytes, path: str) -> None:
    """Set the session cookie on a response (scoped to the dashboard's path)."""
    response.set_cookie(
        COOKIE, encode(session, secret), path=path, httponly=True,
        samesite="Lax", secure=request.secure,
        max_age=ANONYMOUS_MAX_AGE if session.kind == "anonymous" else MAX_AGE)


def clear(response: web.StreamResponse, path: str) -> None:
    response.del_cookie(COOKIE, path=path)


def set_flash(response: web.StreamResponse, request: web.Request, secret: bytes, path: str,
              message: str, kind: str = "ok") -> None:
    """A one-time message for the next page (after a redirect): 'saved', or what went wrong."""
    value = sign(orjson.dumps({"m": message[:500], "k": kind}), secret, FLASH_COOKIE)
    response.set_cookie(FLASH_COOKIE, value, path=path, httponly=True,
                        samesite="Lax", secure=request.secure, max_age=60)


def pop_flash(request: web.Request, secret: bytes) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    payload = unsign(raw, secret, FLASH_COOKIE) if raw else None
    if payload is None:
        return None
    try:
        doc = orjson.loads(payload)
        return {"message": str(doc["m"]), "kind": str(doc["k"])}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
