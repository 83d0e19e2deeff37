"""Dashboard sign-in through the identity provider, in headless Chromium against the loopback
test provider: the group rules give the role at every sign-in (admin, finance, the lead of one
team, a developer), someone they do not map is refused with a page that says why, password
sign-in can be turned off, signing out ends the session on the server, and a callback that is
not this browser's flow is refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from joserfc.jwk import RSAKey

from dashboard import sessions
from dashboard.accounts import Accounts, hash_password
from tests.dashboard_fixtures import PASSWORDS, Browser, one, parse
from tests.sso import RULES, SSO

pytest_plugins = ("tests.sso_fixtures",)
# The flow keeps its state in Redis for one set and one getdel: the embedded backend adds
# nothing to what the device-flow tests already cover there, and Chromium is slow.
pytestmark = pytest.mark.parametrize("redis_url", ["real"], indirect=True)

DASHBOARD_RULES = ({"group": "plat-leads", "team": "platform", "role": "team_lead"},
                   {"group": "meterd-admins", "role": "admin"}, *RULES)

StartSSO = Callable[..., Awaitable[SSO]]


@pytest.fixture
async def sso(start_sso: StartSSO) -> SSO:
    return await start_sso(oidc_group_rules=DASHBOARD_RULES)


async def _sign_in(sso: SSO, chromium: Any, sub: str, groups: list[str],
                   context: Any = None) -> Any:
    """A person presses "Sign in with …" on the sign-in page, is signed in at the provider
    (its session is this user's), and comes back: the page where they land."""
    if sub not in sso.idp.users:
        sso.idp.add_user(sub, f"{sub}@example.com", groups)
    sso.idp.users[sub].groups = groups
    sso.idp.sign_in(sub)
    page = await (context or await chromium.new_context()).new_page()
    await page.goto(sso.url + "/admin/signin")
    button = page.locator("#signin-sso button[type=submit]")
    assert await button.inner_text() == "Sign in with 127.0.0.1"
    async with page.expect_navigation():
        await button.click()
    return page


async def _badge(page: Any) -> str:
    return str(await page.inner_text(".who .badge"))


async def _team_id(sso: SSO, name: str) -> str:
    teams = await sso.gateway.admin.db(sso.gateway.admin.catalog.teams)
    return next(t["id"] for t in teams if t["name"] == name)


async def test_an_admin_group_signs_in_as_admin_and_roles_follow_the_groups_each_time(
        sso: SSO, chromium: Any) -> None:
    page = await _sign_in(sso, chromium, "u-root", ["meterd-admins"])
    assert page.url == sso.url + "/admin/"
    assert await _badge(page) == "admin"
    assert (await page.goto(sso.url + "/admin/access")).status == 200
    assert [a["target"] for a in await sso.audit("signin.dashboard")] == ["u-root@example.com"]

    # Out of the admin group at the provider: the next sign-in is a developer's.
    async with page.expect_navigation():
        await page.click(".who button[type=submit]")
    page = await _sign_in(sso, chromium, "u-root", ["eng"], page.context)
    assert page.url == sso.url + "/admin/me"
    assert await _badge(page) == "developer"
    assert (await page.goto(sso.url + "/admin/access")).status == 403
    admin = sso.gateway.admin
    [dev] = await admin.db(admin.catalog.developers)
    assert (dev["email"], dev["team_name"]) == ("u-root@example.com", "engineering")


async def test_a_finance_group_reads_and_changes_nothing(sso: SSO, chromium: Any) -> None:
    page = await _sign_in(sso, chromium, "u-money", ["finops"])
    assert page.url == sso.url + "/admin/"
    assert await _badge(page) == "finance"
    assert (await page.goto(sso.url + "/admin/teams")).status == 200
    csrf = await page.locator(".who input[name=csrf]").input_value()
    r = await page.context.request.post(sso.url + "/admin/teams", form={
        "name": "made-by-finance", "csrf": csrf}, max_redirects=0)
    assert r.status == 403
    teams = await sso.gateway.admin.db(sso.gateway.admin.catalog.teams)
    assert "made-by-finance" not in {t["name"] for t in teams}


async def test_a_team_lead_administers_its_own_team_only(sso: SSO, chromium: Any) -> None:
    gw = sso.gateway
    await gw.developer("Other Dev", "engineering")
    page = await _sign_in(sso, chromium, "u-lead", ["plat-leads", "eng"])
    platform, engineering = await _team_id(sso, "platform"), await _team_id(sso, "engineering")
    assert page.url == f"{sso.url}/admin/teams/{platform}"
    assert await _badge(page) == "team_lead"
    assert await page.inner_text("h1") == "platform"
    # Its members' cap: set with the form on its page. The pool: not offered, and refused.
    form = page.locator("#member-cap form")
    await form.locator("input[name=amount]").fill("40")
    async with page.expect_navigation():
        await form.locator("button[type=submit]").click()
    caps = [b for b in await gw.admin.db(gw.admin.catalog.budgets) if b["scope_id"] == platform]
    assert [(b["scope"], b["amount_micros"]) for b in caps] == [("team_member", 40_000_000)]
    assert await page.locator("#pool form").count() == 0
    csrf = await page.locator(".who input[name=csrf]").input_value()
    r = await page.context.request.post(f"{sso.url}/admin/teams/{platform}/budget", form={
        "scope": "team", "amount": "1000", "csrf": csrf}, max_redirects=0)
    assert r.status == 403

    # Another team: its page, its members, its report and its caps are refused.
    other = next(d for d in await gw.admin.db(gw.admin.catalog.developers)
                 if d["name"] == "Other Dev")
    for path in ("/admin/", "/admin/teams", f"/admin/developers/{other['id']}",
                 f"/admin/reports?team={engineering}", f"/admin/teams/{engineering}"):
        r = await page.goto(sso.url + path)
        assert r.status == 403, path
    assert "not yours" in await page.inner_text("main")
    r = await page.context.request.post(f"{sso.url}/admin/developers/{other['id']}/budget",
                                        form={"amount": "5", "csrf": csrf}, max_redirects=0)
    assert r.status == 403
    assert not [b for b in await gw.admin.db(gw.admin.catalog.budgets)
                if b["scope_id"] == other["id"]]
    # Its reports are its own team's, whatever the form asks.
    await page.goto(sso.url + "/admin/reports")
    options = await page.locator("select[name=team] option").all_inner_texts()
    assert options == ["all", "platform"]


async def test_someone_no_rule_maps_gets_a_page_that_says_why(sso: SSO,
                                                              chromium: Any) -> None:
    page = await _sign_in(sso, chromium, "u-mkt", ["marketing"])
    assert "/admin/signin/sso/callback" in page.url
    reason = await page.inner_text("#signin-refused-reason")
    assert "None of your groups at 127.0.0.1 (marketing)" in reason
    assert await page.locator(".who").count() == 0
    r = await page.goto(sso.url + "/admin/")
    assert page.url.startswith(sso.url + "/admin/signin")
    assert r.status == 200
    [denied] = await sso.audit("signin.denied")
    assert denied["target"] == "u-mkt@example.com"
    assert await sso.gateway.admin.db(sso.gateway.admin.catalog.developers) == []


async def test_with_local_accounts_off_the_password_form_is_gone_and_refused(
        start_sso: StartSSO, chromium: Any) -> None:
    sso = await start_sso(oidc_group_rules=DASHBOARD_RULES, local_accounts=False)
    admin = sso.gateway.admin
    await admin.db(Accounts(admin.catalog).create_user, "breakglass", "", "admin",
                   password_hash=hash_password(PASSWORDS["admin"]))
    browser = Browser(sso.gateway.client)
    try:
        status, text = await browser.get("/admin/signin")
        assert status == 200
        page = parse(text)
        assert page.select_one("#signin-account") is None
        assert one(page, "#signin-sso button").get_text() == "Sign in with 127.0.0.1"
        status, text, _ = await browser.post("/admin/signin", {
            "name": "breakglass", "password": PASSWORDS["admin"]})
        assert status == 403
        assert "Password sign-in is turned off" in parse(text).get_text()
        assert (await browser.get("/admin/teams"))[0] == 303  # not signed in
    finally:
        await browser.close()
    page = await _sign_in(sso, chromium, "u-root", ["meterd-admins"])
    assert await _badge(page) == "admin"


async def test_signing_out_ends_the_session_on_the_server(sso: SSO, chromium: Any) -> None:
    page = await _sign_in(sso, chromium, "u-root", ["meterd-admins"])
    [cookie] = [c for c in await page.context.cookies() if c["name"] == sessions.COOKIE]
    async with page.expect_navigation():
        await page.click(".who button[type=submit]")
    assert page.url.startswith(sso.url + "/admin/signin")
    # The old cookie, replayed from elsewhere, is refused: the session row is gone.
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({sessions.COOKIE: cookie["value"]}, sso.gateway.client.make_url("/admin/"))
    async with aiohttp.ClientSession(cookie_jar=jar) as s, \
            s.get(sso.url + "/admin/access", allow_redirects=False) as r:
        assert r.status == 303 and "/admin/signin" in r.headers["Location"]


async def test_a_callback_that_is_not_this_browsers_flow_is_refused(
        sso: SSO, chromium: Any) -> None:
    sso.idp.add_user("u-root", "u-root@example.com", ["meterd-admins"])
    sso.idp.sign_in("u-root")
    mine = await (await chromium.new_context()).new_page()
    await mine.goto(sso.url + "/admin/signin")
    # Press the button in this browser, and follow it to the provider and back by hand, to
    # hold the URL the provider sends this browser back to (Chromium would go on at once).
    csrf = await mine.locator("#signin-sso input[name=csrf]").input_value()
    r = await mine.context.request.post(sso.url + "/admin/signin/sso", form={"csrf": csrf},
                                        max_redirects=0)
    assert r.status == 303
    async with aiohttp.ClientSession() as s, \
            s.get(r.headers["location"], allow_redirects=False) as at_provider:
        callback = at_provider.headers["Location"]
    assert callback.startswith(sso.url + "/admin/signin/sso/callback?")
    assert "state=" in callback and "code=" in callback

    # The same callback in another browser (a link sent to a victim): refused, no session.
    other = await (await chromium.new_context()).new_page()
    r = await other.goto(callback)
    assert r.status == 400
    assert "started in another browser" in await other.inner_text("main")
    assert await other.locator(".who").count() == 0
    # A state this browser never had: refused too.
    r = await mine.goto(sso.url + "/admin/signin/sso/callback?state=forged&code=x")
    assert r.status == 400
    assert await sso.audit("signin.dashboard") == []


async def test_an_id_token_not_signed_by_the_provider_signs_nobody_in(
        sso: SSO, chromium: Any) -> None:
    sso.idp.sign_with = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})  # same kid
    page = await _sign_in(sso, chromium, "u-root", ["meterd-admins"])
    assert "ID token is not valid" in await page.inner_text("#signin-refused-reason")
    assert await page.locator(".who").count() == 0
    assert await sso.audit("signin.dashboard") == []
