"""Per-model caps: a cap on what some models cost (a family such as `opus`, or model ids and
globs), for a developer, each member of a team, a team or the organization.

A request is matched on the model it asks for, resolved as it is priced (an alias or deployment
name to its price row, a Bedrock or Vertex spelling to the bare id), so switching spellings
cannot dodge the cap. A model cap has its own spend counters (named for its model set) that
admission checks and reserves on in the same script as every other cap, and that settlement
adds the request's cost to.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from ledger.models_allowed import validate
from ledger.pricing import normalise_model_id

if TYPE_CHECKING:
    from ledger.catalog import Catalog

_GLOB = frozenset("*?[")
_CACHE_LIMIT = 1024


def set_key(models: tuple[str, ...] | list[str]) -> str:
    """A short stable name of a model set, for its counters' keys."""
    return hashlib.sha256(",".join(models).encode()).hexdigest()[:10]


def matches(models: tuple[str, ...], model: str) -> bool:
    """Whether the resolved model id `model` is one of `models`: a family word (`opus`: any
    model id naming it) or a model id or glob, matched on the id and its bare form."""
    lowered = model.lower()
    bare = normalise_model_id(lowered)
    for entry in models:
        if "-" not in entry and not _GLOB & set(entry):  # a family: claude-opus-4-8, claude-3-opus
            if entry in bare.split("-"):
                return True
        elif fnmatchcase(lowered, entry) or fnmatchcase(bare, entry):
            return True
    return False


class Matcher:
    """`matches`, remembered per model string (asked on every request; clients choose the
    strings, so the memory is bounded)."""

    def __init__(self, models: tuple[str, ...]) -> None:
        self.models = models
        self._seen: dict[str, bool] = {}

    def __call__(self, model: str) -> bool:
        found = self._seen.get(model)
        if found is None:
            if len(self._seen) >= _CACHE_LIMIT:
                self._seen.clear()
            found = self._seen[model] = matches(self.models, model)
        return found


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class ModelCaps:
    """Operations on the catalog's connection, under its lock; every change audited."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def all(self) -> list[dict[str, Any]]:
        return self.catalog._rows("SELECT * FROM model_budgets ORDER BY scope, scope_id, period, "
                                  "models_key")

    def set(self, scope: str, ref: str, period: str, models: Any, amount_micros: int,
            mode: str = "estimate", actor: str = "cli") -> dict[str, Any]:
        """Create or replace the cap of one scope, period and model set."""
        from ledger.catalog import CatalogError, check_cap  # catalog imports this module

        check_cap(scope, period, mode)
        if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) \
                or amount_micros < 0:
            raise CatalogError("a budget is a whole number of µ$, not negative")
        try:
            listed = validate(models)
        except ValueError as exc:
            raise CatalogError(str(exc)) from None
        key = ",".join(listed)
        with self.catalog.lock:
            scope_id = "" if scope == "org" else (
                self.catalog.developer_id(ref) if scope == "developer"
                else self.catalog.team_id(ref))
            found = self.catalog._rows(
                "SELECT * FROM model_budgets WHERE scope = ? AND scope_id = ? AND period = ? "
                "AND models_key = ?", [scope, scope_id, period, key])
            before = found[0] if found else None
            budget_id = before["id"] if before else f"mbud_{secrets.token_hex(5)}"
            self.catalog.conn.execute("DELETE FROM model_budgets WHERE id = ?", [budget_id])
            self.catalog.conn.execute(
                "INSERT INTO model_budgets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [budget_id, scope, scope_id, period, listed, key, amount_micros, mode, _now()])
            after = self.catalog._rows("SELECT * FROM model_budgets WHERE id = ?",
                                       [budget_id])[0]
            self.catalog._audit(actor, "model_budget.set", budget_id, before, after)
        return after

    def delete(self, budget_id: str, actor: str = "cli") -> None:
        from ledger.catalog import NotFound

        with self.catalog.lock:
            found = self.catalog._rows("SELECT * FROM model_budgets WHERE id = ?", [budget_id])
            if not found:
                raise NotFound(f"no model budget {budget_id!r}")
            self.catalog.conn.execute("DELETE FROM model_budgets WHERE id = ?", [budget_id])
            self.catalog._audit(actor, "model_budget.delete", budget_id, found[0], None)

    def mirror(self) -> dict[str, bytes]:
        """Entries of the policy snapshot's `budgets` hash: a budget with its `models`."""
        return {b["id"]: orjson.dumps({
            "scope": b["scope"], "scope_id": b["scope_id"], "period": b["period"],
            "amount": b["amount_micros"], "mode": b["mode"], "models": b["models"]})
            for b in self.all()}
