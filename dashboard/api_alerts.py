"""Alerts in the admin JSON API: destinations (URLs masked, as on the alerts page) listed,
added, removed and tested, and the delivery log.

POST /alerts/destinations takes `{"label", "url", "events": [...], "team"?}` (no team: the
organization's); the URL is a secret and never comes back in full."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from aiohttp import web

from dashboard.alerts_view import alerter
from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_response, read_body
from dashboard.params import Query, query, whole
from dashboard.render import admin_state, identity
from ledger.alerts import Destinations


def _destinations(request: web.Request) -> Destinations:
    return Destinations(admin_state(request).catalog)


@allow(*READERS)
async def list_destinations(request: web.Request) -> web.Response:
    return json_response({"data": await admin_state(request).db(_destinations(request).shown)})


@allow(*ADMINS)
async def add_destination(request: web.Request) -> web.Response:
    body = await read_body(request)
    team = body.text("team", "")
    added = await admin_state(request).db(
        _destinations(request).add, "team" if team else "org", team, body.text("label"),
        body.text("url"), body.texts("events"), actor=identity(request).actor)
    return json_response(added, 201)


@allow(*ADMINS)
async def remove_destination(request: web.Request) -> web.Response:
    dest_id = request.match_info["dest_id"]
    await admin_state(request).db(_destinations(request).remove, dest_id,
                                  actor=identity(request).actor)
    return json_response({"removed": dest_id})


@allow(*ADMINS)
async def test_destination(request: web.Request) -> web.Response:
    """Send a test message now; the outcome is also a row of the log."""
    state = admin_state(request)
    dest = await state.db(_destinations(request).secret, request.match_info["dest_id"])
    ok = await alerter(request).send("test", f"test:{dest['id']}", dest, "meterd test alert",
                                     f"A test from meterd, sent by {identity(request).name}.")
    entry = (await state.db(_destinations(request).log, 1))[0]
    return json_response({"sent": ok, "log": _logged(entry)})


@allow(*READERS)
@query(whole("limit", 200, 1, 1000))
async def alert_log(request: web.Request, q: Query) -> web.Response:
    """What was sent or failed and why, newest first (`limit`, default 200, at most 1000)."""
    rows = await admin_state(request).db(_destinations(request).log, q["limit"])
    return json_response({"data": [_logged(r) for r in rows]})


def _logged(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": row["at"].replace(tzinfo=UTC).isoformat()}
