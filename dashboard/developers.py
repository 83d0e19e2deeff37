"""Developers: the list, one developer's usage, caps and keys, and key issue/revoke/expiry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard import charts, live, shown_once
from dashboard.appkeys import SESSION
from dashboard.auth import ADMINS, READERS, TEAM_ADMINS, TEAM_READERS, allow, require_team
from dashboard.budgets import caps_for_developer
from dashboard.cap_forms import LIMIT_WORDS, limits_of, save_budget, save_limits
from dashboard.model_caps_view import limits_context
from dashboard.params import Query, parse_expiry, query, text
from dashboard.render import (
    admin_state,
    change,
    field,
    fill_days,
    form,
    identity,
    last_days,
    redirect_back,
    render,
    report,
    see_other,
    today,
    url,
)
from ledger import reports
from ledger.catalog import NotFound
from ledger.lifecycle import Lifecycle
from ledger.periods import PERIODS, clock, day_start


async def find_developer(request: web.Request, developer_id: str) -> dict[str, Any]:
    state = admin_state(request)
    for dev in await state.db(state.catalog.developers, None, True):  # archived ones too
        if dev["id"] == developer_id:
            return dev
    raise NotFound(f"no developer {developer_id!r}")


async def find_member(request: web.Request, developer_id: str) -> dict[str, Any]:
    """A developer whose caps and keys the caller may change (an admin; a team's lead for its
    members), else 403."""
    dev = await find_developer(request, developer_id)
    require_team(request, dev["team_id"], change=True)
    return dev


async def _require_key_owner(request: web.Request, key_id: str) -> None:
    """A team lead changes only its members' keys."""
    if identity(request).can_change:
        return
    state = admin_state(request)
    key = next((k for k in await state.db(state.catalog.keys) if k["id"] == key_id), None)
    if key is None:
        raise NotFound(f"no key {key_id!r}")
    await find_member(request, key["developer_id"])


def key_status(key: dict[str, Any], now: datetime) -> str:
    if key["revoked_at"] is not None:
        return "revoked"
    expires = key["expires_at"]
    if expires is not None and expires <= now.replace(tzinfo=None):
        return "expired"
    return "active"


@allow(*READERS)
@query(text("team"))
async def developers(request: web.Request, q: Query) -> web.StreamResponse:
    state = admin_state(request)
    now = datetime.now(UTC)
    rows = await state.db(state.catalog.developers)
    keys = await state.db(state.catalog.keys)
    found = await live.spent(state.redis, state.keyspace,
                             [("developer", d["id"], p) for d in rows
                              for p in ("daily", "monthly")], now) or {}
    active: dict[str, int] = {}
    for key in keys:
        if key_status(key, now) == "active":
            active[key["developer_id"]] = active.get(key["developer_id"], 0) + 1
    for dev in rows:
        dev["today"] = found.get(("developer", dev["id"], "daily"), 0)
        dev["month"] = found.get(("developer", dev["id"], "monthly"), 0)
        dev["keys"] = active.get(dev["id"], 0)
    teams = await state.db(state.catalog.teams)
    return await render(request, "developers.html", {
        "developers": rows, "teams": teams, "team_filter": q["team"] or "",
        "archived": [d for d in await state.db(state.catalog.developers, None, True)
                     if d["archived_at"]]})


@allow(*ADMINS)
async def create_developer(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    data = await form(request)
    dev = await change(request, state.catalog.create_developer, field(data, "name", limit=200),
                       field(data, "email", limit=320), field(data, "team", limit=100))
    return see_other(request, url(request, "developer", developer_id=dev["id"]),
                     f"Developer {dev['name']} created. Issue a key below.")


async def usage_context(request: web.Request, developer_id: str) -> dict[str, Any]:
    """Usage chart, per-model month to date and recent requests of one developer."""
    start, end = last_days(30)
    trend = await report(request, reports.spend, start=start, end=end, grain="day",
                         dimension="developer", developer_id=developer_id)
    by_model = await report(request, reports.spend, start=today().replace(day=1), end=end,
                            grain="month", dimension="model", developer_id=developer_id)
    recent, total = await report(request, reports.requests_page, developer_id=developer_id,
                                 limit=10)
    _, refused = await report(request, reports.requests_page, developer_id=developer_id,
                              status="refused", start=day_start(start),
                              limit=0)
    return {
        "trend": charts.daily_bars(fill_days(trend, start, end), "Spend per day, last 30 days"),
        "by_model": by_model, "model_peak": max((r["cost_micros"] for r in by_model),
                                                default=0),
        "recent": recent, "request_count": total, "refused_count": refused,
    }


@allow(*TEAM_READERS)
async def developer(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    dev = await find_developer(request, request.match_info["developer_id"])
    require_team(request, dev["team_id"])
    now = datetime.now(UTC)
    keys = await state.db(state.catalog.keys, dev["id"])
    for key in keys:
        key["status"] = key_status(key, now)
    found = await live.spent(state.redis, state.keyspace,
                             [("developer", dev["id"], p) for p in PERIODS], now) or {}
    limits = await state.db(state.catalog.rate_limits)
    return await render(request, "developer.html", {
        "dev": dev, "keys": keys, "periods": PERIODS,
        "caps": await caps_for_developer(request, dev, now),
        "spent_today": found.get(("developer", dev["id"], "daily"), 0),
        "spent_month": found.get(("developer", dev["id"], "monthly"), 0),
        "limits": limits_of(limits, "developer", dev["id"]), "limit_words": LIMIT_WORDS,
        **await usage_context(request, dev["id"]),
        **await limits_context(request, [("developer", dev["id"])]),
        "teams": await state.db(state.catalog.teams),
        "memberships": await state.db(Lifecycle(state.catalog).memberships, dev["id"]),
    })


def _expiry(value: str) -> datetime | None:
    """A key expiry from a date box (the end of that UTC day); empty = never."""
    if not value:
        return None
    when = parse_expiry(value)
    if when < datetime.now(UTC):
        raise ValueError("an expiry date cannot be in the past")
    return when


@allow(*TEAM_ADMINS)
async def issue_key(request: web.Request) -> web.StreamResponse:
    """Issue a key, then redirect to the page that shows its secret once (post/redirect/get:
    a reload neither issues a second key nor shows the secret again)."""
    state = admin_state(request)
    dev = await find_member(request, request.match_info["developer_id"])
    data = await form(request)
    expires = _expiry(field(data, "expires", ""))
    key = await change(request, state.catalog.issue_key, dev["id"], expires,
                       label=field(data, "label", "", limit=100))
    token = shown_once.KEYS.put(request[SESSION].csrf, key)
    return see_other(request, url(request, "key_issued", developer_id=dev["id"], token=token))


@allow(*TEAM_ADMINS)
async def key_issued(request: web.Request) -> web.StreamResponse:
    """The new key's secret, to the session that issued it, on the first visit only."""
    state = admin_state(request)
    dev = await find_member(request, request.match_info["developer_id"])
    key = shown_once.KEYS.take(request[SESSION].csrf, request.match_info["token"])
    if key is None or key.developer_id != dev["id"]:
        return see_other(request, url(request, "developer", developer_id=dev["id"]),
                         "A new key's secret is shown once only; issue another key if it "
                         "was not copied.", "error")
    return await render(request, "key_issued.html", {
        "dev": dev, "key": key, "proxy_url": state.proxy_url})


@allow(*TEAM_ADMINS)
async def revoke_key(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    await _require_key_owner(request, request.match_info["key_id"])
    key = await change(request, state.catalog.revoke_key, request.match_info["key_id"])
    return redirect_back(request, f"Key {key['display']} revoked; the gateway refuses it "
                                  "within a second.", "ok")


@allow(*TEAM_ADMINS)
async def expire_key(request: web.Request) -> web.StreamResponse:
    state = admin_state(request)
    await _require_key_owner(request, request.match_info["key_id"])
    text = field(await form(request), "expires", "")
    when = _expiry(text) or datetime.now(UTC)
    key = await change(request, state.catalog.expire_key, request.match_info["key_id"], when)
    return redirect_back(request, f"Key {key['display']} now expires {clock(when)}.", "ok")


@allow(*TEAM_ADMINS)
async def set_developer_budget(request: web.Request) -> web.StreamResponse:
    developer_id = (await find_member(request, request.match_info["developer_id"]))["id"]
    return await save_budget(request, "developer", developer_id,
                             url(request, "developer", developer_id=developer_id),
                             "Personal cap saved.")


@allow(*TEAM_ADMINS)
async def set_developer_limits(request: web.Request) -> web.StreamResponse:
    developer_id = (await find_member(request, request.match_info["developer_id"]))["id"]
    return await save_limits(request, "developer", developer_id,
                             url(request, "developer", developer_id=developer_id))
