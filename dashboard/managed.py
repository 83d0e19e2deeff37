"""Managed settings in the dashboard: the organization's default and each team's policy, edited
as JSON (checked, shown as a diff before anything is saved, audited), and the machines that run
stale, edited or no managed settings (from the checksums Claude Code sends, proxy.managed_seen).

Saving carries the checksum the preview was made against: if the policy changed in between
(another admin, the API, the CLI), the save is refused with 409 and the diff is shown again
against what is saved now, so nobody overwrites a change they never saw.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from dashboard.auth import ADMINS, allow
from dashboard.render import admin_state, change, field, form, render, see_other, url
from ledger.catalog import NotFound
from ledger.managed import (
    ORG,
    ManagedSettings,
    SettingsChanged,
    SettingsInvalid,
    canonical,
    checksum,
    diff,
    validate,
)

HINT_ENV = "CLAUDE_CODE_GATEWAY_HINT_HEADERS"


def _managed(request: web.Request) -> ManagedSettings:
    return ManagedSettings(admin_state(request).catalog)


def pretty(settings: dict[str, Any]) -> str:
    return orjson.dumps(settings, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode()


async def _scope(request: web.Request) -> tuple[str, str]:
    """The scope in the path ("org" or a team id) and what to call it."""
    scope = request.match_info["scope"]
    if scope == ORG:
        return scope, "Organization default"
    state = admin_state(request)
    for team in await state.db(state.catalog.teams):
        if team["id"] == scope:
            return scope, f"Team {team['name']}"
    raise NotFound(f"no team {scope!r}")


@allow(*ADMINS)
async def managed_page(request: web.Request) -> web.StreamResponse:
    """Every policy, and the machines whose managed settings are not their team's."""
    state = admin_state(request)
    managed = _managed(request)
    policies = {("org" if p["scope"] == ORG else p["scope_id"]): p
                for p in await state.db(managed.all)}
    teams = await state.db(state.catalog.teams)
    machines, redis_error = [], ""
    try:
        seen = await state.redis.hgetall(state.keyspace.managed_seen)
        machines = await state.db(managed.machines, seen)
    except (RedisError, OSError) as exc:
        redis_error = f"Redis did not answer ({type(exc).__name__})"
    counts = {s: sum(m["status"] == s for m in machines)
              for s in ("edited", "stale", "none", "current")}
    return await render(request, "managed.html", {
        "policies": policies, "teams": teams, "machines": machines, "counts": counts,
        "redis_error": redis_error, "hint_env": HINT_ENV,
        "hints_on": any(p["settings"].get("env", {}).get(HINT_ENV) == "1"
                        for p in policies.values()),
    })


async def _editor(request: web.Request, text: str, status: int = 200, error: str = "",
                  proposed: dict[str, Any] | None = None) -> web.Response:
    """The editor of one scope; with `proposed`, its diff from what is saved and Save."""
    scope, title = await _scope(request)
    saved = await admin_state(request).db(_managed(request).get, scope)
    preview = None
    if proposed is not None:
        preview = {"diff": diff(saved["settings"] if saved else None, proposed),
                   "checksum": checksum(proposed), "text": canonical(proposed).decode(),
                   "base": saved["checksum"] if saved else ""}
    return await render(request, "managed_edit.html", {
        "scope": scope, "title": title, "saved": saved, "text": text, "error": error,
        "preview": preview}, status=status)


def _parse(text: str) -> dict[str, Any]:
    try:
        settings = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SettingsInvalid(f"not valid JSON: {exc}") from None
    return validate(settings)


@allow(*ADMINS)
async def edit_managed(request: web.Request) -> web.StreamResponse:
    scope, _ = await _scope(request)
    saved = await admin_state(request).db(_managed(request).get, scope)
    return await _editor(request, pretty(saved["settings"]) if saved else "{}")


@allow(*ADMINS)
async def preview_managed(request: web.Request) -> web.StreamResponse:
    """What saving the text would change; nothing is saved."""
    text = field(await form(request), "settings", limit=1024 * 1024)
    try:
        proposed = _parse(text)
    except SettingsInvalid as exc:
        return await _editor(request, text, 400, str(exc))
    return await _editor(request, text, proposed=proposed)


@allow(*ADMINS)
async def save_managed(request: web.Request) -> web.StreamResponse:
    """Save what was previewed, unless the policy changed since the preview (409)."""
    scope, title = await _scope(request)
    data = await form(request)
    text = field(data, "settings", limit=1024 * 1024)
    base = data.get("base")
    if not isinstance(base, str):
        raise ValueError("save from the preview: it says what you are changing")
    try:
        proposed = _parse(text)
        await change(request, _managed(request).set, scope, proposed, expected=base)
    except SettingsInvalid as exc:
        return await _editor(request, text, 400, str(exc))
    except SettingsChanged:
        return await _editor(request, text, 409, "Someone changed these settings after your "
                             "preview. Below is the diff against what is saved now; save "
                             "again to replace it.", proposed)
    return see_other(request, url(request, "managed"),
                     f"{title}: managed settings saved ({checksum(proposed)[:19]}…). "
                     "Claude Code picks them up at its next hourly poll or restart.")


@allow(*ADMINS)
async def delete_managed(request: web.Request) -> web.StreamResponse:
    scope, title = await _scope(request)
    if not await change(request, _managed(request).delete, scope):
        raise NotFound(f"{title} has no managed settings")
    fallback = "" if scope == ORG else " Its developers get the organization's default."
    return see_other(request, url(request, "managed"),
                     f"{title}: managed settings removed.{fallback}")
