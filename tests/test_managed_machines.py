"""The dashboard's list of machines and the managed settings they run: current (their team's
policy, else the organization's), stale (one served before), edited (a checksum meterd never
served) or none (no checksum sent)."""

from __future__ import annotations

from typing import Any

from ledger.managed import ManagedSettings
from proxy.managed_seen import HEADER, SEEN
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard, one

HINTS = {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]}


async def test_machines_are_listed_as_current_stale_edited_or_none(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    keys = {name: await gw.developer(name, team) for name, team in (
        ("Ada", "platform"), ("Bob", "platform"), ("Cy", "compilers"), ("Dee", "platform"),
        ("Eve", "compilers"), ("Fay", "compilers"))}
    managed = ManagedSettings(gw.admin.catalog)
    first = (await gw.change(managed.set, "org", {"env": HINTS}))["checksum"]
    team = (await gw.change(managed.set, "platform", {"env": HINTS, "model": "opus"}))[
        "checksum"]
    org = (await gw.change(managed.set, "org", {"env": {**HINTS, "X": "2"}}))["checksum"]
    sends: dict[str, Any] = {"Ada": team, "Bob": first, "Cy": first, "Dee": "sha256:mine",
                             "Eve": None, "Fay": org}
    for name, sent in sends.items():
        headers = {"x-api-key": keys[name], **({HEADER: sent} if sent else {})}
        async with gw.client.post("/v1/messages", json=BODY, headers=headers) as r:
            assert r.status == 200
    await gw.app[SEEN].flush(gw.proxy.redis, gw.proxy.keyspace.managed_seen)

    admin = await dashboard.signed_in("admin")
    page = await admin.page("/admin/managed")
    rows = page.select("#managed-machines tbody tr")
    status = {one(r, "td:nth-child(1)").get_text(strip=True): r["data-status"] for r in rows}
    assert status == {"Ada": "current", "Bob": "stale", "Cy": "stale", "Dee": "edited",
                      "Eve": "none", "Fay": "current"}
    assert [r["data-status"] for r in rows][:1] == ["edited"]  # problems first
    assert one(page, "#machine-counts").get_text(" ", strip=True) == (
        "1 edited 2 stale 1 none 2 current")
    assert page.select_one("#hints-off") is None
    policies = {r["data-scope"]: r.get_text(" ", strip=True)
                for r in page.select("#managed-policies tbody tr")}
    assert org[:19] in policies["org"] and "the organization's" in " ".join(
        v for k, v in policies.items() if k != "org" and "compilers" in v)
