"""Dashboard sessions end on the server: signing out, disabling an account or changing its
password refuses every copy of the cookie at once, and re-enabling an account does not bring
its old sessions back."""

from __future__ import annotations

import time

from dashboard import sessions
from dashboard.accounts import Accounts
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Browser, Dashboard


def _cookie(browser: Browser) -> str:
    found = [c.value for c in browser.session.cookie_jar if c.key == sessions.COOKIE]
    assert len(found) == 1, found
    return found[0]


def _copy(dash: Dashboard, browser: Browser) -> Browser:
    """Another browser holding a copy of `browser`'s session cookie (as a thief would)."""
    thief = dash.browser()
    thief.session.cookie_jar.update_cookies({sessions.COOKIE: _cookie(browser)},
                                            dash.client.make_url("/admin/"))
    return thief


async def test_signing_out_refuses_a_copy_of_the_cookie(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    copy = _copy(dashboard, admin)
    assert (await copy.get("/admin/teams"))[0] == 200
    status, _, _ = await admin.post("/admin/signout", {})
    assert status == 303
    assert (await copy.get("/admin/teams"))[0] == 303  # sent to sign in


async def test_signing_out_a_developer_refuses_a_copy_of_the_cookie(
        dashboard: Dashboard) -> None:
    developer = await dashboard.signed_in("developer")
    copy = _copy(dashboard, developer)
    assert (await copy.get("/admin/me"))[0] == 200
    await developer.post("/admin/signout", {})
    assert (await copy.get("/admin/me"))[0] == 303


async def test_disabling_ends_sessions_and_enabling_does_not_revive_them(
        dashboard: Dashboard) -> None:
    await dashboard.account("fin", "finance")
    finance = dashboard.browser()
    assert await finance.sign_in("fin", PASSWORDS["finance"]) == 303
    copy = _copy(dashboard, finance)
    assert (await copy.get("/admin/teams"))[0] == 200
    admin = await dashboard.signed_in("admin")
    status, _, _ = await admin.post("/admin/access/users/fin/disabled", {"disabled": "1"})
    assert status == 303
    assert (await finance.get("/admin/teams"))[0] == 303
    assert (await copy.get("/admin/teams"))[0] == 303
    # Enabled again through the admin API (what `meterd user enable` calls).
    key = await dashboard.admin_key("rw")
    async with dashboard.client.post("/admin/api/v1/users/fin/enable",
                                     headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200
    assert (await copy.get("/admin/teams"))[0] == 303
    again = dashboard.browser()
    assert await again.sign_in("fin", PASSWORDS["finance"]) == 303
    assert (await again.get("/admin/teams"))[0] == 200


async def test_signing_in_again_ends_the_browsers_previous_session(
        dashboard: Dashboard) -> None:
    await dashboard.account("boss", "admin")
    browser = dashboard.browser()
    assert await browser.sign_in("boss", PASSWORDS["admin"]) == 303
    first = _copy(dashboard, browser)
    assert await browser.sign_in("boss", PASSWORDS["admin"]) == 303
    assert (await browser.get("/admin/teams"))[0] == 200
    assert (await first.get("/admin/teams"))[0] == 303


async def test_session_rows_older_than_the_longest_session_are_pruned(
        dashboard: Dashboard) -> None:
    admin = dashboard.gateway.admin
    accounts = Accounts(admin.catalog)
    await dashboard.account("boss", "admin")
    old = await admin.db(accounts.start_session, "user", "boss")
    time.sleep(0.002)
    new = await admin.db(accounts.start_session, "user", "boss", "", 0)
    assert await admin.db(accounts.session_user, old, "boss") is None
    assert await admin.db(accounts.session_user, new, "boss") == {"name": "boss",
                                                                   "role": "admin"}
    # A session names its own account only.
    assert await admin.db(accounts.session_user, new, "someone-else") is None
