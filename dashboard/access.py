"""Access: dashboard accounts and admin API keys (secrets and new passwords shown once)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from dashboard.accounts import ADMIN_KEY_ROLES, USER_ROLES, Accounts, hash_password, new_password
from dashboard.auth import ADMINS, READERS, allow
from dashboard.render import admin_state, change, field, form, identity, render, see_other, url


def _accounts(request: web.Request) -> Accounts:
    return Accounts(admin_state(request).catalog)


@allow(*READERS)
async def access(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    accounts = _accounts(request)
    return await render(request, "access.html", {
        "users": await state.db(accounts.users), "keys": await state.db(accounts.admin_keys),
        "roles": USER_ROLES, "key_roles": ADMIN_KEY_ROLES})


async def _hashed(password: str, name: str = "") -> str:
    """hash_password off the event loop (argon2 takes a fifth of a second of CPU)."""
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password,
                                                            name)


@allow(*ADMINS)
async def create_user(request: web.Request) -> web.StreamResponse:
    """A new account; with the password box left empty, one is generated and shown once."""
    data = await form(request)
    name, role = field(data, "name", limit=64), field(data, "role", limit=20)
    typed = str(data.get("password") or "")
    password = typed or new_password()
    stored = await _hashed(password, name)
    await change(request, _accounts(request).create_user, name, "", role,
                 password_hash=stored)
    if typed:
        return see_other(request, url(request, "access"), f"Account {name} created.")
    return await render(request, "password_shown.html", {
        "name": name, "password": password, "created": True}, status=201)


@allow(*ADMINS)
async def reset_password(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    password = new_password()
    await change(request, _accounts(request).set_password, name, await _hashed(password))
    return await render(request, "password_shown.html", {
        "name": name, "password": password, "created": False})


@allow(*ADMINS)
async def set_user_disabled(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    disabled = field(await form(request), "disabled", "1") == "1"
    if disabled and name == identity(request).name:
        raise ValueError("you cannot disable the account you are signed in with")
    await change(request, _accounts(request).set_disabled, name, disabled)
    return see_other(request, url(request, "access"),
                     f"Account {name} {'disabled' if disabled else 'enabled'}.")


@allow(*ADMINS)
async def create_admin_key(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    row, secret = await change(request, _accounts(request).issue_admin_key,
                               field(data, "role", limit=4), field(data, "label", "", 200))
    return await render(request, "admin_key_issued.html", {"key": row, "secret": secret},
                        status=201)


@allow(*ADMINS)
async def revoke_admin_key(request: web.Request) -> web.StreamResponse:
    row = await change(request, _accounts(request).revoke_admin_key,
                       request.match_info["key_id"])
    return see_other(request, url(request, "access"), f"Admin API key {row['display']} revoked.")
