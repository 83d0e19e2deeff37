"""Signing in and out: accounts with a password, developers with their gateway key."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from redis.exceptions import RedisError

from dashboard import sessions
from dashboard.accounts import Accounts, check_password, needs_rehash, rehash_password
from dashboard.appkeys import CONFIG, SECRET, SESSION, SESSION_SET, THROTTLE
from dashboard.auth import EVERYONE, allow
from dashboard.params import Query, query, text
from dashboard.render import (
    admin_state,
    cookie_path,
    error_page,
    field,
    form,
    home,
    local_path,
    render,
    see_other,
    url,
)

log = logging.getLogger("meterd.dashboard")


async def _page(request: web.Request, error: str = "", status: int = 200,
                name: str = "", target: str = "") -> web.Response:
    state = admin_state(request)
    has_users = await state.db(Accounts(state.catalog).has_users)
    oidc = request.app[CONFIG].oidc
    return await render(request, "signin.html", {
        "error": error, "name": name, "has_users": has_users,
        "provider": oidc.provider_name if oidc else "",
        "next": local_path(request, target) or ""}, status=status)


@allow(*EVERYONE)
@query(text("next", limit=2000))
async def signin_page(request: web.Request, q: Query) -> web.StreamResponse:
    if request[SESSION].kind != "anonymous":
        return see_other(request, home(request))
    return await _page(request, target=q["next"] or "")


def _in(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds > 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


async def _throttled(request: web.Request, name: str) -> web.Response | None:
    """Count this attempt (request.remote is the client's address, see forwarded.py); an
    answer when it must wait."""
    try:
        wait = await request.app[THROTTLE].attempt(request.remote or "", name)
    except (RedisError, OSError) as exc:
        log.warning("sign-in refused: cannot count attempts (%s)", exc)
        return await error_page(request, 503, "Sign-in is unavailable while Redis cannot be "
                                              "reached. Try again in a minute.")
    if wait:
        response = await error_page(request, 429, "Too many sign-in attempts. Try again in "
                                                  f"{_in(wait)}.")
        response.headers["Retry-After"] = str(wait)
        return response
    return None


async def _succeeded(request: web.Request, name: str) -> None:
    """Hand back the attempt _throttled counted: a right password uses up nothing."""
    try:
        await request.app[THROTTLE].succeeded(request.remote or "", name)
    except (RedisError, OSError) as exc:  # only the count is lost, the sign-in stands
        log.warning("sign-in attempt not handed back (%s)", exc)


async def signed_in(request: web.Request, location: str, kind: str, subject: str,
                    key_id: str = "", **placed: str) -> web.Response:
    """Record the new session (ending the one this browser had) and set its cookie; an sso
    session also records the role, team_id and developer_id its sign-in gave (`placed`)."""
    state = admin_state(request)
    accounts = Accounts(state.catalog)
    if request[SESSION].sid:
        await state.db(accounts.end_session, request[SESSION].sid)
    sid = await state.db(accounts.start_session, kind, subject, key_id, sessions.MAX_AGE,
                         **placed)
    session = request[SESSION].signed_in(kind, subject, key_id=key_id, sid=sid)
    response = see_other(request, location)
    sessions.store(response, request, session, request.app[SECRET], cookie_path(request))
    request[SESSION_SET] = True
    return response


@allow(*EVERYONE)
async def signin(request: web.Request) -> web.StreamResponse:
    """POST: an account name and password (refused when local_accounts is off)."""
    if not request.app[CONFIG].local_accounts:
        return await _page(request, "Password sign-in is turned off here: sign in with your "
                                    "organization's account.", 403)
    data = await form(request)
    name, password = field(data, "name", "", 64), str(data.get("password") or "")
    refused = await _throttled(request, name)
    if refused is not None:
        return refused
    state = admin_state(request)
    accounts = Accounts(state.catalog)
    found = await state.db(accounts.credentials, name) if name else None
    stored = found["password_hash"] if found else None
    loop = asyncio.get_running_loop()
    # argon2 costs ~0.2 s of CPU: off the event loop and off the DuckDB thread.
    if not await loop.run_in_executor(None, check_password, stored, password) or not found:
        log.info("sign-in failed for account %r from %s", name, request.remote)
        return await _page(request, "Wrong account name or password.", 401, name)
    await _succeeded(request, name)
    if needs_rehash(found["password_hash"]):
        stored = await loop.run_in_executor(None, rehash_password, password)
        await state.db(accounts.rehash, name, stored)
    target = local_path(request, str(data.get("next") or "")) or str(url(request, "overview"))
    return await signed_in(request, target, "user", name)


@allow(*EVERYONE)
async def signin_key(request: web.Request) -> web.StreamResponse:
    """POST: a developer's gateway key, for the self-service page."""
    data = await form(request)
    secret = field(data, "key", "", 200)
    refused = await _throttled(request, "")
    if refused is not None:
        return refused
    state = admin_state(request)
    dev = await state.db(Accounts(state.catalog).developer_for_key, secret) if secret else None
    if dev is None:
        return await _page(request, "That gateway key is not valid: mistyped, revoked or "
                                    "expired.", 401)
    await _succeeded(request, "")
    return await signed_in(request, str(url(request, "me")), "developer", dev["developer_id"],
                            dev["key_id"])


@allow(*EVERYONE)
async def signout(request: web.Request) -> web.StreamResponse:
    """Ends the session on the server, so a copy of its cookie is refused too."""
    if request[SESSION].sid:
        state = admin_state(request)
        await state.db(Accounts(state.catalog).end_session, request[SESSION].sid)
    response = see_other(request, url(request, "signin"), "Signed out.")
    sessions.clear(response, cookie_path(request))
    request[SESSION_SET] = True
    return response
