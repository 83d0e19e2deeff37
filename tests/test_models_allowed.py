"""Models per team: a team's list (else the organization's) is enforced before admission with
the contract's 400 naming the model, /v1/models answers the caller's list, and a change made in
the catalog (admin API, CLI, dashboard) reaches every proxy on its next policy reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from ledger.models_allowed import AllowedModels, Allowlist, ModelsInvalid, validate
from tests.conftest import Gateway, Upstream
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard, attr, one
from tests.fakes.gateways import Served, StartGateway, bedrock_provider
from tests.operator_cli import operator_cli
from tests.test_dashboard_browser import _sign_in
from tests.test_processes import BODY, REAL_ONLY, seconds_until_refused

pytest_plugins = ("tests.fakes.fixtures", "tests.sso_fixtures")  # fake Bedrock, Chromium
HELLO = [{"role": "user", "content": "Hi"}]


def sdk(gw: Gateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)


@pytest.mark.parametrize("model", [
    "claude-sonnet-4-6", "CLAUDE-SONNET-4-6", "claude-sonnet-4-6-20260115",
    "claude-sonnet-4-6[1m]", "us.anthropic.claude-sonnet-4-6-v1:0", "claude-haiku-4-5",
    "claude-haiku-4-5-20251001"])
def test_an_entry_allows_its_model_in_every_spelling_and_globs_match(model: str) -> None:
    assert Allowlist(["claude-sonnet-4-6", "claude-haiku-*"]).allows(model)


@pytest.mark.parametrize("model", ["claude-opus-4-8", "claude-sonnet-4-5", "claude-sonnet-4",
                                   "gpt-5", ""])
def test_models_off_the_list_are_not_allowed(model: str) -> None:
    assert not Allowlist(["claude-sonnet-4-6", "claude-haiku-*"]).allows(model)


def test_the_list_shown_is_its_ids_and_the_offered_models_a_glob_allows() -> None:
    allowed = Allowlist(["claude-sonnet-4-6", "claude-haiku-*"])
    offered = ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5")
    assert allowed.listed(offered) == ["claude-sonnet-4-6", "claude-haiku-4-5"]


@pytest.mark.parametrize("models", [[], "claude-sonnet-4-6", [""], ["two words"], [7],
                                    ["x" * 201], None])
def test_a_list_that_cannot_be_enforced_is_refused(models: Any) -> None:
    with pytest.raises(ModelsInvalid):
        validate(models)


def test_lists_are_lowercased_without_repeats() -> None:
    assert validate([" Claude-Sonnet-4-6", "claude-sonnet-4-6", "claude-haiku-*"]) == [
        "claude-sonnet-4-6", "claude-haiku-*"]


async def allow(gw: Gateway, scope: str, *models: str) -> None:
    await gw.change(AllowedModels(gw.admin.catalog).set, scope, list(models))


async def test_the_sdk_gets_a_400_naming_a_model_its_team_may_not_use(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await allow(gateway, "platform", "claude-haiku-*")
    async with sdk(gateway, key) as client:
        with pytest.raises(anthropic.BadRequestError) as err:
            await client.messages.create(model="claude-opus-4-8", max_tokens=64,
                                         messages=HELLO)
        assert err.value.status_code == 400
        assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert "'claude-opus-4-8' is not allowed for team platform" in err.value.message
        assert "claude-haiku-*" in err.value.message
        with pytest.raises(anthropic.BadRequestError, match="claude-opus-4-8"):
            await client.messages.count_tokens(model="claude-opus-4-8", messages=HELLO)
        # Refused before admission: nothing reached the provider; the refusal is one $0 row
        # of the request log (count_tokens is never metered).
        assert not gateway.upstream.recorded
        [refused] = await gateway.settled(1)
        assert refused["cost_micros"] == "0" and refused["refusal"].startswith("model: ")
        ok = await client.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                          messages=HELLO)
        assert ok.content[0].type == "text"
        counted = await client.messages.count_tokens(model="claude-haiku-4-5", messages=HELLO)
        assert counted.input_tokens > 0
    assert len(await gateway.settled(2)) == 2  # the refusal, then the served request


async def test_an_advisor_tool_cannot_call_a_model_off_the_list(gateway: Gateway) -> None:
    key = await gateway.developer()
    await allow(gateway, "platform", "claude-sonnet-4-6")
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": HELLO,
            "tools": [{"type": "advisor_20260301", "name": "advisor",
                       "model": "claude-opus-4-8"}]}
    r = await gateway.client.post("/v1/messages", data=orjson.dumps(body),
                                  headers={"x-api-key": key})
    assert r.status == 400
    assert "'claude-opus-4-8' is not allowed" in (await r.json())["error"]["message"]


async def test_the_org_list_applies_to_teams_without_their_own(gateway: Gateway) -> None:
    ada = await gateway.developer("Ada", "platform")
    bo = await gateway.developer("Bo", "research")

    async def status(key: str, model: str) -> int:
        r = await gateway.client.post("/v1/messages", headers={"x-api-key": key},
                                      data=orjson.dumps({"model": model, "max_tokens": 8,
                                                         "messages": HELLO}))
        await r.read()
        return r.status

    assert await status(ada, "claude-opus-4-8") == 200  # no list anywhere: any model
    await allow(gateway, "org", "claude-sonnet-4-6")
    await allow(gateway, "research", "claude-opus-4-8")
    assert (await status(ada, "claude-opus-4-8"), await status(ada, "claude-sonnet-4-6")) == (
        400, 200)
    # The team's own list replaces the org's; it does not add to it.
    assert (await status(bo, "claude-opus-4-8"), await status(bo, "claude-sonnet-4-6")) == (
        200, 400)
    await gateway.change(AllowedModels(gateway.admin.catalog).clear, "research")
    assert await status(bo, "claude-opus-4-8") == 400


async def test_v1_models_answers_the_callers_list(gateway: Gateway) -> None:
    ada = await gateway.developer("Ada", "platform")
    bo = await gateway.developer("Bo", "research")
    await allow(gateway, "platform", "claude-haiku-*", "claude-sonnet-4-6")
    async with sdk(gateway, ada) as client:
        ids = [m.id async for m in client.models.list()]
    assert ids == ["claude-sonnet-4-6", "claude-haiku-4-5"]
    async with sdk(gateway, bo) as client:  # no list: the configured models
        ids = [m.id async for m in client.models.list()]
    assert ids == ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"]


@REAL_ONLY
async def test_a_new_list_reaches_another_proxy_within_one_second(
        gateway: Gateway, second_proxy: str) -> None:
    key = await gateway.developer()

    async def restrict() -> None:  # BODY asks for claude-sonnet-4-6
        await gateway.admin.db(AllowedModels(gateway.admin.catalog).set, "platform",
                               ["claude-haiku-4-5"])

    code, elapsed = await seconds_until_refused(gateway, second_proxy, key, restrict)
    assert code == 400
    assert elapsed < 1.0, f"the model list took {elapsed:.2f}s to reach the second process"
    assert b"claude-sonnet-4-6" in BODY


async def test_admin_api_sets_lists_and_clears_with_audit(dashboard: Dashboard) -> None:
    client, admin = dashboard.client, dashboard.gateway.admin
    await dashboard.gateway.developer("Ada", "platform")
    rw = {"Authorization": f"Bearer {await dashboard.admin_key('rw')}"}
    ro = {"x-api-key": await dashboard.admin_key("ro")}
    r = await client.put("/admin/api/v1/allowed_models/platform", headers=rw,
                         json={"models": ["Claude-Haiku-*", "claude-sonnet-4-6"]})
    assert r.status == 200, await r.text()
    assert (await r.json())["models"] == ["claude-haiku-*", "claude-sonnet-4-6"]
    r = await client.put("/admin/api/v1/allowed_models/org", headers=ro,
                         json={"models": ["claude-haiku-4-5"]})
    assert r.status == 403
    r = await client.put("/admin/api/v1/allowed_models/org", headers=rw, json={"models": []})
    assert r.status == 400
    assert "at least one model" in (await r.json())["error"]["message"]
    r = await client.put("/admin/api/v1/allowed_models/nope", headers=rw,
                         json={"models": ["claude-haiku-4-5"]})
    assert r.status == 404
    r = await client.get("/admin/api/v1/allowed_models", headers=ro)
    (row,) = (await r.json())["data"]
    assert (row["scope"], row["team_name"]) == ("team", "platform")
    await dashboard.gateway.proxy.refresh_policy()  # published to the proxies
    assert dashboard.gateway.proxy.policy.models == {
        row["scope_id"]: ["claude-haiku-*", "claude-sonnet-4-6"]}
    r = await client.delete("/admin/api/v1/allowed_models/platform", headers=rw)
    assert r.status == 200
    r = await client.delete("/admin/api/v1/allowed_models/platform", headers=rw)
    assert r.status == 404
    actions = [a["action"] for a in await admin.db(admin.catalog.audit)]
    assert actions[:2] == ["allowed_models.clear", "allowed_models.set"]


async def test_models_cards_set_and_clear_the_org_and_team_lists(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    team = (await gw.admin.db(gw.admin.catalog.teams))[0]["id"]
    admin = await dashboard.signed_in("admin")
    teams = await admin.page("/admin/teams")
    card = one(teams, "#models")
    assert "Any model" in card.get_text()
    assert teams.title is not None and "Any model" not in teams.title.get_text()  # once, here
    status, _, _ = await admin.post(attr(one(card, "#set-models"), "action"),
                                    {"models": "claude-sonnet-4-6"})
    assert status == 303
    card = one(await admin.page("/admin/teams"), "#models")
    assert [c.get_text() for c in card.select("#allowed-models code")] == ["claude-sonnet-4-6"]
    page = await admin.page(f"/admin/teams/{team}")
    card = one(page, "#models")
    assert "organization's default" in card.get_text()
    assert [c.get_text() for c in card.select("#allowed-models code")] == ["claude-sonnet-4-6"]
    status, _, _ = await admin.post(f"/admin/teams/{team}/models",
                                    {"models": "claude-haiku-*, claude-opus-4-8"})
    assert status == 303
    await gw.proxy.refresh_policy()
    r = await gw.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert r.status == 400  # BODY asks for claude-sonnet-4-6, no longer on the list
    card = one(await admin.page(f"/admin/teams/{team}"), "#models")
    assert [c.get_text() for c in card.select("#allowed-models code")] == [
        "claude-haiku-*", "claude-opus-4-8"]
    # Without the page's CSRF token the form changes nothing.
    status, _, _ = await admin.post(f"/admin/teams/{team}/models/clear", csrf=False)
    assert status == 403
    status, _, _ = await admin.post(f"/admin/teams/{team}/models/clear")
    assert status == 303
    card = one(await admin.page(f"/admin/teams/{team}"), "#models")
    assert "organization's default" in card.get_text()
    finance = await dashboard.signed_in("finance")
    assert one(await finance.page(f"/admin/teams/{team}"), "#models").select("form") == []
    assert one(await finance.page("/admin/teams"), "#models").select("form") == []


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
def test_cli_models_set_list_and_clear(tmp_path: Path, upstream: Upstream,
                                       redis_url: str) -> None:
    cli = operator_cli(tmp_path / "data")

    cli("team", "create", "platform")
    cli("models", "set", "platform", "claude-sonnet-4-6,claude-haiku-*")
    cli("models", "set", "org", "claude-haiku-4-5")
    listed = cli("models", "list").splitlines()
    assert listed[1].split() == ["org", "claude-haiku-4-5"]
    assert listed[2].split() == ["team", "platform", "claude-sonnet-4-6", "claude-haiku-*"]
    cli("models", "clear", "platform")
    assert "platform" not in cli("models", "list")
    assert "no model list for 'platform'" in cli("models", "clear", "platform", code=2)
    assert "at least one model" in cli("models", "set", "org", ",", code=2)


async def test_a_refused_model_is_refused_before_admission(gateway: Gateway) -> None:
    """A developer at their cap asking for a model off the list hears about the model (400),
    not about the cap (429): the list is checked first and reserves nothing."""
    key = await gateway.developer()
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "ada@example.com",
                         "daily", 0)
    await allow(gateway, "platform", "claude-haiku-4-5")
    r = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert r.status == 400, await r.text()
    await allow(gateway, "platform", "claude-sonnet-4-6")
    r = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert r.status == 429


async def test_bedrock_format_clients_are_held_to_the_list_too(start_gateway: StartGateway,
                                                                bedrock: Served) -> None:
    gw = await start_gateway(providers={"bedrock-us": bedrock_provider(bedrock)})
    key = await gw.developer()
    await allow(gw, "platform", "claude-haiku-4-5")
    body = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                         "messages": HELLO})
    for action in ("invoke", "invoke-with-response-stream", "count-tokens"):
        r = await gw.client.post(f"/bedrock/model/us.anthropic.claude-sonnet-4-6/{action}",
                                 data=body, headers={"authorization": f"Bearer {key}"})
        assert r.status == 400, action
        assert "'us.anthropic.claude-sonnet-4-6' is not allowed" in (
            await r.json())["error"]["message"]
    r = await gw.client.post("/bedrock/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/invoke",
                             data=body, headers={"authorization": f"Bearer {key}"})
    assert r.status == 200
    assert len(bedrock.fake.recorded) == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
async def test_an_admin_narrows_a_teams_models_in_the_browser(
        dashboard: Dashboard, chromium: Any, redis_url: str) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Ada", "platform")
    team = (await gw.admin.db(gw.admin.catalog.teams))[0]["id"]
    await dashboard.account("alice", "admin")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "alice", PASSWORDS["admin"])
    await page.goto(f"{gw.url}/admin/teams/{team}")
    assert "Any model" in await page.inner_text("#models")
    await page.fill("#set-models input[name=models]", "claude-haiku-*")
    await page.click("#set-models button[type=submit]")
    await page.wait_for_selector(".flash:has-text('Model list saved')")
    assert await page.inner_text("#allowed-models") == "claude-haiku-*"
    await gw.proxy.refresh_policy()
    async with sdk(gw, key) as client:
        with pytest.raises(anthropic.BadRequestError, match="claude-sonnet-4-6"):
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=8,
                                         messages=HELLO)
    await page.click("#clear-models button[type=submit]")
    await page.wait_for_selector(".flash:has-text('follows the organization')")
    assert await page.locator("#allowed-models").count() == 0
