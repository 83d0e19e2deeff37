"""The admin API's lifecycle operations (ledger/lifecycle.py has the rules): disable and
re-enable developers, move them between teams from a day, rename and delete developers and
teams, and the memberships history. Used by the `meterd` CLI too."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dashboard.api import _change, _state
from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_response, read_body
from dashboard.lifecycle import move_developer, since_day
from ledger.lifecycle import Lifecycle


def _lifecycle(request: web.Request) -> Lifecycle:
    return Lifecycle(_state(request).catalog)


def _developer(request: web.Request) -> str:
    return request.match_info["developer_id"]


@allow(*ADMINS)
async def disable_developer(request: web.Request) -> web.Response:
    return json_response(await _change(request, _lifecycle(request).set_disabled,
                                       _developer(request), True))


@allow(*ADMINS)
async def enable_developer(request: web.Request) -> web.Response:
    return json_response(await _change(request, _lifecycle(request).set_disabled,
                                       _developer(request), False))


@allow(*ADMINS)
async def move(request: web.Request) -> web.Response:
    """{team, since}: `since` a day on the organization's calendar (today when absent); a
    later day schedules the move (`scheduled`), and a move back to the current team cancels
    a scheduled one."""
    body = await read_body(request)

    async def run(fn: Any, *args: Any) -> Any:
        return await _change(request, fn, *args)

    moved = await move_developer(_state(request), run, _developer(request), body.text("team"),
                                 since_day(body.text("since", "")))
    return json_response(moved)


@allow(*READERS)
async def memberships(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response({"data": await state.db(_lifecycle(request).memberships,
                                                 _developer(request))})


@allow(*ADMINS)
async def update_developer(request: web.Request) -> web.Response:
    """{name}: a rename (reports follow the id, so it shows everywhere)."""
    body = await read_body(request)
    return json_response(await _change(request, _lifecycle(request).rename_developer,
                                       _developer(request), body.text("name")))


@allow(*ADMINS)
async def delete_developer(request: web.Request) -> web.Response:
    """Erased without history, else archived: `outcome` says which."""
    return json_response(await _change(request, _lifecycle(request).delete_developer,
                                       _developer(request)))


@allow(*ADMINS)
async def update_team(request: web.Request) -> web.Response:
    body = await read_body(request)
    return json_response(await _change(request, _lifecycle(request).rename_team,
                                       request.match_info["team_id"], body.text("name")))


@allow(*ADMINS)
async def delete_team(request: web.Request) -> web.Response:
    """Refused with current members; archived with history; else erased."""
    return json_response(await _change(request, _lifecycle(request).delete_team,
                                       request.match_info["team_id"]))
