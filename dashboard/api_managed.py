"""Managed settings in the admin JSON API: the organization's default (`org`) and a policy per
team (by id or name), as GET /managed/settings serves them to signed-in Claude Code. POST
…/preview checks a document and answers its diff and checksum without saving, and `base`: the
checksum of what is saved, which a PUT may send as `If-Match` to be refused (409) when the
policy changed in between."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from dashboard.appkeys import IDENTITY
from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_error, json_response
from dashboard.state import ADMIN
from ledger.catalog import NotFound
from ledger.managed import ManagedSettings, SettingsChanged, checksum, diff, validate


def _managed(request: web.Request) -> ManagedSettings:
    return ManagedSettings(request.app[ADMIN].catalog)


@allow(*READERS)
async def list_managed(request: web.Request) -> web.Response:
    managed = _managed(request)
    return json_response({"data": await request.app[ADMIN].db(managed.all)})


@allow(*READERS)
async def get_managed(request: web.Request) -> web.Response:
    scope = request.match_info["scope"]
    found = await request.app[ADMIN].db(_managed(request).get, scope)
    if found is None:
        raise NotFound(f"no managed settings for {scope!r}")
    return json_response(found)


async def _proposed(request: web.Request) -> tuple[dict[str, Any], list[str], str]:
    """The settings in the body, checked, their diff from what is saved now, and the saved
    checksum ("" when nothing is)."""
    settings = validate(orjson.loads(await request.read() or b"null"))
    before = await request.app[ADMIN].db(_managed(request).get, request.match_info["scope"])
    return (settings, diff(before["settings"] if before else None, settings),
            before["checksum"] if before else "")


@allow(*ADMINS)
async def preview_managed(request: web.Request) -> web.Response:
    """POST: what a PUT of this body would change, and the checksum clients would get."""
    settings, changes, base = await _proposed(request)
    return json_response({"diff": changes, "checksum": checksum(settings), "base": base})


@allow(*ADMINS)
async def put_managed(request: web.Request) -> web.Response:
    state = request.app[ADMIN]
    settings, changes, _ = await _proposed(request)
    expected = request.headers.get("If-Match")
    try:
        saved = await state.db(_managed(request).set, request.match_info["scope"], settings,
                               actor=request[IDENTITY].actor,
                               expected=None if expected is None else expected.strip('" '))
    except SettingsChanged:
        return json_error(409, "the managed settings changed since If-Match's checksum; "
                               "preview again")
    await state.publish()
    return json_response({**saved, "diff": changes})


@allow(*ADMINS)
async def delete_managed(request: web.Request) -> web.Response:
    state, scope = request.app[ADMIN], request.match_info["scope"]
    if not await state.db(_managed(request).delete, scope, actor=request[IDENTITY].actor):
        raise NotFound(f"no managed settings for {scope!r}")
    await state.publish()
    return json_response({"deleted": scope})
