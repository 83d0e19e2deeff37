"""Models per team in the admin JSON API: the organization's default list (`org`) and a list
per team (by id or name), which every proxy enforces on /v1/messages and shows on /v1/models.
PUT takes `{"models": ["claude-sonnet-4-6", "claude-haiku-*"]}`; DELETE clears a list."""

from __future__ import annotations

from aiohttp import web

from dashboard.appkeys import IDENTITY
from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_response, read_body
from dashboard.state import ADMIN
from ledger.catalog import NotFound
from ledger.models_allowed import AllowedModels


def _allowed(request: web.Request) -> AllowedModels:
    return AllowedModels(request.app[ADMIN].catalog)


@allow(*READERS)
async def list_allowed_models(request: web.Request) -> web.Response:
    return json_response({"data": await request.app[ADMIN].db(_allowed(request).all)})


@allow(*ADMINS)
async def put_allowed_models(request: web.Request) -> web.Response:
    state, body = request.app[ADMIN], await read_body(request)
    saved = await state.db(_allowed(request).set, request.match_info["scope"],
                           body.texts("models"), actor=request[IDENTITY].actor)
    await state.publish()
    return json_response(saved)


@allow(*ADMINS)
async def delete_allowed_models(request: web.Request) -> web.Response:
    state, scope = request.app[ADMIN], request.match_info["scope"]
    if not await state.db(_allowed(request).clear, scope, actor=request[IDENTITY].actor):
        raise NotFound(f"no model list for {scope!r}")
    await state.publish()
    return json_response({"cleared": scope})
