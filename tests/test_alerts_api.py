"""The admin JSON API for alerts and increase requests: destinations added (URL masked),
tested against a loopback webhook and removed, the log read back; a developer asks for more
with their gateway key and an admin approves (a grant) or denies; bad input is a 400 in the
Anthropic error envelope."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestServer

from ledger.money import parse_usd
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard

pytest_plugins = ("tests.webhook",)  # the webhook receiver fixture

V1 = "/admin/api/v1"


async def _call(dashboard: Dashboard, method: str, path: str, key: str,
                body: Any = None) -> tuple[int, Any]:
    async with dashboard.client.request(method, V1 + path, json=body,
                                        headers={"x-api-key": key}) as resp:
        return resp.status, await resp.json()


def _invalid(reply: Any, *words: str) -> bool:
    error = reply["error"]
    return reply["type"] == "error" and error["type"] == "invalid_request_error" and \
        all(w in error["message"] for w in words)


async def test_a_destination_is_added_masked_tested_logged_and_removed(
        dashboard: Dashboard, webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    rw = await dashboard.admin_key("rw")
    url = f"json://127.0.0.1:{server.port}/hook?token=s3cret-token"

    status, reply = await _call(dashboard, "POST", "/alerts/destinations", rw, {
        "label": "ops hook", "url": "gopher://nowhere-s3cret", "events": ["blocked"]})
    assert status == 400 and _invalid(reply, "apprise") and "s3cret" not in str(reply)
    status, reply = await _call(dashboard, "POST", "/alerts/destinations", rw, {
        "label": "ops hook", "url": url, "events": ["fallback", "nonsense"]})
    assert status == 400 and _invalid(reply, "choose events")
    status, reply = await _call(dashboard, "POST", "/alerts/destinations", rw, {
        "label": "ops hook", "url": url, "events": "fallback"})
    assert status == 400 and _invalid(reply, "events must be a list of strings")

    status, added = await _call(dashboard, "POST", "/alerts/destinations", rw, {
        "label": "ops hook", "url": url, "events": ["fallback", "replay"]})
    assert status == 201
    assert (added["scope"], added["events"]) == ("org", ["fallback", "replay"])
    assert "s3cret" not in str(added)
    ro = await dashboard.admin_key("ro")
    status, listed = await _call(dashboard, "GET", "/alerts/destinations", ro)
    assert status == 200 and [d["id"] for d in listed["data"]] == [added["id"]]
    assert "s3cret" not in str(listed)

    status, tested = await _call(dashboard, "POST", f"/alerts/destinations/{added['id']}/test",
                                 rw, {})
    assert status == 200 and tested["sent"] is True
    assert [m["title"] for m in got] == ["meterd test alert"]
    status, log = await _call(dashboard, "GET", "/alerts/log?limit=5", ro)
    assert status == 200
    assert [(e["event"], e["destination_id"], e["status"], e["attempts"], e["label"])
            for e in log["data"]] == [("test", added["id"], "sent", 1, "ops hook")]
    assert log["data"][0]["at"].endswith("+00:00")  # ISO 8601, UTC
    status, reply = await _call(dashboard, "GET", "/alerts/log?limit=0", ro)
    assert status == 400 and _invalid(reply, "limit")

    status, _ = await _call(dashboard, "DELETE", f"/alerts/destinations/{added['id']}", rw)
    assert status == 200
    status, reply = await _call(dashboard, "DELETE", f"/alerts/destinations/{added['id']}", rw)
    assert status == 404 and reply["error"]["type"] == "not_found_error"
    assert (await _call(dashboard, "GET", "/alerts/destinations", ro))[1]["data"] == []


async def test_a_developer_asks_with_their_key_and_an_admin_approves_or_denies(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    ada = await gw.developer("Ada", "platform")
    rw = await dashboard.admin_key("rw")
    status, reply = await _call(dashboard, "POST", "/increases", ada,
                                {"amount_usd": "lots", "days": 7, "reason": "x"})
    assert status == 400 and _invalid(reply, "amount_usd")
    status, reply = await _call(dashboard, "POST", "/increases", ada,
                                {"amount_usd": "25", "reason": "x"})
    assert status == 400 and _invalid(reply, "days is required")
    status, asked = await _call(dashboard, "POST", "/increases", ada, {
        "amount_usd": "25.50", "days": 7, "reason": "a migration", "developer": "someone"})
    assert status == 201
    dev_id = next(d["id"] for d in await gw.admin.db(gw.admin.catalog.developers)
                  if d["name"] == "Ada")
    assert (asked["developer_id"], asked["amount_micros"], asked["status"]) == (
        dev_id, parse_usd("25.50"), "pending")  # the key's developer, never the body's
    status, second = await _call(dashboard, "POST", "/increases", ada,
                                 {"amount_usd": 10, "days": 1, "reason": "another"})
    assert status == 201
    # A gateway key is no credential elsewhere in the API.
    assert (await _call(dashboard, "GET", "/increases", ada))[0] == 401

    status, reply = await _call(dashboard, "GET", "/increases?status=maybe", rw)
    assert status == 400 and _invalid(reply, "status must be")
    status, listed = await _call(dashboard, "GET", "/increases?status=pending", rw)
    assert status == 200 and {r["id"] for r in listed["data"]} == {asked["id"], second["id"]}
    status, approved = await _call(dashboard, "POST", f"/increases/{asked['id']}/approve", rw,
                                   {"amount_usd": "20", "days": 3})
    assert status == 200
    assert (approved["status"], approved["granted_micros"]) == ("approved", 20_000_000)
    status, reply = await _call(dashboard, "POST", f"/increases/{asked['id']}/deny", rw,
                                {"reason": "late"})
    assert status == 400 and _invalid(reply, "already approved")
    status, grants = await _call(dashboard, "GET", "/grants", rw)
    assert [(g["scope"], g["scope_id"], g["amount_micros"]) for g in grants["data"]] == [
        ("developer", dev_id, 20_000_000)]
    status, reply = await _call(dashboard, "POST", f"/increases/{second['id']}/deny", rw, {})
    assert status == 400 and _invalid(reply, "reason is required")
    status, denied = await _call(dashboard, "POST", f"/increases/{second['id']}/deny", rw,
                                 {"reason": "not this month"})
    assert status == 200 and denied["status"] == "denied"
    status, reply = await _call(dashboard, "POST", "/increases/nope/approve", rw,
                                {"amount_usd": "1", "days": 1})
    assert status == 404
