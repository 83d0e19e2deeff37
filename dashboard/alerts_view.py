"""The alerts page: where alerts go (URLs masked), a test button per destination, and the log
of what was sent or failed and why."""

from __future__ import annotations

from aiohttp import web

from dashboard.auth import ADMINS, READERS, allow
from dashboard.render import admin_state, field, form, identity, render, see_other, url
from ledger.alerts import EVENTS, Alerter, Destinations


def _destinations(request: web.Request) -> Destinations:
    return Destinations(admin_state(request).catalog)


def alerter(request: web.Request) -> Alerter:
    state = admin_state(request)
    return Alerter(_destinations(request), state.db, state.redis, state.keyspace)


@allow(*READERS)
async def alerts_page(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    dests = _destinations(request)
    teams = await state.db(state.catalog.teams)
    return await render(request, "alerts.html", {
        "destinations": await state.db(dests.shown), "log": await state.db(dests.log),
        "events": EVENTS, "teams": teams, "team_names": {t["id"]: t["name"] for t in teams},
        "budgets": await state.db(state.catalog.budgets),
        "own_thresholds": await state.db(dests.thresholds)})


@allow(*ADMINS)
async def add_destination(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    team = data.get("team") or ""
    events = [e for e in data.getall("events", []) if isinstance(e, str)]
    state = admin_state(request)
    await state.db(_destinations(request).add, "team" if team else "org", str(team),
                   field(data, "label", limit=100), field(data, "url", limit=2000), events,
                   actor=identity(request).actor)
    return see_other(request, url(request, "alerts"), "Destination added.")


@allow(*ADMINS)
async def set_thresholds(request: web.Request) -> web.StreamResponse:
    """A cap's own soft thresholds, e.g. "50, 80"; empty: the defaults again."""
    data = await form(request)
    raw = [p.strip().rstrip("%") for p in field(data, "thresholds", "", 100).split(",")]
    if not all(p.isdigit() for p in raw if p):
        raise ValueError("thresholds are whole percentages, e.g. 50, 80, 95")
    state = admin_state(request)
    await state.db(_destinations(request).set_thresholds, field(data, "budget", limit=40),
                   [int(p) for p in raw if p], actor=identity(request).actor)
    return see_other(request, url(request, "alerts"), "Thresholds saved.")


@allow(*ADMINS)
async def remove_destination(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    await state.db(_destinations(request).remove, request.match_info["dest_id"],
                   actor=identity(request).actor)
    return see_other(request, url(request, "alerts"), "Destination removed.")


@allow(*ADMINS)
async def test_destination(request: web.Request) -> web.StreamResponse:
    """Send a test message now (no dedupe: pressing it again sends again)."""
    state = admin_state(request)
    dest = await state.db(_destinations(request).secret, request.match_info["dest_id"])
    ok = await alerter(request).send("test", f"test:{dest['id']}", dest,
                                     "meterd test alert",
                                     f"A test from meterd, sent by {identity(request).name}.")
    return see_other(request, url(request, "alerts"),
                     "Test sent." if ok else "The test failed: see the log below.",
                     "ok" if ok else "error")
