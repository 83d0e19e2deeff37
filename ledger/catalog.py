"""Teams, developers, keys, budgets and rate limits: durable in DuckDB, mirrored to Redis.

DuckDB is the source of truth. After every change the whole policy is re-published to Redis
in one transaction with a version bump (it is small: one row per key, budget and limit), so
the mirror can never drift from the catalog and a proxy starting on an empty Redis gets it all.
Every change is written to `admin_audit` with its actor, before and after.
"""

from __future__ import annotations

import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from ledger import grants
from ledger.keyspace import KeySpace
from ledger.managed import ManagedSettings
from ledger.model_caps import ModelCaps
from ledger.models_allowed import AllowedModels
from ledger.periods import PERIODS, local_day
from ledger.policy import KEY_PREFIX, hash_key
from ledger.signins import SignIns

BUDGET_SCOPES = ("developer", "team", "team_member", "org")
BUDGET_MODES = ("estimate", "strict")
LIMIT_FIELDS = ("rpm", "itpm", "otpm", "concurrency")


class CatalogError(ValueError):
    """A management request that cannot be done; the message says why."""


def check_cap(scope: str, period: str, mode: str) -> None:
    """The scope, period and mode every cap takes: a budget, or a per-model cap."""
    if scope not in BUDGET_SCOPES:
        raise CatalogError(f"budget scope must be one of {', '.join(BUDGET_SCOPES)}")
    if period not in PERIODS:
        raise CatalogError(f"budget period must be one of {', '.join(PERIODS)}")
    if mode not in BUDGET_MODES:
        raise CatalogError(f"budget mode must be one of {', '.join(BUDGET_MODES)}")


class NotFound(CatalogError):
    """The team, developer, key or budget named does not exist."""


@dataclass(frozen=True)
class IssuedKey:
    id: str
    developer_id: str
    secret: str  # shown once, never stored
    display: str
    expires_at: datetime | None
    label: str = ""


def connect(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Open (creating) the DuckDB file and make sure the schema exists."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(path))
    for schema in sorted(Path(__file__).parent.glob("*.sql")):
        conn.execute(schema.read_text())
    return conn


def _new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(5)}"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Catalog:
    """Management operations on one DuckDB connection. Thread-safe (one lock)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.lock:
            cur = self.conn.execute(sql, list(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def teams(self, archived: bool = False) -> list[dict[str, Any]]:
        """The teams (with `archived`, the archived ones too) and their current members."""
        return self._rows(
            "SELECT t.id, t.name, t.created_at, count(d.id) AS members, t.archived_at "
            "FROM teams t LEFT JOIN developers d ON d.team_id = t.id AND d.archived_at IS NULL "
            + ("" if archived else "WHERE t.archived_at IS NULL ")
            + "GROUP BY ALL ORDER BY t.name"
        )

    def developers(self, team: str | None = None, archived: bool = False) -> list[dict[str, Any]]:
        """The developers (with `archived`, the archived ones too), of one team or all."""
        sql = ("SELECT d.id, d.name, d.email, d.team_id, t.name AS team_name, d.disabled, "
               "d.created_at, d.archived_at FROM developers d LEFT JOIN teams t ON "
               "t.id = d.team_id WHERE " + ("true" if archived else "d.archived_at IS NULL"))
        if team is None:
            return self._rows(sql + " ORDER BY d.name")
        return self._rows(sql + " AND d.team_id = ? ORDER BY d.name", [self.team_id(team)])

    def keys(self, developer: str | None = None) -> list[dict[str, Any]]:
        """Keys (never their secrets) with their label, who revoked them, and what they were
        used for as far as the rollup has counted (no request yet: 0 and no time)."""
        sql = ("SELECT k.id, k.developer_id, d.name AS developer_name, k.display, k.label, "
               "k.created_at, k.expires_at, k.revoked_at, k.revoked_by, u.last_used_at, "
               "coalesce(u.requests, 0) AS requests, coalesce(u.cost_micros, 0) AS spent_micros "
               "FROM api_keys k JOIN developers d ON d.id = k.developer_id "
               "LEFT JOIN key_usage u ON u.key_id = k.id")
        if developer is None:
            return self._rows(sql + " ORDER BY k.created_at")
        return self._rows(sql + " WHERE k.developer_id = ? ORDER BY k.created_at",
                          [self.developer_id(developer)])

    def budgets(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM budgets ORDER BY scope, scope_id, period")

    def rate_limits(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM rate_limits ORDER BY scope, scope_id")

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        return self._rows('SELECT * FROM admin_audit ORDER BY "at" DESC, id DESC LIMIT ?',
                          [limit])

    def team_id(self, ref: str) -> str:
        rows = self._rows("SELECT id FROM teams WHERE id = ? OR name = ?", [ref, ref])
        if not rows:
            raise NotFound(f"no team {ref!r}")
        return str(rows[0]["id"])

    def developer_id(self, ref: str) -> str:
        rows = self._rows("SELECT id FROM developers WHERE id = ? OR email = ? OR name = ?",
                          [ref, ref, ref])
        if not rows:
            raise NotFound(f"no developer {ref!r}")
        if len(rows) > 1:
            raise CatalogError(f"{ref!r} names several developers; use the id or email")
        return str(rows[0]["id"])

    # -- changing --------------------------------------------------------------------------

    def _audit(self, actor: str, action: str, target: str, before: Any, after: Any) -> None:
        self.conn.execute(
            "INSERT INTO admin_audit VALUES (nextval('audit_seq'), ?, ?, ?, ?, ?, ?)",
            [_now(), actor, action, target, _json(before), _json(after)],
        )

    def record(self, actor: str, action: str, target: str, after: Any = None) -> None:
        """Audit an admin action that changes no catalog row (e.g. a providers reload)."""
        with self.lock:
            self._audit(actor, action, target, None, after)

    def create_team(self, name: str, actor: str = "cli") -> dict[str, Any]:
        name = check_name(name, "team name")
        with self.lock:
            if self._rows("SELECT 1 FROM teams WHERE name = ?", [name]):
                raise CatalogError(f"a team named {name!r} already exists")
            row: dict[str, Any] = {"id": _new_id("team"), "name": name, "created_at": _now()}
            self.conn.execute("INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)",
                              list(row.values()))
            self._audit(actor, "team.create", row["id"], None, row)
        return row

    def create_developer(self, name: str, email: str, team: str,
                         actor: str = "cli") -> dict[str, Any]:
        name = check_name(name, "developer name")
        email = check_name(email, "developer email", limit=320).lower()
        if "@" not in email:
            raise CatalogError(f"{email!r} is not an email address")
        with self.lock:
            team_id = self.team_id(team)
            if self._rows("SELECT 1 FROM teams WHERE id = ? AND archived_at IS NOT NULL",
                          [team_id]):
                raise CatalogError("the team is archived: pick a current team")
            if self._rows("SELECT 1 FROM developers WHERE email = ?", [email]):
                raise CatalogError(f"a developer with email {email!r} already exists")
            row: dict[str, Any] = {"id": _new_id("dev"), "name": name, "email": email,
                                   "team_id": team_id, "disabled": False, "created_at": _now()}
            self.conn.execute("INSERT INTO developers (id, name, email, team_id, disabled, "
                              "created_at) VALUES (?, ?, ?, ?, ?, ?)", list(row.values()))
            self.conn.execute("INSERT INTO memberships VALUES (?, ?, ?, NULL)",
                              [row["id"], team_id, local_day(row["created_at"])])
            self._audit(actor, "developer.create", row["id"], None, row)
        return row

    def issue_key(self, developer: str, expires_at: datetime | None = None,
                  actor: str = "cli", label: str = "") -> IssuedKey:
        """A new random key for a developer. The secret is returned once and never stored.
        `label` says what it is for ("laptop", "CI")."""
        label = check_name(label, "key label", limit=100, required=False)
        with self.lock:
            dev_id = self.developer_id(developer)
            secret = KEY_PREFIX + secrets.token_urlsafe(32)
            key = IssuedKey(_new_id("key"), dev_id, secret, secret[:8] + "…" + secret[-4:],
                            expires_at, label)
            expiry = expires_at.astimezone(UTC).replace(tzinfo=None) if expires_at else None
            self.conn.execute(
                "INSERT INTO api_keys (id, developer_id, hash, display, created_at, expires_at, "
                "label) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key.id, dev_id, hash_key(secret), key.display, _now(), expiry, label],
            )
            self._audit(actor, "key.issue", key.id, None,
                        {"developer_id": dev_id, "display": key.display, "expires_at": expiry,
                         "label": label})
        return key

    def _key(self, key_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT id, developer_id, display, label, expires_at, revoked_at, "
                          "revoked_by FROM api_keys WHERE id = ?", [key_id])
        if not rows:
            raise NotFound(f"no key {key_id!r}")
        return rows[0]

    def revoke_key(self, key_id: str, actor: str = "cli") -> dict[str, Any]:
        with self.lock:
            before = self._key(key_id)
            if before["revoked_at"] is None:
                self.conn.execute("UPDATE api_keys SET revoked_at = ?, revoked_by = ? "
                                  "WHERE id = ?", [_now(), actor, key_id])
            after = self._key(key_id)
            self._audit(actor, "key.revoke", key_id, before, after)
        return after

    def expire_key(self, key_id: str, when: datetime, actor: str = "cli") -> dict[str, Any]:
        with self.lock:
            before = self._key(key_id)
            self.conn.execute("UPDATE api_keys SET expires_at = ? WHERE id = ?",
                              [when.astimezone(UTC).replace(tzinfo=None), key_id])
            after = self._key(key_id)
            self._audit(actor, "key.expire", key_id, before, after)
        return after

    def set_budget(self, scope: str, ref: str, period: str, amount_micros: int,
                   mode: str = "estimate", actor: str = "cli") -> dict[str, Any]:
        """Create or replace the cap of one scope and period (several periods may coexist)."""
        check_cap(scope, period, mode)
        if amount_micros < 0:
            raise CatalogError("a budget cannot be negative")
        with self.lock:
            scope_id = self._scope_id(scope, ref)
            found = self._rows("SELECT * FROM budgets WHERE scope = ? AND scope_id = ? AND "
                               "period = ?", [scope, scope_id, period])
            before = found[0] if found else None
            budget_id = before["id"] if before else _new_id("bud")
            self.conn.execute("DELETE FROM budgets WHERE id = ?", [budget_id])
            self.conn.execute("INSERT INTO budgets VALUES (?, ?, ?, ?, ?, ?, ?)",
                              [budget_id, scope, scope_id, period, amount_micros, mode, _now()])
            after = self._rows("SELECT * FROM budgets WHERE id = ?", [budget_id])[0]
            self._audit(actor, "budget.set", budget_id, before, after)
        return after

    def delete_budget(self, budget_id: str, actor: str = "cli") -> None:
        with self.lock:
            found = self._rows("SELECT * FROM budgets WHERE id = ?", [budget_id])
            if not found:
                raise NotFound(f"no budget {budget_id!r}")
            self.conn.execute("DELETE FROM budgets WHERE id = ?", [budget_id])
            self._audit(actor, "budget.delete", budget_id, found[0], None)

    def set_limits(self, scope: str, ref: str, actor: str = "cli",
                   **values: int | None) -> dict[str, Any]:
        """Set rate limits of a developer or team; a value of 0 removes that limit."""
        if scope not in ("developer", "team"):
            raise CatalogError("rate limits apply to a developer or a team")
        unknown = set(values) - set(LIMIT_FIELDS)
        if unknown:
            raise CatalogError(f"unknown rate limit {sorted(unknown)[0]!r}")
        with self.lock:
            scope_id = self._scope_id(scope, ref)
            found = self._rows("SELECT * FROM rate_limits WHERE scope = ? AND scope_id = ?",
                               [scope, scope_id])
            before = found[0] if found else None
            row = {f: (before or {}).get(f) or 0 for f in LIMIT_FIELDS}
            for name, value in values.items():
                if value is not None:
                    if value < 0:
                        raise CatalogError(f"rate limit {name} cannot be negative")
                    row[name] = value
            self.conn.execute("DELETE FROM rate_limits WHERE scope = ? AND scope_id = ?",
                              [scope, scope_id])
            self.conn.execute("INSERT INTO rate_limits VALUES (?, ?, ?, ?, ?, ?)",
                              [scope, scope_id, *row.values()])
            after = {"scope": scope, "scope_id": scope_id, **row}
            self._audit(actor, "limits.set", f"{scope}:{scope_id}", before, after)
        return after

    def _scope_id(self, scope: str, ref: str) -> str:
        if scope == "org":
            return ""
        return self.developer_id(ref) if scope == "developer" else self.team_id(ref)

    # -- the Redis mirror ------------------------------------------------------------------

    def policy_documents(self) -> dict[str, dict[str, bytes]]:
        """The policy as the proxies read it: hash name → field → JSON."""
        keys = self._rows("SELECT id, developer_id, hash, expires_at, revoked_at FROM api_keys")
        devs = self._rows("SELECT id, name, team_id, disabled FROM developers")
        return {
            "keys": {k["hash"]: orjson.dumps({
                "id": k["id"], "developer_id": k["developer_id"],
                "expires_at": int(k["expires_at"].replace(tzinfo=UTC).timestamp())
                if k["expires_at"] else 0,
                "revoked": k["revoked_at"] is not None}) for k in keys},
            "devs": {d["id"]: orjson.dumps({"name": d["name"], "team_id": d["team_id"],
                                            "disabled": d["disabled"]}) for d in devs},
            "teams": {t["id"]: orjson.dumps({"name": t["name"]}) for t in self.teams()},
            "budgets": {b["id"]: orjson.dumps({
                "scope": b["scope"], "scope_id": b["scope_id"], "period": b["period"],
                "amount": b["amount_micros"], "mode": b["mode"]}) for b in self.budgets()}
            | ModelCaps(self).mirror(),
            "limits": {f"{r['scope']}:{r['scope_id']}": orjson.dumps(
                {f: r[f] for f in LIMIT_FIELDS}) for r in self.rate_limits()},
            "tokens": SignIns(self).mirror(time.time()),
            "managed": ManagedSettings(self).mirror(),
            "models": AllowedModels(self).mirror(),
            "grants": grants.mirror(self),
        }


def queue_publish(pipe: Any, keyspace: KeySpace, docs: dict[str, dict[str, bytes]]) -> None:
    """Queue the full policy replacement on a (sync or async) transactional pipeline."""
    for name, key in keyspace.policy_hashes.items():
        # Not pipe.delete: on redis-py's Cluster pipeline that is a coroutine, so unawaited it
        # would queue nothing and the old fields would stay.
        pipe.execute_command("DEL", key)
        if docs[name]:
            pipe.hset(key, mapping=docs[name])
    pipe.incr(keyspace.policy_version)


# Control characters (Unicode Cc: C0, DEL, C1 with NEL) and the line and paragraph
# separators: what can end a header line, a log line or a CSV row early.
_FORBIDDEN_CATEGORIES = ("Cc", "Zl", "Zp")


def check_name(value: str, what: str, limit: int = 200, required: bool = True) -> str:
    """A name (of a team, developer, account, key label…) as it is stored: trimmed, at most
    `limit` characters (at least one when `required`), and no control character or line
    break, which would break the headers, logs and exports it is written into. Every path
    that creates a name (dashboard form, admin API, CLI) comes through here; CatalogError
    (a 400, or the form's error) says what is wrong."""
    value = value.strip()
    if len(value) > limit or (required and not value):
        raise CatalogError(f"a {what} has {1 if required else 0} to {limit} characters")
    bad = next((c for c in value if unicodedata.category(c) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        raise CatalogError(f"a {what} cannot hold control characters or line breaks "
                           f"(U+{ord(bad):04X})")
    return value


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()
