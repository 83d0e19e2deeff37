"""Who may use the dashboard and the admin API: local accounts, admin API keys, developers
signing in with their gateway key, and the throttle on sign-in attempts.

Signed-in sessions have a row in `dashboard_sessions` that their cookie names: ending a session
deletes its row, so it ends for every process that serves this DuckDB file at once.

Passwords are hashed with argon2id (argon2-cffi, RFC 9106 low-memory profile). Hashing and
verifying take a fifth of a second of CPU on purpose, so callers run them off the event loop
and off the DuckDB thread: `credentials()` reads the stored hash, `check_password()` verifies
it anywhere. Admin API keys, like gateway keys, are 256-bit random tokens, so one SHA-256 is a
safe stored form. Every change is written to `admin_audit` through the catalog, never with a
hash or a secret in it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import argon2
import duckdb
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from ledger.catalog import Catalog, CatalogError, NotFound, check_name
from ledger.policy import hash_key

USER_ROLES = ("admin", "finance")  # local accounts; team_lead comes from the group rules
# An admin API key acts as: rw → admin, ro → finance.
ADMIN_KEY_ROLES = {"rw": "admin", "ro": "finance"}
ADMIN_KEY_PREFIX = "mtda_"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; refuse absurd ones before spending CPU
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

# zxcvbn scores 0 to 4; 3 means "safely unguessable: moderate protection from an offline
# slow-hash scenario" (10^10 guesses or more), which is what a stolen argon2 hash would face.
MIN_STRENGTH = 3
_STRENGTH_CHARS = 72  # zxcvbn's own limit: its time grows steeply with length

_hasher = argon2.PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4
# Verified when the name is unknown, so an unknown name costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _script(name: str) -> str:
    return resources.files("dashboard").joinpath(name).read_text()


def hash_password(password: str, name: str = "") -> str:
    """An argon2id PHC string for a new password. Refused (CatalogError) when it is too short
    or long, only whitespace, or easy to guess: zxcvbn scores it against lists of common
    passwords, words and names, keyboard patterns, dates, and the account's `name`."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise CatalogError(f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if not password.strip():
        raise CatalogError("a password cannot be only spaces")
    verdict = zxcvbn(password[:_STRENGTH_CHARS], user_inputs=[name] if name else None)
    if verdict["score"] < MIN_STRENGTH:
        why = verdict["feedback"]["warning"].rstrip(".") or "it follows a common pattern"
        raise CatalogError(f"that password is too easy to guess ({why}); a few uncommon "
                           "words make a strong one")
    return _hasher.hash(password)


def rehash_password(password: str) -> str:
    """The same password under today's hash parameters (no rules: it passed them when set)."""
    return _hasher.hash(password)


def check_password(stored: str | None, password: str) -> bool:
    """True when `password` matches the stored hash; takes as long when there is none."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """The hash was made with weaker parameters than today's: store a new one at sign-in."""
    return _hasher.check_needs_rehash(stored)


def new_password() -> str:
    return secrets.token_urlsafe(15)


class Accounts:
    """Account operations on the catalog's connection, under the catalog's lock."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self.catalog._rows(sql, params)

    # -- dashboard users ---------------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        return self._rows("SELECT name, role, disabled, created_at, password_changed_at "
                          "FROM dashboard_users ORDER BY name")

    def has_users(self) -> bool:
        return bool(self._rows("SELECT 1 FROM dashboard_users LIMIT 1"))

    def credentials(self, name: str) -> dict[str, Any] | None:
        """The account with its password hash, or None (unknown or disabled)."""
        rows = self._rows("SELECT name, role, password_hash FROM dashboard_users "
                          "WHERE name = ? AND NOT disabled", [name])
        return rows[0] if rows else None

    def create_user(self, name: str, password: str, role: str, actor: str = "cli",
                    password_hash: str | None = None) -> dict[str, Any]:
        """A new account. Pass `password_hash` when it was computed off this thread."""
        name = check_name(name, "account name", limit=64)
        if not _NAME.match(name):
            raise CatalogError("an account name is 1 to 64 letters, digits or . _ @ - "
                               "(starting with a letter or digit)")
        if role not in USER_ROLES:
            raise CatalogError(f"an account role is one of {', '.join(USER_ROLES)}")
        stored = password_hash or hash_password(password, name)
        with self.catalog.lock:
            if self._rows("SELECT 1 FROM dashboard_users WHERE name = ?", [name]):
                raise CatalogError(f"an account named {name!r} already exists")
            now = _now()
            self.catalog.conn.execute("INSERT INTO dashboard_users VALUES (?, ?, ?, false, ?, ?)",
                                      [name, role, stored, now, now])
            row = self._user(name)
            self.catalog._audit(actor, "user.create", f"user:{name}", None, row)
        return row

    def _user(self, name: str) -> dict[str, Any]:
        rows = self._rows("SELECT name, role, disabled FROM dashboard_users WHERE name = ?",
                          [name])
        if not rows:
            raise NotFound(f"no account {name!r}")
        return rows[0]

    def set_password(self, name: str, password_hash: str, actor: str = "cli") -> None:
        """Store a new hash (from hash_password); ends every session of the account."""
        with self.catalog.lock:
            self._user(name)
            self.catalog.conn.execute(
                "UPDATE dashboard_users SET password_hash = ?, password_changed_at = ? "
                "WHERE name = ?", [password_hash, _now(), name])
            self._end_sessions_of(name)
            self.catalog._audit(actor, "user.password", f"user:{name}", None, None)

    def rehash(self, name: str, password_hash: str) -> None:
        """Same password, stronger hash: not a change anyone made, so not audited."""
        with self.catalog.lock:
            self.catalog.conn.execute(
                "UPDATE dashboard_users SET password_hash = ? WHERE name = ?",
                [password_hash, name])

    def set_disabled(self, name: str, disabled: bool, actor: str = "cli") -> dict[str, Any]:
        with self.catalog.lock:
            before = self._user(name)
            if disabled and before["role"] == "admin" and not before["disabled"]:
                admins = self._rows("SELECT count(*) AS n FROM dashboard_users "
                                    "WHERE role = 'admin' AND NOT disabled")[0]["n"]
                if admins <= 1:
                    raise CatalogError("this is the last enabled admin account")
            self.catalog.conn.execute("UPDATE dashboard_users SET disabled = ? WHERE name = ?",
                                      [disabled, name])
            if disabled:
                self._end_sessions_of(name)
            after = self._user(name)
            self.catalog._audit(actor, "user.disable" if disabled else "user.enable",
                                f"user:{name}", before, after)
        return after

    # -- signed-in sessions ------------------------------------------------------------------

    def start_session(self, kind: str, subject: str, key_id: str = "",
                      max_age: int = 12 * 3600, role: str = "", team_id: str = "",
                      developer_id: str = "") -> str:
        """Record a signed-in session (user, developer or sso) and return its id for the
        cookie. An sso session carries the role, team and developer its sign-in gave.
        Rows older than `max_age` seconds (the longest session) are pruned here."""
        session_id = secrets.token_urlsafe(24)
        with self.catalog.lock:
            now = _now()
            self.catalog.conn.execute("DELETE FROM dashboard_sessions WHERE created_at < ?",
                                      [now - timedelta(seconds=max_age)])
            self.catalog.conn.execute(
                "INSERT INTO dashboard_sessions (id, kind, subject, key_id, created_at, role, "
                "team_id, developer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [session_id, kind, subject, key_id, now, role, team_id, developer_id])
        return session_id

    def end_session(self, session_id: str) -> None:
        """Sign-out: the cookie is refused from now on, wherever it was copied."""
        with self.catalog.lock:
            self.catalog.conn.execute("DELETE FROM dashboard_sessions WHERE id = ?",
                                      [session_id])

    def _end_sessions_of(self, name: str) -> None:
        self.catalog.conn.execute(
            "DELETE FROM dashboard_sessions WHERE kind = 'user' AND subject = ?", [name])

    def session_user(self, session_id: str, name: str) -> dict[str, Any] | None:
        """The enabled account a live session names (its name and role), or None. One
        point query per request, no cache: an ended session is refused at once."""
        rows = self._rows(
            "SELECT u.name, u.role FROM dashboard_sessions s JOIN dashboard_users u "
            "ON u.name = s.subject WHERE s.id = ? AND s.kind = 'user' AND s.subject = ? "
            "AND NOT u.disabled", [session_id, name])
        return rows[0] if rows else None

    def sso_session(self, session_id: str, email: str) -> dict[str, Any] | None:
        """The role, team and developer of a live single sign-on session, or None. A session
        of a developer since disabled or removed is refused, as a key session is."""
        rows = self._rows(
            "SELECT s.role, s.team_id, s.developer_id FROM dashboard_sessions s "
            "LEFT JOIN developers d ON d.id = s.developer_id WHERE s.id = ? AND "
            "s.kind = 'sso' AND s.subject = ? AND (s.developer_id = '' OR NOT d.disabled)",
            [session_id, email])
        return rows[0] if rows else None

    # -- developers, signing in with a gateway key ------------------------------------------

    _DEVELOPER_KEY_SQL = (
        "SELECT k.id AS key_id, k.display, d.id AS developer_id, d.name, d.email, d.team_id, "
        "t.name AS team_name FROM api_keys k JOIN developers d ON d.id = k.developer_id "
        "LEFT JOIN teams t ON t.id = d.team_id WHERE k.revoked_at IS NULL AND NOT d.disabled "
        "AND (k.expires_at IS NULL OR k.expires_at > ?) AND "
    )

    def developer_for_key(self, secret: str) -> dict[str, Any] | None:
        """The developer a live gateway key belongs to, or None."""
        rows = self._rows(self._DEVELOPER_KEY_SQL + "k.hash = ?", [_now(), hash_key(secret)])
        return rows[0] if rows else None

    def developer_session(self, session_id: str, developer_id: str,
                          key_id: str) -> dict[str, Any] | None:
        """The developer of a live self-service session while its key is still live."""
        rows = self._rows(
            self._DEVELOPER_KEY_SQL + "k.id = ? AND d.id = ? AND EXISTS (SELECT 1 FROM "
            "dashboard_sessions s WHERE s.id = ? AND s.kind = 'developer' AND s.subject = d.id "
            "AND s.key_id = k.id)", [_now(), key_id, developer_id, session_id])
        return rows[0] if rows else None

    # -- admin API keys ----------------------------------------------------------------------

    def admin_keys(self) -> list[dict[str, Any]]:
        return self._rows("SELECT id, role, label, display, created_by, created_at, revoked_at "
                          "FROM admin_api_keys ORDER BY created_at")

    def issue_admin_key(self, role: str, label: str = "",
                        actor: str = "cli") -> tuple[dict[str, Any], str]:
        """A new admin API key: (its row, the secret). The secret is shown once, never stored."""
        if role not in ADMIN_KEY_ROLES:
            raise CatalogError(f"an admin API key role is one of {', '.join(ADMIN_KEY_ROLES)}")
        label = check_name(label, "key label", required=False)
        secret = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = f"akey_{secrets.token_hex(5)}"
        with self.catalog.lock:
            self.catalog.conn.execute(
                "INSERT INTO admin_api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                [key_id, hash_key(secret), role, label, secret[:9] + "…" + secret[-4:], actor,
                 _now()])
            row = self._admin_key(key_id)
            self.catalog._audit(actor, "admin_key.issue", key_id, None, row)
        return row, secret

    def _admin_key(self, key_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT id, role, label, display, created_by, created_at, revoked_at "
                          "FROM admin_api_keys WHERE id = ?", [key_id])
        if not rows:
            raise NotFound(f"no admin API key {key_id!r}")
        return rows[0]

    def revoke_admin_key(self, key_id: str, actor: str = "cli") -> dict[str, Any]:
        with self.catalog.lock:
            before = self._admin_key(key_id)
            if before["revoked_at"] is None:
                self.catalog.conn.execute(
                    "UPDATE admin_api_keys SET revoked_at = ? WHERE id = ?", [_now(), key_id])
            after = self._admin_key(key_id)
            self.catalog._audit(actor, "admin_key.revoke", key_id, before, after)
        return after

    def admin_key_for(self, secret: str) -> dict[str, Any] | None:
        """The live admin API key presented, or None."""
        if not secret.startswith(ADMIN_KEY_PREFIX):
            return None
        rows = self._rows("SELECT id, role, label FROM admin_api_keys WHERE hash = ? "
                          "AND revoked_at IS NULL", [hash_key(secret)])
        return rows[0] if rows else None


def create_demo_admin(conn: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    """For `meterd serve --demo`: an admin account with a fresh random password."""
    password = new_password()
    Accounts(Catalog(conn)).create_user("admin", password, "admin", actor="demo")
    return "admin", password


class SignInThrottle:
    """Failed sign-ins per (account name, client address) with back-off, and per address.

    A name gets `free` tries from each address; after that each failure doubles the wait before
    the next try from that address (`backoff` seconds, up to `window`), and a `window` without
    a failure forgets them. So a guesser slows only themself: the account stays open from every
    other address. An address also has `per_address` failures per window across all names
    (against trying one password on many accounts). Successful sign-ins use up nothing.
    Both checks and counts are one Lua script each (signin_attempt.lua, signin_success.lua).
    """

    def __init__(self, redis: Any, base: str, free: int = 5, per_address: int = 30,
                 window: int = 900, backoff: int = 15) -> None:
        self.base = base
        self.free, self.per_address, self.window, self.backoff = free, per_address, window, \
            backoff
        self._attempt = redis.register_script(_script("signin_attempt.lua"))
        self._success = redis.register_script(_script("signin_success.lua"))

    def _keys(self, address: str, name: str) -> list[str]:
        keys = [self._key("addr", address)]
        if name:
            keys.append(self._key("pair", f"{name.strip().lower()}\n{address}"))
        return keys

    def _key(self, kind: str, value: str) -> str:
        digest = hashlib.sha256(value.encode()).hexdigest()[:24]
        return f"{self.base}:signin:{kind}:{digest}"

    async def attempt(self, address: str, name: str = "", now: int | None = None) -> int:
        """Count one attempt before checking it; 0 to go ahead, else the seconds to wait."""
        wait = await self._attempt(keys=self._keys(address, name), args=[
            int(time.time()) if now is None else now, self.per_address, self.window,
            self.free, self.backoff])
        return int(wait)

    async def succeeded(self, address: str, name: str = "") -> None:
        """The attempt was right: hand it back and forget the name's failures from there."""
        await self._success(keys=self._keys(address, name))
