"""Sign-in, sessions, CSRF and escaping on the dashboard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from dashboard import sessions
from dashboard.accounts import Accounts, SignInThrottle, check_password, hash_password
from dashboard.appkeys import THROTTLE
from dashboard.forwarded import Forwarding
from dashboard.routes import API_ROUTES, PAGE_ROUTES
from ledger.catalog import CatalogError
from ledger.redis_client import connect_redis
from meterd.apps import ADMIN_APP
from meterd.settings import Settings, SettingsError
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Browser, Dashboard, one, parse
from tests.test_dashboard_routes import APIS, PAGES, _fill, _seed

XSS = "<script>alert(1)</script>"


async def _audit_rows(dash: Dashboard) -> int:
    admin = dash.gateway.admin
    return len(await admin.db(admin.catalog.audit, 10_000))


async def test_post_without_csrf_token_is_refused_and_changes_nothing(
        dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    before = await _audit_rows(dashboard)
    status, text, _ = await admin.post("/admin/teams", {"name": "sneaky"}, csrf=False)
    assert status == 403
    assert "expired" in one(parse(text), "main").get_text()
    status, _, _ = await admin.post("/admin/teams", {"name": "sneaky", "csrf": "forged"})
    assert status == 403
    assert await _audit_rows(dashboard) == before
    teams = await dashboard.gateway.admin.db(dashboard.gateway.admin.catalog.teams)
    assert "sneaky" not in {t["name"] for t in teams}


async def test_csrf_token_of_another_session_is_refused(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    other = await dashboard.signed_in("admin")
    status, _, _ = await admin.post("/admin/teams", {"name": "cross", "csrf": other.csrf})
    assert status == 403
    status, _, _ = await admin.post("/admin/teams", {"name": "same"})
    assert status == 303


async def test_csrf_header_is_accepted_for_scripts(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    status, _, _ = await admin.post("/admin/teams", {"name": "scripted"}, csrf=False,
                                    headers={"X-CSRF-Token": admin.csrf})
    assert status == 303


async def test_developer_name_with_html_shows_as_text(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    await dashboard.gateway.developer("Someone", "platform")  # the team
    team = (await dashboard.gateway.admin.db(dashboard.gateway.admin.catalog.teams))[0]["id"]
    status, _, headers = await admin.post("/admin/developers", {
        "name": XSS, "email": "xss@example.com", "team": team})
    assert status == 303
    page = await admin.page(headers["Location"])
    assert one(page, "#developer-name").get_text(strip=True) == XSS
    # The one-time message naming it ("Developer <script>… created") is text as well.
    assert XSS in one(page, ".flash").get_text()
    for path in ("/admin/developers", "/admin/teams/" + team, "/admin/audit"):
        page = await admin.page(path)
        scripts = [s for s in page.find_all("script") if "alert" in (s.string or "")]
        assert not scripts, path
        assert XSS in page.get_text(), path


async def test_session_cookie_is_httponly_samesite_signed_and_scoped(
        dashboard: Dashboard) -> None:
    browser = dashboard.browser()
    await browser.get("/admin/signin")
    await dashboard.account("boss", "admin")
    async with browser.session.post("/admin/signin", data={
            "name": "boss", "password": PASSWORDS["admin"], "csrf": browser.csrf},
            allow_redirects=False) as r:
        assert r.status == 303
        raw = [v for k, v in r.headers.items() if k.lower() == "set-cookie"
               and v.startswith(sessions.COOKIE)]
    assert raw
    cookie = SimpleCookie(raw[0])[sessions.COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "lax"
    assert cookie["path"] == "/admin/"
    # The value alone is the session; tampering with it makes it worthless.
    jar, where = browser.session.cookie_jar, dashboard.client.make_url("/admin/")
    jar.clear()
    jar.update_cookies({sessions.COOKIE: cookie.value}, where)
    assert (await browser.get("/admin/teams"))[0] == 200
    forged = cookie.value[:-3] + ("AAA" if not cookie.value.endswith("AAA") else "BBB")
    jar.clear()
    jar.update_cookies({sessions.COOKIE: forged}, where)
    assert (await browser.get("/admin/teams"))[0] == 303


async def test_anonymous_is_sent_to_sign_in_and_back(dashboard: Dashboard) -> None:
    browser = dashboard.browser()
    async with browser.session.get("/admin/teams?x=1", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/admin/signin?next=/admin/teams?x%3D1"
    await browser.get(r.headers["Location"])
    await dashboard.account("boss", "admin")
    status, _, headers = await browser.post("/admin/signin", {
        "name": "boss", "password": PASSWORDS["admin"], "next": "/admin/teams?x=1"})
    assert (status, headers["Location"]) == (303, "/admin/teams?x=1")


async def test_next_cannot_leave_the_dashboard(dashboard: Dashboard) -> None:
    browser = dashboard.browser()
    await browser.get("/admin/signin")
    await dashboard.account("boss", "admin")
    status, _, headers = await browser.post("/admin/signin", {
        "name": "boss", "password": PASSWORDS["admin"], "next": "//evil.example.com/admin/"})
    assert (status, headers["Location"]) == (303, "/admin/")


async def test_wrong_password_is_refused(dashboard: Dashboard) -> None:
    await dashboard.account("boss", "admin")
    browser = dashboard.browser()
    await browser.get("/admin/signin")
    status, text, _ = await browser.post("/admin/signin", {"name": "boss",
                                                           "password": "wrong password"})
    assert status == 401
    assert "Wrong account name or password" in parse(text).get_text()
    assert (await browser.get("/admin/"))[0] == 303


async def test_sign_in_attempts_are_rate_limited(dashboard: Dashboard) -> None:
    await dashboard.account("boss", "admin")
    browser = dashboard.browser()
    await browser.get("/admin/signin")
    statuses = []
    for _ in range(6):
        status, _, _ = await browser.post("/admin/signin", {"name": "boss",
                                                            "password": "guess guess guess"})
        statuses.append(status)
    assert statuses == [401] * 5 + [429]
    # Locked out: even the right password waits for the window to end.
    status, text, _ = await browser.post("/admin/signin", {"name": "boss",
                                                           "password": PASSWORDS["admin"]})
    assert status == 429
    assert "Too many sign-in attempts" in parse(text).get_text()


async def test_password_change_ends_existing_sessions(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    status, _ = await admin.get("/admin/teams")
    assert status == 200
    accounts = dashboard.gateway.admin
    from dashboard.accounts import Accounts, hash_password

    name = next(u["name"] for u in await accounts.db(Accounts(accounts.catalog).users))
    await accounts.db(Accounts(accounts.catalog).set_password, name,
                      hash_password("the new password here"))
    assert (await admin.get("/admin/teams"))[0] == 303


async def test_disabled_account_loses_its_session(dashboard: Dashboard) -> None:
    finance = await dashboard.signed_in("finance")
    admin = await dashboard.signed_in("admin")
    users = await admin.page("/admin/access")
    name = next(td.get_text(strip=True) for td in users.select("#users tbody td:first-child")
                if td.get_text(strip=True).startswith("finance"))
    status, _, _ = await admin.post(f"/admin/access/users/{name}/disabled", {"disabled": "1"})
    assert status == 303
    assert (await finance.get("/admin/"))[0] == 303


async def test_developer_signs_in_with_key_and_sees_only_their_own(
        dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    mine = await gw.developer("Mine", "platform")
    await gw.developer("Theirs", "platform")
    browser = dashboard.browser()
    assert await browser.sign_in_key(mine) == 303
    page = await browser.page("/admin/me")
    assert "Mine" in one(page, "h1").get_text()
    assert "Theirs" not in page.get_text()
    assert mine not in str(page)  # the secret itself is never shown again
    theirs = next(d["id"] for d in await gw.admin.db(gw.admin.catalog.developers)
                  if d["name"] == "Theirs")
    assert (await browser.get(f"/admin/developers/{theirs}"))[0] == 403
    assert (await browser.get("/admin/requests"))[0] == 403
    # Revoking the key ends the self-service session too.
    key_id = next(k["id"] for k in await gw.admin.db(gw.admin.catalog.keys)
                  if k["developer_name"] == "Mine")
    await gw.change(gw.admin.catalog.revoke_key, key_id)
    assert (await browser.get("/admin/me"))[0] == 303


async def test_revoked_key_cannot_sign_in(dashboard: Dashboard) -> None:
    gw = dashboard.gateway
    key = await gw.developer("Gone", "platform")
    key_id = (await gw.admin.db(gw.admin.catalog.keys))[0]["id"]
    await gw.change(gw.admin.catalog.revoke_key, key_id)
    browser = dashboard.browser()
    assert await browser.sign_in_key(key) == 401


async def test_pages_carry_security_headers(dashboard: Dashboard) -> None:
    browser = await dashboard.signed_in("admin")
    async with browser.session.get("/admin/") as r:
        assert r.status == 200
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cache-Control"] == "no-store"


async def test_signing_out_ends_the_session(dashboard: Dashboard) -> None:
    browser = await dashboard.signed_in("admin")
    status, _, headers = await browser.post("/admin/signout", {})
    assert (status, headers["Location"]) == (303, "/admin/signin")
    assert (await browser.get("/admin/"))[0] == 303


# -- the sign-in throttle: per (account, address), with back-off, successes not counted ------


async def _from(dash: Dashboard, address: str, **headers: str) -> Browser:
    """A browser whose connections come from `address` (any 127.x.y.z is this machine)."""
    browser = dash.browser()
    await browser.session.close()
    browser.session = aiohttp.ClientSession(
        base_url=dash.client.make_url(""), cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(local_addr=(address, 0)), headers=headers)
    await browser.get("/admin/signin")
    return browser


async def _guess(browser: Browser, name: str, times: int, **kw: Any) -> list[int]:
    statuses = []
    for _ in range(times):
        status, _, _ = await browser.post("/admin/signin", {
            "name": name, "password": "guess guess guess"}, **kw)
        statuses.append(status)
    return statuses


async def test_guessing_from_one_address_does_not_lock_the_account_from_another(
        dashboard: Dashboard) -> None:
    await dashboard.account("admin", "admin")
    attacker = await _from(dashboard, "127.0.0.2")
    assert (await _guess(attacker, "admin", 8))[-3:] == [429] * 3
    owner = await _from(dashboard, "127.0.0.1")
    assert await owner.sign_in("admin", PASSWORDS["admin"]) == 303
    assert (await owner.get("/admin/teams"))[0] == 200
    assert (await _guess(attacker, "admin", 1)) == [429]  # the guesser still waits


async def test_successful_sign_ins_use_up_nothing(dashboard: Dashboard) -> None:
    """More successes from one address than it may fail (key sign-ins, then an account's):
    every one gets in."""
    limit = dashboard.gateway.app[ADMIN_APP][THROTTLE].per_address
    key = await dashboard.gateway.developer("Often", "platform")
    browser = dashboard.browser()
    for _ in range(limit):
        assert await browser.sign_in_key(key) == 303
    await dashboard.account("boss", "admin")
    assert await browser.sign_in("boss", PASSWORDS["admin"]) == 303
    # A right password also forgives that account's failures from that address.
    other = dashboard.browser()
    await other.get("/admin/signin")
    assert await _guess(other, "boss", 4) == [401] * 4
    assert await other.sign_in("boss", PASSWORDS["admin"]) == 303
    await other.post("/admin/signout", {})
    await other.get("/admin/signin")
    assert await _guess(other, "boss", 4) == [401] * 4


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(
        start_dashboard: Callable[..., Awaitable[Dashboard]]) -> None:
    dash = await start_dashboard(trusted_proxies=["127.0.0.1"])  # the test client is the proxy
    await dash.account("admin", "admin")
    attacker = await _from(dash, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
    assert (await _guess(attacker, "admin", 7))[-2:] == [429, 429]
    owner = await _from(dash, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.7"})
    assert await owner.sign_in("admin", PASSWORDS["admin"]) == 303


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
        start_dashboard: Callable[..., Awaitable[Dashboard]]) -> None:
    dash = await start_dashboard(trusted_proxies=["10.9.8.0/24"])
    await dash.account("admin", "admin")
    attacker = await _from(dash, "127.0.0.2")
    statuses = [(await _guess(attacker, "admin", 1,
                              headers={"X-Forwarded-For": f"203.0.113.{n}"}))[0]
                for n in range(7)]
    assert statuses == [401] * 5 + [429] * 2  # a new made-up address each time: no escape


@pytest.mark.parametrize(("trusted", "peer", "forwarded_for", "client"), [
    ((), "127.0.0.1", ["203.0.113.9"], "127.0.0.1"),
    (("10.0.0.0/8",), "192.0.2.1", ["203.0.113.9"], "192.0.2.1"),
    (("10.0.0.0/8",), "10.0.0.2", [], "10.0.0.2"),
    (("10.0.0.0/8",), "10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
    # The client wrote its own header; the proxy appended what it saw.
    (("10.0.0.0/8",), "10.0.0.2", ["1.2.3.4, 203.0.113.9"], "203.0.113.9"),
    (("10.0.0.0/8",), "10.0.0.2", ["1.2.3.4", "203.0.113.9"], "203.0.113.9"),
    # Two proxies in a row, both trusted.
    (("10.0.0.0/8",), "10.0.0.2", ["203.0.113.9, 10.0.0.7"], "203.0.113.9"),
    (("10.0.0.0/8",), "10.0.0.2", ["10.0.0.9, 10.0.0.7"], "10.0.0.9"),
    (("10.0.0.0/8",), "10.0.0.2", ["203.0.113.9, garbage"], "10.0.0.2"),
    (("10.0.0.5",), "::ffff:10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
    (("::1",), "::1", [" 2001:db8::1 "], "2001:db8::1"),
    (("::1",), "", ["203.0.113.9"], ""),  # the Unix socket has no peer address
])
def test_client_address_is_read_from_trusted_proxies_only(
        trusted: tuple[str, ...], peer: str, forwarded_for: list[str], client: str) -> None:
    assert Forwarding(trusted).client_address(peer, forwarded_for) == client


async def test_throttle_backs_off_per_name_and_address(redis_url: str) -> None:
    redis = connect_redis(redis_url)
    await redis.flushdb()
    throttle = SignInThrottle(redis, "{t}", free=2, per_address=100, window=100, backoff=10)
    ada = "192.0.2.1"
    # (now, seconds to wait): two free tries, then 10, 20, 40, 80 and at most the window.
    for now, wait in [(1000, 0), (1000, 0), (1005, 5), (1010, 0), (1029, 1), (1030, 0),
                      (1070, 0), (1149, 1), (1150, 0), (1250, 0), (1349, 1)]:
        assert await throttle.attempt(ada, "Ada", now=now) == wait, now
    assert await throttle.attempt("192.0.2.2", "ada", now=1250) == 0  # another address
    assert await throttle.attempt(ada, "bob", now=1250) == 0  # another name
    await throttle.succeeded(ada, "ada")
    assert [await throttle.attempt(ada, "ada", now=1251) for _ in range(3)] == [0, 0, 10]
    await redis.flushdb()
    await redis.aclose()


async def test_throttle_limits_failures_per_address_and_hands_back_successes(
        redis_url: str) -> None:
    redis = connect_redis(redis_url)
    await redis.flushdb()
    throttle = SignInThrottle(redis, "{t}", free=5, per_address=3, window=60)
    now = int(time.time())
    for name in ("a", "b", "c"):
        assert await throttle.attempt("192.0.2.1", name, now=now) == 0
    assert 0 < await throttle.attempt("192.0.2.1", "d", now=now) <= 60
    assert await throttle.attempt("192.0.2.9", "d", now=now) == 0
    for _ in range(5):  # right each time: handed back
        assert await throttle.attempt("192.0.2.9", "", now=now) == 0
        await throttle.succeeded("192.0.2.9", "")
    assert await throttle.attempt("192.0.2.9", "e", now=now) == 0
    await redis.flushdb()
    await redis.aclose()


def test_trusted_proxies_setting_takes_addresses_and_networks_only() -> None:
    settings = Settings.load(environ={"MTD_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7,::1"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.0.2.7", "::1")
    with pytest.raises(SettingsError, match=r"trusted_proxies: 'proxy\.internal'"):
        Settings.load(environ={"MTD_TRUSTED_PROXIES": "10.0.0.1,proxy.internal"})


# -- https: the Secure cookie flag and HSTS ------------------------------------------------


async def _https_browser(dash: Dashboard, **headers: str) -> Browser:
    """A browser that reaches the dashboard over https (through a TLS-terminating proxy): it
    sends Secure cookies back, as a browser on https would."""
    browser = dash.browser()
    await browser.session.close()
    base = dash.client.make_url("")
    browser.session = aiohttp.ClientSession(
        base_url=base, headers=headers,
        cookie_jar=aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[base]))
    return browser


def _set_cookies(headers: Any) -> dict[str, Any]:
    found = {}
    for value in headers.getall("Set-Cookie", []):
        found.update(SimpleCookie(value))
    return found


async def _sign_in_answer(dash: Dashboard, browser: Browser) -> Any:
    """The headers of the sign-in answer (after the sign-in page was fetched)."""
    await browser.get("/admin/signin")
    _, _, headers = await browser.post("/admin/signin", {"name": "boss",
                                                         "password": PASSWORDS["admin"]})
    return headers


@pytest.mark.parametrize(("settings", "headers", "https"), [
    ({"trusted_proxies": ["127.0.0.1"]}, {"X-Forwarded-Proto": "https"}, True),
    ({"trusted_proxies": ["127.0.0.0/8"]}, {"X-Forwarded-Proto": "https, http"}, True),
    ({"trusted_proxies": ["127.0.0.1"]}, {"X-Forwarded-Proto": "http"}, False),
    ({"trusted_proxies": ["127.0.0.1"]}, {}, False),
    ({"trusted_proxies": ["10.9.8.7"]}, {"X-Forwarded-Proto": "https"}, False),  # untrusted
    ({}, {"X-Forwarded-Proto": "https"}, False),
    ({"public_url": "https://meterd.example.com"}, {}, True),
    ({"public_url": "http://meterd.example.com"}, {}, False),
])
async def test_cookie_is_secure_and_hsts_sent_exactly_when_the_client_uses_https(
        start_dashboard: Callable[..., Awaitable[Dashboard]], settings: dict[str, Any],
        headers: dict[str, str], https: bool) -> None:
    dash = await start_dashboard(**settings)
    await dash.account("boss", "admin")
    browser = await _https_browser(dash, **headers) if https else dash.browser()
    if not https:
        browser.session.headers.update(headers)
    answer = await _sign_in_answer(dash, browser)
    cookie = _set_cookies(answer)[sessions.COOKIE]
    assert bool(cookie["secure"]) is https
    assert ("Strict-Transport-Security" in answer) is https
    # The session works, and every other answer says the same.
    async with browser.session.get("/admin/teams", allow_redirects=False) as r:
        assert r.status == 200
        assert (r.headers.get("Strict-Transport-Security") == "max-age=31536000") is https
    async with browser.session.get("/admin/api/v1/teams", allow_redirects=False) as r:
        assert r.status == 401
        assert ("Strict-Transport-Security" in r.headers) is https


# -- the session secret, weak passwords, and redirects off the site -------------------------


@pytest.mark.parametrize("variable", ["MTD_SESSION_SECRET", "MTD_SESSION_SECRET_FILE"])
def test_short_session_secret_is_refused_naming_the_setting(tmp_path: Path,
                                                            variable: str) -> None:
    short = "s3cr3t-but-only-31-bytes-long!!"
    assert len(short) == 31
    if variable.endswith("_FILE"):
        (tmp_path / "secret").write_text(short + "\n")
        environ = {variable: str(tmp_path / "secret")}
    else:
        environ = {variable: short}
    with pytest.raises(SettingsError, match="session_secret") as refused:
        Settings.load(environ=environ)
    assert "31 bytes is too short" in str(refused.value) and short not in str(refused.value)
    assert Settings.load(environ={"MTD_SESSION_SECRET": short + "!"}).session_secret
    assert Settings.load(environ={}).session_secret == ""  # generated into the data dir


def test_meterd_does_not_start_with_a_short_session_secret(tmp_path: Path) -> None:
    env = {**os.environ, "MTD_SESSION_SECRET": "changeme", "MTD_DATA_DIR": str(tmp_path),
           "MTD_ADMIN_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "meterd.cli", "admin"], env=env,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert "setting session_secret" in done.stderr and "changeme" not in done.stderr


@pytest.mark.parametrize(("password", "name", "refusal"), [
    ("            ", "", "only spaces"),
    ("\t\t\t\t \n \n \t \t", "", "only spaces"),
    ("password1234", "", "too easy to guess (This is a very common password)"),
    ("qwertyuiop123", "", "too easy to guess"),
    ("iloveyou12345", "", "too easy to guess"),
    ("aaaaaaaaaaaaaaaa", "", "too easy to guess"),
    ("platform-admin", "platform-admin", "too easy to guess"),  # the account's own name
    ("short", "", "12 to 1024 characters"),
])
def test_weak_passwords_are_refused(password: str, name: str, refusal: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(refusal)):
        hash_password(password, name)


@pytest.mark.parametrize("password", ["correct horse battery", "Vq7#rT2!mZ9x",
                                      "x" * 20 + " the rest of a long phrase " * 30])
def test_strong_passwords_are_hashed(password: str) -> None:
    assert check_password(hash_password(password, "ada"), password)


async def test_weak_passwords_are_refused_by_the_dashboard_and_the_api(
        dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    await dashboard.account("fin", "finance")
    state = dashboard.gateway.admin
    accounts = Accounts(state.catalog)
    before = await state.db(accounts.credentials, "fin")
    status, _, headers = await admin.post("/admin/access/users", {
        "name": "weak", "role": "finance", "password": "password1234"})
    assert status == 303
    page = await admin.page(headers["Location"])
    assert "too easy to guess" in one(page, ".flash").get_text()
    key = {"Authorization": f"Bearer {await dashboard.admin_key('rw')}"}
    for path, body, refusal in (
            ("/admin/api/v1/users", {"name": "blank", "role": "finance", "password": " " * 16},
             "only spaces"),
            ("/admin/api/v1/users/fin/password", {"password": "iloveyou12345"},
             "too easy to guess")):
        async with dashboard.client.post(path, json=body, headers=key) as r:
            assert r.status == 400, path
            assert refusal in (await r.json())["error"]["message"]
    assert {u["name"] for u in await state.db(accounts.users)} == {"admin1", "fin"}
    assert await state.db(accounts.credentials, "fin") == before


@pytest.mark.parametrize(("referer", "location"), [
    ("{base}/admin/teams?x=1", "/admin/teams?x=1"),
    ("{base}//evil.example/x", "/admin/"),
    ("{base}///evil.example/x", "/admin/"),
    ("{base}/\\evil.example/x", "/admin/"),
    ("{base}/admin/../..//evil.example/x", "/admin/"),
    ("{base}/%2F%2Fevil.example/x", "/admin/"),
    ("{base}/admin//evil.example/x", "/admin//evil.example/x"),  # a path under /admin/
    ("http://evil.example/admin/teams", "/admin/"),
])
async def test_redirect_back_stays_under_the_dashboard(dashboard: Dashboard, referer: str,
                                                       location: str) -> None:
    admin = await dashboard.signed_in("admin")
    base = str(dashboard.client.make_url("")).rstrip("/")
    status, _, headers = await admin.post("/admin/teams", {"name": ""}, headers={
        "Referer": referer.format(base=base)})
    assert (status, headers["Location"]) == (303, location)
    assert URL(headers["Location"]).host is None


# -- every answer: no-store and nosniff ------------------------------------------------------


async def test_every_answer_of_every_route_is_no_store_and_nosniff(dashboard: Dashboard) -> None:
    """Every route of the route table, as an anonymous visitor, a team lead of another team
    and of the seeded one (each page answered as the route table says: 403 off their team),
    and an admin (whose answers include the secrets shown once), plus unknown paths and
    wrong methods."""
    ids = await _seed(dashboard)
    methods = {name: method for method, _, _, name in PAGE_ROUTES + API_ROUTES}
    key = {"Authorization": f"Bearer {await dashboard.admin_key('rw')}"}
    missing: list[tuple[str, str, int]] = []
    wrong: dict[tuple[str, str], tuple[int, int]] = {}

    def check(what: str, role: str, r: aiohttp.ClientResponse) -> None:
        if (r.headers.get("Cache-Control") != "no-store"
                or r.headers.get("X-Content-Type-Options") != "nosniff"):
            missing.append((what, role, r.status))

    for role in ("anonymous", "lead_other", "team_lead", "admin"):
        browser = await dashboard.signed_in(role)
        for name, (path, body, expected) in PAGES.items():
            if name == "signout":
                continue
            form = {"csrf": browser.csrf, **(_fill(body, ids, role) or {})}
            async with browser.session.request(
                    methods[name], "/admin" + _fill(path, ids, role),
                    data=form if methods[name] != "GET" else None,
                    allow_redirects=False) as r:
                check(name, role, r)
                if role in ("team_lead", "lead_other") and r.status != expected[role]:
                    wrong[(name, role)] = (r.status, expected[role])
                if r.content_type == "text/html":
                    browser._remember(await r.text())
        for name, (path, body, _) in APIS.items():
            async with dashboard.client.request(
                    methods[name], "/admin" + _fill(path, ids, role),
                    json=_fill(body, ids, role) if body is not None else None,
                    headers=key if role == "admin" else {}) as r:
                check(name, role, r)
        for method, path in (("GET", "/admin/no-such-page"), ("GET", "/admin/api/v1/nothing"),
                             ("DELETE", "/admin/teams"), ("PATCH", "/admin/api/v1/teams"),
                             ("HEAD", "/admin/"), ("POST", "/admin/signout")):
            async with browser.session.request(method, path, allow_redirects=False,
                                               headers=key if "/api/" in path else {}) as r:
                check(f"{method} {path}", role, r)
    assert not missing, f"(route, role, status) without no-store and nosniff: {missing}"
    assert not wrong, f"(route, role): (got, expected): {wrong}"


async def test_static_files_are_nosniff_and_may_be_cached(dashboard: Dashboard) -> None:
    async with dashboard.client.get("/admin/static/app.css") as r:
        assert r.status == 200
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "no-store" not in r.headers.get("Cache-Control", "")
