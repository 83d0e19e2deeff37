"""Models per team: the models a team's developers may call. The organization's list is the
default; a team's own list replaces it whole; with neither, any model goes.

An entry is a model id (`claude-sonnet-4-6`) or a glob (`claude-haiku-*`), matched as routes
match (proxy.providers.routing): against the model a request names and against its bare id, so
`claude-sonnet-4-6` also allows `claude-sonnet-4-6-20260101`, `claude-sonnet-4-6[1m]` and the
Bedrock and Vertex spellings of it. Kept in the catalog and mirrored into the policy snapshot,
so a proxy decides from memory, before admission.
"""

from __future__ import annotations

from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from ledger.pricing import normalise_model_id

if TYPE_CHECKING:
    from ledger.catalog import Catalog

ORG = "org"
MAX_MODELS = 100
_GLOB = frozenset("*?[")
_CACHE_LIMIT = 1024  # distinct model strings remembered; clients choose them, so bound it


class ModelsInvalid(ValueError):
    """The list cannot be saved; the message says what is wrong."""


def validate(models: Any) -> list[str]:
    """A list of 1 to MAX_MODELS model ids or globs, lowercased, without repeats."""
    if isinstance(models, str) or not isinstance(models, list | tuple):
        raise ModelsInvalid("models are a list of model ids, e.g. [\"claude-sonnet-4-6\"]")
    out: list[str] = []
    for item in models:
        if not isinstance(item, str):
            raise ModelsInvalid(f"{item!r} is not a model id")
        model = item.strip().lower()
        if not model or len(model) > 200 or not model.isprintable() or " " in model:
            raise ModelsInvalid(f"{item!r} is not a model id: 1 to 200 characters, no spaces")
        if model not in out:
            out.append(model)
    if not out:
        raise ModelsInvalid("name at least one model (clear the list to allow any model)")
    if len(out) > MAX_MODELS:
        raise ModelsInvalid(f"at most {MAX_MODELS} models per list")
    return out


def split(text: str) -> list[str]:
    """Models as typed in a form or on the command line: separated by commas or whitespace."""
    return [m for m in text.replace(",", " ").split() if m]


class Allowlist:
    """One list as a proxy holds it: `allows` is asked on every request, so answers are
    remembered per model string."""

    def __init__(self, models: list[str]) -> None:
        self.models = tuple(models)
        self._seen: dict[str, bool] = {}

    def allows(self, model: str) -> bool:
        found = self._seen.get(model)
        if found is None:
            lowered = model.lower()
            bare = normalise_model_id(lowered)
            found = any(fnmatchcase(lowered, m) or fnmatchcase(bare, m) for m in self.models)
            if len(self._seen) >= _CACHE_LIMIT:
                self._seen.clear()
            self._seen[model] = found
        return found

    def listed(self, offered: tuple[str, ...]) -> list[str]:
        """What GET /v1/models shows: the ids on the list, and the offered models (the
        `models` setting) that a glob on it allows."""
        ids = [m for m in self.models if not _GLOB & set(m)]
        return ids + [m for m in offered if m.lower() not in ids and self.allows(m)]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class AllowedModels:
    """Operations on the catalog's connection, under its lock; every change audited."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _scope(self, ref: str) -> tuple[str, str]:
        return (ORG, "") if ref == ORG else ("team", self.catalog.team_id(ref))

    def _select(self, where: str = "", params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.catalog._rows(
            "SELECT a.scope, a.scope_id, t.name AS team_name, a.models, a.updated_at FROM "
            f"allowed_models a LEFT JOIN teams t ON t.id = a.scope_id {where} "
            "ORDER BY a.scope, t.name", params or [])

    def all(self) -> list[dict[str, Any]]:
        return self._select()

    def get(self, ref: str) -> dict[str, Any] | None:
        """The list of `org` or a team (id or name), or None."""
        rows = self._select("WHERE a.scope = ? AND a.scope_id = ?", list(self._scope(ref)))
        return rows[0] if rows else None

    def effective(self, team_id: str) -> tuple[str, list[str] | None]:
        """Which list applies to a team ("team", "org" or "any") and its models."""
        for ref, source in ((team_id, "team"), (ORG, "org")):
            found = self.get(ref)
            if found is not None:
                return source, found["models"]
        return "any", None

    def set(self, ref: str, models: Any, actor: str = "cli") -> dict[str, Any]:
        models = validate(models)
        with self.catalog.lock:
            scope, scope_id = self._scope(ref)
            before = self.get(ref)
            self.catalog.conn.execute(
                "DELETE FROM allowed_models WHERE scope = ? AND scope_id = ?", [scope, scope_id])
            self.catalog.conn.execute("INSERT INTO allowed_models VALUES (?, ?, ?, ?)",
                                      [scope, scope_id, models, _now()])
            # The row just written, read back under the same lock as the views show it.
            after = self._select("WHERE a.scope = ? AND a.scope_id = ?", [scope, scope_id])[0]
            self.catalog._audit(actor, "allowed_models.set", f"{scope}:{scope_id}", before,
                                after)
        return after

    def clear(self, ref: str, actor: str = "cli") -> bool:
        """Remove a list (a team falls back to the org's; none left: any model). False: none."""
        with self.catalog.lock:
            scope, scope_id = self._scope(ref)
            before = self.get(ref)
            if before is None:
                return False
            self.catalog.conn.execute(
                "DELETE FROM allowed_models WHERE scope = ? AND scope_id = ?", [scope, scope_id])
            self.catalog._audit(actor, "allowed_models.clear", f"{scope}:{scope_id}", before,
                                None)
            return True

    def mirror(self) -> dict[str, bytes]:
        """The policy snapshot's `models` hash: "org" or a team id → the list."""
        return {("org" if r["scope"] == ORG else r["scope_id"]): orjson.dumps(r["models"])
                for r in self.all()}
