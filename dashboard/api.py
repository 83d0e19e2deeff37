"""The admin JSON API: teams, developers, keys, budgets and rate limits, for automation and
for the `meterd` CLI (which reaches it over the data directory's Unix socket)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from dashboard.state import ADMIN, AdminState
from ledger.catalog import CatalogError, NotFound
from ledger.money import parse_cents, parse_usd

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status,
                                                                     "invalid_request_error")
    return _json({"type": "error", "error": {"type": kind, "message": message}}, status)


def is_local(request: web.Request) -> bool:
    """Requests over the Unix socket come from this host's operator (the socket is 0600)."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/admin/api/"):
        return await handler(request)
    if not is_local(request):
        return _error(401, "the admin API needs an admin API key")
    try:
        return await handler(request)
    except NotFound as exc:
        return _error(404, str(exc))
    except CatalogError as exc:
        return _error(400, str(exc))
    except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
        return _error(400, f"bad request: {exc}")


async def _body(request: web.Request) -> dict[str, Any]:
    doc = orjson.loads(await request.read() or b"{}")
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc


def _actor(request: web.Request) -> str:
    return "cli" if is_local(request) else "api"


async def _change(state: AdminState, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    result = await state.db(fn, *args, **kw)
    await state.publish()
    return result


async def list_teams(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    return _json({"data": await state.db(state.catalog.teams)})


async def create_team(request: web.Request) -> web.Response:
    state, doc = request.app[ADMIN], await _body(request)
    return _json(await _change(state, state.catalog.create_team, str(doc["name"]),
                               actor=_actor(request)), 201)


async def list_developers(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    return _json({"data": await state.db(state.catalog.developers,
                                         request.query.get("team"))})


async def create_developer(request: web.Request) -> web.Response:
    state, doc = request.app[ADMIN], await _body(request)
    return _json(await _change(state, state.catalog.create_developer, str(doc["name"]),
                               str(doc["email"]), str(doc["team"]), actor=_actor(request)), 201)


async def list_keys(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    return _json({"data": await state.db(state.catalog.keys, request.query.get("developer"))})


def _when(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    when = datetime.fromisoformat(str(value))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def issue_key(request: web.Request) -> web.Response:
    """The secret is in this response and nowhere else, ever."""
    state, doc = request.app[ADMIN], await _body(request)
    key = await _change(state, state.catalog.issue_key, str(doc["developer"]),
                        _when(doc.get("expires_at")), actor=_actor(request))
    return _json({"id": key.id, "developer_id": key.developer_id, "secret": key.secret,
                  "display": key.display, "expires_at": key.expires_at}, 201)


async def revoke_key(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    return _json(await _change(state, state.catalog.revoke_key, request.match_info["key_id"],
                               actor=_actor(request)))


async def expire_key(request: web.Request) -> web.Response:
    state, doc = request.app[ADMIN], await _body(request)
    when = _when(doc.get("expires_at")) or datetime.now(UTC)
    return _json(await _change(state, state.catalog.expire_key, request.match_info["key_id"],
                               when, actor=_actor(request)))


async def list_budgets(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    return _json({"data": await state.db(state.catalog.budgets)})


def _amount(doc: dict[str, Any]) -> int:
    """Dollars (`amount_usd`), µ$ (`amount_micros`), or Anthropic Admin API whole cents as a
    string (`amount`)."""
    if "amount_micros" in doc:
        return int(doc["amount_micros"])
    if "amount_usd" in doc:
        return parse_usd(doc["amount_usd"])
    return parse_cents(doc["amount"])


async def set_budget(request: web.Request) -> web.Response:
    state, doc = request.app[ADMIN], await _body(request)
    return _json(await _change(
        state, state.catalog.set_budget, str(doc["scope"]), str(doc.get("target", "")),
        str(doc.get("period", "monthly")), _amount(doc), str(doc.get("mode", "estimate")),
        actor=_actor(request)), 201)


async def delete_budget(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    await _change(state, state.catalog.delete_budget, request.match_info["budget_id"],
                  actor=_actor(request))
    return _json({"deleted": request.match_info["budget_id"]})


async def list_limits(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    return _json({"data": await state.db(state.catalog.rate_limits)})


async def set_limits(request: web.Request) -> web.Response:
    state, doc = request.app[ADMIN], await _body(request)
    values = {k: int(doc[k]) for k in ("rpm", "itpm", "otpm", "concurrency") if k in doc}
    return _json(await _change(state, state.catalog.set_limits, str(doc["scope"]),
                               str(doc["target"]), actor=_actor(request), **values))


def setup_api(app: web.Application) -> None:
    app.middlewares.append(api_middleware)
    r = app.router
    r.add_get("/api/v1/teams", list_teams)
    r.add_post("/api/v1/teams", create_team)
    r.add_get("/api/v1/developers", list_developers)
    r.add_post("/api/v1/developers", create_developer)
    r.add_get("/api/v1/keys", list_keys)
    r.add_post("/api/v1/keys", issue_key)
    r.add_post("/api/v1/keys/{key_id}/revoke", revoke_key)
    r.add_post("/api/v1/keys/{key_id}/expire", expire_key)
    r.add_get("/api/v1/budgets", list_budgets)
    r.add_post("/api/v1/budgets", set_budget)
    r.add_delete("/api/v1/budgets/{budget_id}", delete_budget)
    r.add_get("/api/v1/rate_limits", list_limits)
    r.add_put("/api/v1/rate_limits", set_limits)
