"""Budgets in the shape of Anthropic's Admin API spend limits, so a client written for
`/v1/organizations/spend_limits` can point at `<meterd>/admin/api` instead.

    {"scope": {"type": "user", "user_id": …} | {"type": "workspace", "workspace_id": …}
               | {"type": "organization"},
     "amount": "50000" (whole cents as a string; null removes the cap), "period": "monthly"}

A `user` is a meterd developer (id, email or name), a `workspace` a team (id or name), the
`organization` the org-wide cap. meterd's per-member team caps have no counterpart and are
left out of these listings (the native `/budgets` endpoints show them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard.appkeys import IDENTITY
from dashboard.auth import ADMINS, READERS, allow
from dashboard.identity import Identity
from dashboard.jsonio import Body, json_response, read_body
from dashboard.params import Query, many, query
from dashboard.render import admin_state
from ledger.catalog import Catalog, NotFound
from ledger.money import MICROS_PER_CENT, parse_cents
from ledger.periods import PERIODS

_TO_METERD = {"user": "developer", "workspace": "team", "organization": "org"}
_FROM_METERD = {v: k for k, v in _TO_METERD.items()}
_ID_FIELD = {"user": "user_id", "workspace": "workspace_id"}


def meterd_scope(catalog: Catalog, scope: Body) -> tuple[str, str]:
    """(meterd scope, scope id) for an Admin API scope object; ValueError if bad."""
    kind = scope.fields.get("type")
    if not isinstance(kind, str) or kind not in _TO_METERD:
        raise ValueError("scope must be {\"type\": \"user\", \"user_id\": …}, "
                         "{\"type\": \"workspace\", \"workspace_id\": …} or "
                         "{\"type\": \"organization\"}")
    if kind == "organization":
        return "org", ""
    ref = scope.text(_ID_FIELD[kind])
    return (_TO_METERD[kind],
            catalog.developer_id(ref) if kind == "user" else catalog.team_id(ref))


def _stamp(value: datetime) -> str:
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def as_spend_limit(budget: dict[str, Any]) -> dict[str, Any]:
    """A meterd budget row as an Admin API spend limit object."""
    kind = _FROM_METERD[budget["scope"]]
    scope: dict[str, Any] = {"type": kind}
    if kind in _ID_FIELD:
        scope[_ID_FIELD[kind]] = budget["scope_id"]
    amount = budget["amount_micros"]
    return {
        "type": "spend_limit", "id": budget["id"],
        # Whole cents; a cap set in finer µ$ rounds down, never up.
        "amount": None if amount is None else str(int(amount) // MICROS_PER_CENT),
        "currency": "USD", "is_enabled": True, "period": budget["period"], "scope": scope,
        "created_at": _stamp(budget["updated_at"]), "updated_at": _stamp(budget["updated_at"]),
    }


def apply_spend_limit(catalog: Catalog, body: Body, actor: str) -> dict[str, Any]:
    """Upsert (or, with amount null, remove) the cap of one scope and period. Runs on the
    DuckDB thread as one catalog operation."""
    scope, scope_id = meterd_scope(catalog, body.object("scope"))
    period = body.text("period", "monthly")
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    with catalog.lock:
        found = [b for b in catalog.budgets() if b["scope"] == scope
                 and b["scope_id"] == scope_id and b["period"] == period]
        if body.absent("amount"):
            # No cap for this scope and period (the other periods' caps still apply).
            if found:
                catalog.delete_budget(found[0]["id"], actor=actor)
            now = _stamp(datetime.now(UTC).replace(tzinfo=None))
            return {"type": "spend_limit", "id": found[0]["id"] if found else "",
                    "amount": None, "currency": "USD", "is_enabled": True, "period": period,
                    "scope": body.fields["scope"], "created_at": now, "updated_at": now}
        mode = found[0]["mode"] if found else "estimate"
        row = catalog.set_budget(scope, scope_id, period, parse_cents(body.figure("amount")),
                                 mode, actor=actor)
    return as_spend_limit(row)


def _listed(catalog: Catalog) -> list[dict[str, Any]]:
    return [as_spend_limit(b) for b in catalog.budgets() if b["scope"] in _FROM_METERD]


def _who(request: web.Request) -> Identity:
    return request[IDENTITY]


@allow(*READERS)
@query(many("scope_type"), many("scope_type[]"))  # the SDKs send either form of a list
async def list_spend_limits(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    rows = await state.db(_listed, state.catalog)
    kinds = q["scope_type"] or q["scope_type[]"]
    if kinds:
        rows = [r for r in rows if r["scope"]["type"] in kinds]
    return json_response({"data": rows, "next_page": None})


@allow(*READERS)
async def get_spend_limit(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    wanted = request.match_info["spend_limit_id"]
    for row in await state.db(_listed, state.catalog):
        if row["id"] == wanted:
            return json_response(row)
    raise NotFound(f"no spend limit {wanted!r}")


@allow(*ADMINS)
async def set_spend_limit(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    body = await read_body(request)
    row = await state.db(apply_spend_limit, state.catalog, body, _who(request).actor)
    await state.publish()
    return json_response(row)


@allow(*ADMINS)
async def delete_spend_limit(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    wanted = request.match_info["spend_limit_id"]
    await state.db(state.catalog.delete_budget, wanted, actor=_who(request).actor)
    await state.publish()
    return json_response({"id": wanted, "type": "spend_limit_deleted"})
