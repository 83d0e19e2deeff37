"""The small pieces of the dashboard on their own: signed values, the session secret, money and
token formatting, charts, and the account store."""

from __future__ import annotations

import stat
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from hypothesis import given
from hypothesis import strategies as st

from dashboard import charts, formatting, sessions
from dashboard.accounts import (
    Accounts,
    check_password,
    create_demo_admin,
    hash_password,
)
from dashboard.auth import allow, check_routes
from ledger.catalog import Catalog, CatalogError, connect
from tests.dashboard_fixtures import attr, one


def test_signed_values_round_trip_and_reject_tampering() -> None:
    value = sessions.sign(b'{"a":1}', b"k" * 32, "cookie")
    assert sessions.unsign(value, b"k" * 32, "cookie") == b'{"a":1}'
    assert sessions.unsign(value, b"other" * 8, "cookie") is None
    assert sessions.unsign(value, b"k" * 32, "flash") is None  # bound to its purpose
    body, mac = value.split(".")
    assert sessions.unsign(body + "x." + mac, b"k" * 32, "cookie") is None
    assert sessions.unsign("garbage", b"k" * 32, "cookie") is None


def test_sessions_expire() -> None:
    secret = b"s" * 32
    fresh = sessions.Session.anonymous().signed_in("user", "ada", sid="s")
    assert sessions.decode(sessions.encode(fresh, secret), secret) == fresh
    old = sessions.Session(csrf="t", issued=int(time.time()) - sessions.MAX_AGE - 1,
                           kind="user", subject="ada")
    assert sessions.decode(sessions.encode(old, secret), secret) is None


def test_signing_in_gives_a_new_csrf_token() -> None:
    anonymous = sessions.Session.anonymous()
    assert anonymous.signed_in("user", "ada").csrf != anonymous.csrf


def test_session_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    first = sessions.load_secret("", tmp_path / "data")
    assert len(first) == 64
    path = tmp_path / "data" / sessions.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sessions.load_secret("", tmp_path / "data") == first
    assert sessions.load_secret("configured", tmp_path / "data") == b"configured"


@pytest.mark.parametrize(("micros", "text"), [
    (0, "$0.00"), (4_999, "$0.00"), (5_000, "$0.01"), (1_234_567_890, "$1,234.57")])
def test_money_is_formatted_in_dollars(micros: int, text: str) -> None:
    assert formatting.usd(micros) == text


@pytest.mark.parametrize(("rate", "text"), [
    (3_000_000, "$3.00"), (80_000, "$0.08"), (75_000, "$0.075"), (12_500_000, "$12.50")])
def test_prices_keep_the_decimals_they_need(rate: int, text: str) -> None:
    assert formatting.rate(rate) == text


@pytest.mark.parametrize(("n", "text"), [
    (999, "999"), (9_999, "9,999"), (12_345, "12.34k"), (147_070_000, "147.07M"),
    (3_000_000_000, "3.00B")])
def test_token_counts_read_short(n: int, text: str) -> None:
    assert formatting.tokens(n) == text


@given(st.integers(min_value=0, max_value=10**13))
def test_axis_step_is_round_and_covers_the_peak(peak: int) -> None:
    step = charts.nice_step(peak)
    digits = str(step // 10_000).rstrip("0")
    assert digits in ("1", "2", "5")
    assert step * 4 >= peak


def test_daily_chart_has_a_bar_per_day_with_its_amount() -> None:
    start = date(2026, 11, 1)
    points = [(start + timedelta(days=i), i * 1_000_000) for i in range(30)]
    svg = BeautifulSoup(str(charts.daily_bars(points, "Spend <per> day")), "html.parser")
    bars = svg.select("rect.bar")
    assert len(bars) == 30
    assert one(bars[-1], "title").get_text() == "2026-11-30: $29.00"
    assert attr(one(svg, "svg"), "aria-label") == "Spend <per> day"  # escaped, then parsed
    heights = [float(attr(b, "height")) for b in bars]
    assert heights == sorted(heights) and heights[0] == 0


def test_meter_level_follows_the_thresholds() -> None:
    assert [charts.level(s, 100, (75, 95)) for s in (10, 75, 95, 100, 150)] == [
        "ok", "warn", "high", "over", "over"]
    svg = BeautifulSoup(str(charts.meter(50, 100, (75, 95), projected=120)), "html.parser")
    assert attr(one(svg, "rect.fill"), "width") == "50.00"
    assert attr(one(svg, "rect.projected"), "width") == "100.00"
    assert len(svg.select("line.mark")) == 2


def test_a_route_without_declared_roles_is_refused() -> None:
    from aiohttp import web

    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/x", undeclared)
    with pytest.raises(RuntimeError, match="declares no roles"):
        check_routes(app)
    allow("admin")(undeclared)
    check_routes(app)
    with pytest.raises(ValueError):
        allow("root")


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    return Accounts(Catalog(connect(tmp_path / "db.duckdb")))


def test_passwords_are_stored_as_argon2id(accounts: Accounts) -> None:
    accounts.create_user("ada", "a good long password", "admin")
    stored = accounts.credentials("ada")
    assert stored is not None and stored["password_hash"].startswith("$argon2id$")
    assert "a good long password" not in str(accounts.catalog.audit())
    assert check_password(stored["password_hash"], "a good long password")
    assert not check_password(stored["password_hash"], "a good long passworD")
    assert not check_password(None, "anything at all")


def test_account_rules(accounts: Accounts) -> None:
    with pytest.raises(CatalogError, match="12"):
        accounts.create_user("ada", "short", "admin")
    with pytest.raises(CatalogError, match="role"):
        accounts.create_user("ada", "a good long password", "owner")
    with pytest.raises(CatalogError, match="name"):
        accounts.create_user("<b>", "a good long password", "admin")
    accounts.create_user("ada", "a good long password", "admin")
    with pytest.raises(CatalogError, match="already exists"):
        accounts.create_user("ada", "a good long password", "finance")
    with pytest.raises(CatalogError, match="last enabled admin"):
        accounts.set_disabled("ada", True)


def test_password_change_ends_the_accounts_sessions(accounts: Accounts) -> None:
    accounts.create_user("ada", "a good long password", "admin")
    session = accounts.start_session("user", "ada")
    assert accounts.session_user(session, "ada") == {"name": "ada", "role": "admin"}
    accounts.set_password("ada", hash_password("another long password"))
    assert accounts.session_user(session, "ada") is None


def test_admin_keys_are_hashed_and_revocable(accounts: Accounts) -> None:
    row, secret = accounts.issue_admin_key("ro", "exports")
    assert secret.startswith("mtda_") and secret not in str(accounts.admin_keys())
    found = accounts.admin_key_for(secret)
    assert found and found["role"] == "ro"
    accounts.revoke_admin_key(row["id"])
    assert accounts.admin_key_for(secret) is None
    assert accounts.admin_key_for("mtd_gateway-keys-are-not-admin-keys") is None


def test_demo_admin_gets_a_random_password(tmp_path: Path) -> None:
    conn = connect(tmp_path / "demo.duckdb")
    name, password = create_demo_admin(conn)
    stored = Accounts(Catalog(conn)).credentials(name)
    assert name == "admin" and len(password) >= 16
    assert stored and check_password(stored["password_hash"], password)


def test_settings_page_config_shows_providers_without_secrets(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from dashboard.config import DashboardConfig
    from meterd.settings import Settings

    base = Settings(data_dir=str(tmp_path))
    fields = {k: v for k, v in vars(base).items() if k not in ("providers", "routes")}
    settings = SimpleNamespace(**fields, proxy_url=base.proxy_url, providers={
        "bedrock-us": {"kind": "bedrock", "region": "us-east-1", "multiplier": "1.1",
                       "aws_secret_access_key": "never shown"}},
        routes=[{"match": "claude-opus-*", "providers": ["anthropic", "bedrock-us"]}])
    config = DashboardConfig.from_settings(settings)
    assert config.providers == (("bedrock-us", {"kind": "bedrock", "region": "us-east-1",
                                                "multiplier": "1.1"}),)
    assert config.routes == (("claude-opus-*", ("anthropic", "bedrock-us")),)
