"""Developers who sign in through the organization's identity provider: provisioning them into
their team, their device sign-ins (refresh tokens, revocation), and the key pair meterd signs
their access tokens with.

Runs on the admin side, on the catalog's connection and under its lock, like dashboard/accounts.py.
Refresh tokens are 256-bit random strings, stored as their SHA-256 only. Every sign-in,
refresh, refusal and revocation is written to `admin_audit`, never with a token in it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from joserfc.jwk import ECKey

from ledger import tokens
from ledger.policy import hash_key

if TYPE_CHECKING:
    from ledger.catalog import Catalog

REFRESH_PREFIX = "mtdr_"


class SignInRefused(Exception):
    """This person may not sign in; the message says why, for the page they see."""


@dataclass(frozen=True)
class Provisioned:
    developer_id: str
    name: str
    email: str
    team_id: str
    team_name: str
    changed: bool  # the catalog changed (new developer, team or team move): publish


def _display_name(name: str, email: str) -> str:
    """The provider's name claim when it is a name meterd can store, else the email: the
    claim is only a label, and a line break or 300 characters in it must not stop a sign-in
    (nor reach the headers, logs and exports names are written into)."""
    from ledger.catalog import CatalogError, check_name  # here: ledger.catalog imports this

    try:
        return check_name(name, "developer name")
    except CatalogError:
        return email


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


class SignIns:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self.catalog._rows(sql, params)

    def _exec(self, sql: str, params: list[Any]) -> None:
        self.catalog.conn.execute(sql, params)

    # -- the signing key ---------------------------------------------------------------------

    def signing_key(self) -> ECKey:
        """The key new access tokens are signed with (made on first use)."""
        with self.catalog.lock:
            rows = self._rows("SELECT private_jwk FROM signing_keys ORDER BY created_at DESC "
                              "LIMIT 1")
            if rows:
                return tokens.load_signing_key(orjson.loads(rows[0]["private_jwk"]))
            key = tokens.new_signing_key()
            self._exec("INSERT INTO signing_keys VALUES (?, ?, ?)",
                       [key.kid, orjson.dumps(key.as_dict(private=True)).decode(), _now()])
            self.catalog._audit("meterd", "signing_key.create", str(key.kid), None,
                                {"kid": key.kid, "alg": tokens.ALG})
            return key

    def mirror(self, now: float) -> dict[str, bytes]:
        """The policy snapshot's `tokens` hash: the public keys, and the sign-ins revoked while
        one of their access tokens may still be unexpired."""
        keys = {}
        for row in self._rows("SELECT private_jwk FROM signing_keys"):
            key = tokens.load_signing_key(orjson.loads(row["private_jwk"]))
            keys[str(key.kid)] = tokens.public_jwk(key)
        revoked = self._rows("SELECT id, access_expires_at FROM signins WHERE revoked_at IS "
                             "NOT NULL AND access_expires_at > ?", [_naive(now)])
        return {"keys": orjson.dumps(keys), "revoked": orjson.dumps(
            {r["id"]: int(r["access_expires_at"].replace(tzinfo=UTC).timestamp())
             for r in revoked})}

    # -- provisioning ------------------------------------------------------------------------

    def provision(self, *, issuer: str, subject: str, email: str, name: str, team: str,
                  groups: list[str], actor: str) -> Provisioned:
        """The developer behind an identity, created on first sign-in and kept in `team` (made
        when missing) after that. A disabled developer is refused."""
        from ledger.catalog import CatalogError  # here: ledger.catalog imports this module

        email = email.strip().lower()
        catalog = self.catalog
        with catalog.lock:
            changed = False
            found = self._rows("SELECT id FROM teams WHERE name = ?", [team])
            if found:
                team_id = str(found[0]["id"])
            else:
                team_id = str(catalog.create_team(team, actor)["id"])
                changed = True
            dev = self._developer(issuer, subject, email)
            if dev is None:
                try:
                    dev = catalog.create_developer(_display_name(name, email), email, team_id,
                                                   actor)
                except CatalogError as exc:  # an email it cannot store (a control character)
                    raise SignInRefused(f"meterd cannot make a developer of this sign-in: "
                                        f"{exc}.") from None
                changed = True
            elif dev["disabled"]:
                raise SignInRefused(f"The developer account of {email} is disabled in meterd. "
                                    "Ask your meterd administrator.")
            elif dev["team_id"] != team_id:
                self._exec("UPDATE developers SET team_id = ? WHERE id = ?", [team_id, dev["id"]])
                catalog._audit(actor, "developer.team", dev["id"], {"team_id": dev["team_id"]},
                               {"team_id": team_id, "by": "group rules"})
                changed = True
            self._link(issuer, subject, dev["id"], email, groups)
            return Provisioned(dev["id"], dev["name"], dev["email"], team_id, team, changed)

    def _developer(self, issuer: str, subject: str, email: str) -> dict[str, Any] | None:
        sql = "SELECT id, name, email, team_id, disabled FROM developers WHERE "
        linked = self._rows(sql + "id = (SELECT developer_id FROM identities WHERE issuer = ? "
                                  "AND subject = ?)", [issuer, subject])
        if linked:
            return linked[0]
        by_email = self._rows(sql + "email = ?", [email])
        return by_email[0] if by_email else None

    def _link(self, issuer: str, subject: str, developer_id: str, email: str,
              groups: list[str]) -> None:
        now, groups_json = _now(), orjson.dumps(groups).decode()
        if self._rows("SELECT 1 FROM identities WHERE issuer = ? AND subject = ?",
                      [issuer, subject]):
            self._exec("UPDATE identities SET developer_id = ?, email = ?, groups = ?, "
                       "last_seen = ? WHERE issuer = ? AND subject = ?",
                       [developer_id, email, groups_json, now, issuer, subject])
        else:
            self._exec("INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [issuer, subject, developer_id, email, groups_json, now, now])

    def refused(self, email: str, reason: str, actor: str = "oidc") -> None:
        """Audit a sign-in that was turned away."""
        self.catalog.record(actor, "signin.denied", email or "(unknown)", {"reason": reason})

    # -- device sign-ins ---------------------------------------------------------------------

    def start(self, *, developer_id: str, issuer: str, subject: str, email: str,
              idp_refresh: str | None, surface: str, refresh_ttl: int,
              access_expires: int) -> tuple[str, str]:
        """A new sign-in: (its id, the refresh token, shown once)."""
        sid, refresh = f"sgn_{secrets.token_hex(8)}", REFRESH_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        expires = _naive(now.replace(tzinfo=UTC).timestamp() + refresh_ttl)
        with self.catalog.lock:
            self._exec("INSERT INTO signins VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, "
                       "NULL)",
                       [sid, developer_id, issuer, subject, email, hash_key(refresh),
                        idp_refresh, surface[:64], now, now, expires, _naive(access_expires)])
            self.catalog._audit(f"developer:{developer_id}", "signin.device", sid, None,
                                {"developer_id": developer_id, "email": email,
                                 "surface": surface[:64], "expires_at": expires})
        return sid, refresh

    def find(self, refresh: str) -> dict[str, Any] | None:
        """The sign-in whose current refresh token this is (with its developer's `disabled`).
        One rotated away is not found here: the token endpoint remembers those in Redis."""
        return self._signin("refresh_hash", hash_key(refresh))

    def get(self, sid: str) -> dict[str, Any] | None:
        """A sign-in by its id (with its developer's `disabled`)."""
        return self._signin("id", sid)

    def _signin(self, column: str, value: str) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT s.*, d.disabled FROM signins s LEFT JOIN developers d "
                          f"ON d.id = s.developer_id WHERE s.{column} = ?", [value])
        return rows[0] if rows else None

    def rotate(self, sid: str, refresh: str, idp_refresh: str | None,
               access_expires: int) -> str | None:
        """Swap the refresh token of a live sign-in for a new one (returned), or None when the
        presented one is no longer current or the sign-in was revoked meanwhile."""
        new = REFRESH_PREFIX + secrets.token_urlsafe(32)
        with self.catalog.lock:
            if not self._rows("SELECT 1 FROM signins WHERE id = ? AND refresh_hash = ? AND "
                              "revoked_at IS NULL", [sid, hash_key(refresh)]):
                return None
            self._exec("UPDATE signins SET refresh_hash = ?, "
                       "idp_refresh = coalesce(?, idp_refresh), refreshed_at = ?, "
                       "access_expires_at = ? WHERE id = ?",
                       [hash_key(new), idp_refresh, _now(), _naive(access_expires), sid])
            developer = self._rows("SELECT developer_id FROM signins WHERE id = ?", [sid])
            self.catalog._audit(f"developer:{developer[0]['developer_id']}", "signin.refresh",
                                sid, None, {"access_expires_at": _naive(access_expires)})
        return new

    def revoke(self, sid: str, reason: str, actor: str) -> bool:
        """End a sign-in: its refresh token stops working, and its access tokens with the next
        policy publish. True when it was live."""
        with self.catalog.lock:
            rows = self._rows("SELECT developer_id, revoked_at FROM signins WHERE id = ?", [sid])
            if not rows or rows[0]["revoked_at"] is not None:
                return False
            self._exec("UPDATE signins SET revoked_at = ?, revoked_reason = ? WHERE id = ?",
                        [_now(), reason[:200], sid])
            self.catalog._audit(actor, "signin.revoke", sid, None,
                                {"developer_id": rows[0]["developer_id"], "reason": reason})
            return True
