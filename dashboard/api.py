"""The admin JSON API: teams, developers, keys, budgets, rate limits and accounts, for
automation (admin API keys: `rw` acts as an admin, `ro` reads like finance) and for the
`meterd` CLI (which reaches it over the data directory's Unix socket). Usage reports are in
api_reports.py, the Anthropic-shaped spend limits in spend_limits.py; who may call what is
declared on each handler and enforced by dashboard.auth."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard.accounts import Accounts, hash_password
from dashboard.appkeys import IDENTITY
from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import Body, json_response, read_body
from dashboard.params import Query, choice, parse_expiry, query, text, whole
from dashboard.spend_limits import meterd_scope
from dashboard.state import ADMIN, AdminState
from ledger.catalog import LIMIT_FIELDS
from ledger.money import parse_cents, parse_usd


def _state(request: web.Request) -> AdminState:
    return request.app[ADMIN]


def _actor(request: web.Request) -> str:
    return request[IDENTITY].actor


async def _change(request: web.Request, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    state = _state(request)
    result = await state.db(fn, *args, actor=_actor(request), **kw)
    await state.publish()
    return result


@allow(*READERS)
@query(choice("archived", ("0", "1"), "0"))
async def list_teams(request: web.Request, q: Query) -> web.Response:
    """`archived=1`: the archived teams too (they have `archived_at`)."""
    state = _state(request)
    return json_response({"data": await state.db(state.catalog.teams, q["archived"] == "1")})


@allow(*ADMINS)
async def create_team(request: web.Request) -> web.Response:
    state, body = _state(request), await read_body(request)
    return json_response(await _change(request, state.catalog.create_team, body.text("name")),
                         201)


@allow(*READERS)
@query(text("team"), choice("archived", ("0", "1"), "0"))
async def list_developers(request: web.Request, q: Query) -> web.Response:
    """`archived=1`: the archived developers too (they have `archived_at`)."""
    state = _state(request)
    return json_response({"data": await state.db(state.catalog.developers, q["team"],
                                                 q["archived"] == "1")})


@allow(*ADMINS)
async def create_developer(request: web.Request) -> web.Response:
    state, body = _state(request), await read_body(request)
    return json_response(await _change(request, state.catalog.create_developer,
                                       body.text("name"), body.text("email"),
                                       body.text("team")), 201)


@allow(*READERS)
@query(text("developer"))
async def list_keys(request: web.Request, q: Query) -> web.Response:
    state = _state(request)
    return json_response({"data": await state.db(state.catalog.keys, q["developer"])})


def _when(body: Body) -> datetime | None:
    """An `expires_at`: a date is the end of that UTC day, a date-time that instant."""
    value = body.text("expires_at", "")
    return parse_expiry(value) if value else None


@allow(*ADMINS)
async def issue_key(request: web.Request) -> web.Response:
    """The secret is in this response and nowhere else, ever."""
    state, body = _state(request), await read_body(request)
    key = await _change(request, state.catalog.issue_key, body.text("developer"), _when(body),
                        label=body.text("label", ""))
    return json_response({"id": key.id, "developer_id": key.developer_id, "secret": key.secret,
                          "display": key.display, "expires_at": key.expires_at,
                          "label": key.label}, 201)


@allow(*ADMINS)
async def revoke_key(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response(await _change(request, state.catalog.revoke_key,
                                       request.match_info["key_id"]))


@allow(*ADMINS)
async def expire_key(request: web.Request) -> web.Response:
    state, body = _state(request), await read_body(request)
    when = _when(body) or datetime.now(UTC)
    return json_response(await _change(request, state.catalog.expire_key,
                                       request.match_info["key_id"], when))


@allow(*READERS)
async def list_budgets(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response({"data": await state.db(state.catalog.budgets)})


def _amount(body: Body) -> int:
    """Dollars (`amount_usd`), µ$ (`amount_micros`), or Anthropic Admin API whole cents as a
    string (`amount`)."""
    if not body.absent("amount_micros"):
        return body.whole("amount_micros")
    if not body.absent("amount_usd"):
        return parse_usd(body.figure("amount_usd"))
    return parse_cents(body.figure("amount"))


@allow(*ADMINS)
async def set_budget(request: web.Request) -> web.Response:
    """meterd's shape ({scope: "team", target: "platform", period, amount_usd, mode}) or the
    Admin API spend-limit shape ({scope: {type: "workspace", workspace_id}, amount, period})."""
    state, body = _state(request), await read_body(request)
    if isinstance(body.fields.get("scope"), dict):
        scope, target = await state.db(meterd_scope, state.catalog, body.object("scope"))
    else:
        scope, target = body.text("scope"), body.text("target", "")
    return json_response(await _change(
        request, state.catalog.set_budget, scope, target, body.text("period", "monthly"),
        _amount(body), body.text("mode", "estimate")), 201)


@allow(*ADMINS)
async def delete_budget(request: web.Request) -> web.Response:
    state = _state(request)
    await _change(request, state.catalog.delete_budget, request.match_info["budget_id"])
    return json_response({"deleted": request.match_info["budget_id"]})


@allow(*READERS)
async def list_limits(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response({"data": await state.db(state.catalog.rate_limits)})


@allow(*ADMINS)
async def set_limits(request: web.Request) -> web.Response:
    state, body = _state(request), await read_body(request)
    values = {k: body.whole(k) for k in LIMIT_FIELDS if not body.absent(k)}
    return json_response(await _change(request, state.catalog.set_limits, body.text("scope"),
                                       body.text("target"), **values))


@allow(*READERS)
@query(whole("limit", 200, 1, 5000))
async def list_audit(request: web.Request, q: Query) -> web.Response:
    state = _state(request)
    return json_response({"data": await state.db(state.catalog.audit, q["limit"])})


# -- accounts and admin API keys ------------------------------------------------------------


def _accounts(request: web.Request) -> Accounts:
    return Accounts(_state(request).catalog)


async def _hash(password: str) -> str:
    # argon2 costs ~0.2 s of CPU: off the event loop and off the DuckDB thread.
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)


@allow(*READERS)
async def list_users(request: web.Request) -> web.Response:
    return json_response({"data": await _state(request).db(_accounts(request).users)})


@allow(*ADMINS)
async def create_user(request: web.Request) -> web.Response:
    body = await read_body(request)
    stored = await _hash(body.text("password"))
    return json_response(await _change(request, _accounts(request).create_user,
                                       body.text("name"), "", body.text("role"),
                                       password_hash=stored), 201)


@allow(*ADMINS)
async def set_password(request: web.Request) -> web.Response:
    body = await read_body(request)
    name = request.match_info["name"]
    await _change(request, _accounts(request).set_password, name,
                  await _hash(body.text("password")))
    return json_response({"name": name, "password_changed": True})


@allow(*ADMINS)
async def disable_user(request: web.Request) -> web.Response:
    return json_response(await _change(request, _accounts(request).set_disabled,
                                       request.match_info["name"], True))


@allow(*ADMINS)
async def enable_user(request: web.Request) -> web.Response:
    return json_response(await _change(request, _accounts(request).set_disabled,
                                       request.match_info["name"], False))


@allow(*READERS)
async def list_admin_keys(request: web.Request) -> web.Response:
    return json_response({"data": await _state(request).db(_accounts(request).admin_keys)})


@allow(*ADMINS)
async def issue_admin_key(request: web.Request) -> web.Response:
    """The secret is in this response and nowhere else, ever."""
    body = await read_body(request)
    row, secret = await _change(request, _accounts(request).issue_admin_key,
                                body.text("role", "ro"), body.text("label", ""))
    return json_response({**row, "secret": secret}, 201)


@allow(*ADMINS)
async def revoke_admin_key(request: web.Request) -> web.Response:
    return json_response(await _change(request, _accounts(request).revoke_admin_key,
                                       request.match_info["key_id"]))

