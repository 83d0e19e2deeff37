"""The dashboard's lifecycle forms: disable and re-enable a developer, move one to another
team from a day, rename and delete developers and teams (ledger/lifecycle.py has the rules).
The admin API (api_lifecycle.py) and so the CLI share `move_developer`."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from dashboard.auth import ADMINS, allow
from dashboard.formatting import zoned
from dashboard.params import parse_day
from dashboard.render import admin_state, change, field, form, see_other, url
from dashboard.state import AdminState
from ledger.lifecycle import Lifecycle, move_counters
from ledger.periods import day_start, local_day

log = logging.getLogger("meterd.dashboard")


def lifecycle(request: web.Request) -> Lifecycle:
    return Lifecycle(admin_state(request).catalog)


def since_day(text: str) -> date:
    """The first day of a move (the organization's; a later day schedules it); empty means
    today."""
    return parse_day(text, "move date") if text else local_day(datetime.now(UTC))


async def move_developer(state: AdminState, run: Any, developer: str, team: str,
                         since: date) -> dict[str, Any]:
    """Move a developer, with `run` the caller's audited change (render.change or the API's):
    roll up first, so the ledger holds what the counters hold, then pass the moved spend from
    the old team's live counters to the new team's."""
    if state.rollup is not None:
        try:
            await state.rollup.run_once()
        except RedisError as exc:  # the move stands; only the live counters lag
            log.warning("rollup before a move failed: %s", exc)
    moved: dict[str, Any] = await run(Lifecycle(state.catalog).move, developer, team, since)
    await move_counters(state.redis, state.keyspace, moved)
    return moved


@allow(*ADMINS)
async def set_developer_disabled(request: web.Request) -> web.StreamResponse:
    """Disable (offboard) or re-enable: every key refused, or working again, within a second."""
    developer_id = request.match_info["developer_id"]
    disabled = field(await form(request), "disabled", "1") == "1"
    dev = await change(request, lifecycle(request).set_disabled, developer_id, disabled)
    message = (f"{dev['name']} disabled: the gateway refuses their keys within a second."
               if disabled else f"{dev['name']} enabled again: their live keys work again.")
    return see_other(request, url(request, "developer", developer_id=dev["id"]), message)


@allow(*ADMINS)
async def move_developer_form(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    moved = await move_developer(
        admin_state(request), lambda fn, *a: change(request, fn, *a),
        request.match_info["developer_id"], field(data, "team", limit=100),
        since_day(field(data, "since", "")))
    team = await admin_state(request).db(lifecycle(request)._team, moved["team_id"])
    if moved["cancelled"]:
        message = f"The move to team {team['name']} on {moved['since']} is cancelled."
    elif moved["scheduled"]:
        message = (f"Moves to team {team['name']} on {zoned(day_start(moved['since']))}; "
                   "until then nothing changes.")
    else:
        message = (f"Moved to team {team['name']} from {moved['since']}; spend before that "
                   "day stays with the old team.")
    return see_other(request, url(request, "developer", developer_id=moved["developer_id"]),
                     message)


@allow(*ADMINS)
async def rename_developer(request: web.Request) -> web.StreamResponse:
    name = field(await form(request), "name", limit=200)
    dev = await change(request, lifecycle(request).rename_developer,
                       request.match_info["developer_id"], name)
    return see_other(request, url(request, "developer", developer_id=dev["id"]),
                     f"Renamed to {dev['name']}.")


@allow(*ADMINS)
async def delete_developer(request: web.Request) -> web.StreamResponse:
    dev = await change(request, lifecycle(request).delete_developer,
                       request.match_info["developer_id"])
    if dev["outcome"] == "archived":
        return see_other(request, url(request, "developer", developer_id=dev["id"]),
                         f"{dev['name']} archived: keys revoked, spend history kept.")
    return see_other(request, url(request, "developers"), f"{dev['name']} deleted.")


@allow(*ADMINS)
async def rename_team(request: web.Request) -> web.StreamResponse:
    name = field(await form(request), "name", limit=200)
    team = await change(request, lifecycle(request).rename_team, request.match_info["team_id"],
                        name)
    return see_other(request, url(request, "team", team_id=team["id"]),
                     f"Team renamed to {team['name']}.")


@allow(*ADMINS)
async def delete_team(request: web.Request) -> web.StreamResponse:
    team = await change(request, lifecycle(request).delete_team, request.match_info["team_id"])
    if team["outcome"] == "archived":
        return see_other(request, url(request, "team", team_id=team["id"]),
                         f"Team {team['name']} archived: its history stays in the reports.")
    return see_other(request, url(request, "teams"), f"Team {team['name']} deleted.")
