"""Managed settings per team: the `managed-settings.json` each signed-in Claude Code fetches
from GET /managed/settings. The organization's default applies to a team without its own; a
team's policy replaces it whole (an empty object is a policy too: "nothing is managed").

Kept in the catalog, mirrored into the policy snapshot with their checksum already computed,
so a proxy answers (and answers 304) from memory. The checksum is the protocol's: `sha256:` and
the hex SHA-256 of the settings as JSON with keys sorted at every level and no whitespace,
which is what Claude Code computes over the settings it holds and sends in If-None-Match.
"""

from __future__ import annotations

import difflib
import hashlib
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ledger.catalog import Catalog

MAX_BYTES = 256 * 1024
ORG = "org"


class SettingsInvalid(ValueError):
    """The settings document cannot be served; the message says what is wrong."""


class SettingsChanged(Exception):
    """Someone saved (or removed) the policy since the caller looked at it: saving now would
    overwrite a change the caller never saw. `current` is what is saved now (None: none)."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("the managed settings changed since you previewed them")
        self.current = current


def canonical(settings: dict[str, Any]) -> bytes:
    """Keys sorted at every level, no whitespace, UTF-8 as is (JSON.stringify's output)."""
    return orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)


def checksum(settings: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(settings)).hexdigest()


def validate(settings: Any) -> dict[str, Any]:
    """A settings document Claude Code can load: a JSON object whose `env` (when present) maps
    names to strings, of at most MAX_BYTES."""
    if not isinstance(settings, dict):
        raise SettingsInvalid("managed settings are a JSON object")
    if len(canonical(settings)) > MAX_BYTES:
        raise SettingsInvalid(f"managed settings are larger than {MAX_BYTES // 1024} KB")
    env = settings.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise SettingsInvalid('"env" maps variable names to strings')
    for name in ("permissions", "hooks"):
        if name in settings and not isinstance(settings[name], dict):
            raise SettingsInvalid(f'"{name}" is a JSON object')
    return settings


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class ManagedSettings:
    """Operations on the catalog's connection, under its lock; every change audited."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _scope(self, ref: str) -> tuple[str, str]:
        return (ORG, "") if ref == ORG else ("team", self.catalog.team_id(ref))

    def _row(self, scope: str, scope_id: str) -> dict[str, Any] | None:
        rows = self.catalog._rows("SELECT m.scope, m.scope_id, t.name AS team_name, m.uuid, "
                                  "m.settings, m.updated_at FROM managed_settings m LEFT JOIN "
                                  "teams t ON t.id = m.scope_id WHERE m.scope = ? AND "
                                  "m.scope_id = ?", [scope, scope_id])
        return _shown(rows[0]) if rows else None

    def all(self) -> list[dict[str, Any]]:
        rows = self.catalog._rows("SELECT m.scope, m.scope_id, t.name AS team_name, m.uuid, "
                                  "m.settings, m.updated_at FROM managed_settings m LEFT JOIN "
                                  "teams t ON t.id = m.scope_id ORDER BY m.scope, t.name")
        return [_shown(r) for r in rows]

    def get(self, ref: str) -> dict[str, Any] | None:
        """The policy of `org` or a team (id or name), or None."""
        return self._row(*self._scope(ref))

    def set(self, ref: str, settings: Any, actor: str = "cli",
            expected: str | None = None) -> dict[str, Any]:
        """Save a policy. `expected`: the checksum the caller saw ("" for none): if what is
        saved now differs, nothing is saved and SettingsChanged says what is there."""
        settings = validate(settings)
        with self.catalog.lock:
            scope, scope_id = self._scope(ref)
            before = self._row(scope, scope_id)
            if expected is not None and expected != (before["checksum"] if before else ""):
                raise SettingsChanged(before)
            self.catalog.conn.execute(
                "DELETE FROM managed_settings WHERE scope = ? AND scope_id = ?", [scope, scope_id])
            self.catalog.conn.execute(
                "INSERT INTO managed_settings VALUES (?, ?, ?, ?, ?)",
                [scope, scope_id, str(uuid.uuid4()), canonical(settings).decode(), _now()])
            after = self._row(scope, scope_id)
            self.catalog._audit(actor, "managed_settings.set", f"{scope}:{scope_id}", before,
                                after)
        if after is None:  # the row was written under the lock just now
            raise RuntimeError(f"managed settings for {scope}:{scope_id} vanished on write")
        return after

    def delete(self, ref: str, actor: str = "cli") -> bool:
        """Remove a policy (a team falls back to the org's; none left: 404). False: none."""
        with self.catalog.lock:
            scope, scope_id = self._scope(ref)
            before = self._row(scope, scope_id)
            if before is None:
                return False
            self.catalog.conn.execute(
                "DELETE FROM managed_settings WHERE scope = ? AND scope_id = ?", [scope, scope_id])
            self.catalog._audit(actor, "managed_settings.delete", f"{scope}:{scope_id}",
                                before, None)
            return True

    def served_checksums(self) -> frozenset[str]:
        """Every checksum a policy has had (from the audit log): a machine that sends one of
        them that is no longer its team's runs stale settings rather than edited ones."""
        rows = self.catalog._rows("SELECT after FROM admin_audit WHERE action = "
                                  "'managed_settings.set'")
        return frozenset(orjson.loads(r["after"])["checksum"] for r in rows if r["after"])

    def machines(self, seen: dict[bytes, bytes]) -> list[dict[str, Any]]:
        """The machines in `seen` (the proxies' `managed:seen` hash), each with the status of
        the managed settings it runs: `current` (its team's policy, or the organization's),
        `stale` (one it had before), `edited` (a checksum meterd never served: changed on
        the machine) or `none` (it sent no checksum). Problems first, then by name."""
        policies = {("org" if p["scope"] == ORG else p["scope_id"]): p["checksum"]
                    for p in self.all()}
        developers = {d["id"]: d for d in self.catalog.developers()}
        served = self.served_checksums()
        out = []
        for field, raw in seen.items():
            developer_id, _, key_id = field.decode().partition(" ")
            dev = developers.get(developer_id)
            if dev is None:
                continue  # removed since
            value = orjson.loads(raw)
            sent = value["checksum"]
            expected = policies.get(dev["team_id"], policies.get("org"))
            status = ("none" if not sent else "current" if sent == expected
                      else "stale" if sent in served else "edited")
            out.append({"developer_id": developer_id, "developer_name": dev["name"],
                        "team_name": dev["team_name"], "key_id": key_id, "status": status,
                        "checksum": sent, "expected": expected or "",
                        "seen_at": datetime.fromtimestamp(value["at"], UTC),
                        "session_id": value["session_id"], "client": value["client"]})
        order = {"edited": 0, "stale": 1, "none": 2, "current": 3}
        out.sort(key=lambda m: (order[m["status"]], m["developer_name"], m["key_id"]))
        return out

    def mirror(self) -> dict[str, bytes]:
        """The policy snapshot's `managed` hash: "org" or a team id → the answer's body."""
        return {("org" if r["scope"] == ORG else r["scope_id"]): orjson.dumps(
            {"uuid": r["uuid"], "checksum": r["checksum"], "settings": r["settings"]})
            for r in self.all()}


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    settings = orjson.loads(row["settings"])
    return {**row, "settings": settings, "checksum": checksum(settings)}


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """What saving `after` over `before` changes, as unified diff lines of the pretty JSON."""
    def lines(doc: dict[str, Any] | None) -> list[str]:
        if doc is None:
            return []
        pretty = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
        return pretty.decode().splitlines()
    return list(difflib.unified_diff(lines(before), lines(after), "saved", "new", lineterm=""))
