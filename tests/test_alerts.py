"""Alerts: each budget event reaches a webhook once and only once across two admin processes
and a restart; an email destination reaches a local SMTP sink; destination URLs stay secret;
the alerts page's forms need their CSRF token and its test button records what happened."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller

from dashboard.state import AdminState
from ledger import ops_counts, periods
from ledger.alerts import (
    Alerter,
    Destinations,
    evaluate_budgets,
    evaluate_ledger,
    evaluate_ops,
    mask,
    send_digest,
)
from ledger.catalog import Catalog, CatalogError, connect
from ledger.keyspace import KeySpace
from ledger.money import parse_usd
from ledger.redis_client import connect_redis
from ledger.settlement import SPENT
from meterd.alert_jobs import schedule_alerts
from meterd.ports import free_port
from proxy.state import ProxyState
from tests.conftest import Gateway, RedisServer, need
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard
from tests.test_strict_caps import proxies

pytest_plugins = ("tests.webhook",)  # the webhook receiver fixture

__all__ = ["proxies"]  # the fixture, used by name

ROOT = Path(__file__).parent.parent
MID_MONTH = datetime(2026, 12, 16, 12, 0, tzinfo=UTC)  # half of December gone


class Sink:
    def __init__(self) -> None:
        self.mail: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mail.append((list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink, port = Sink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


async def _tick(db_file: Path, redis_url: str, now: datetime) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.alert_evaluator", str(db_file), redis_url,
        now.isoformat(), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return int(out)


async def test_each_budget_alert_reaches_the_webhook_once_across_two_admins_and_a_restart(
        redis_server: RedisServer | None, webhook: tuple[TestServer, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    need(redis_server is not None, "redis-server is not installed (apt-get install redis-server)")
    assert redis_server is not None
    server, got = webhook
    seed = tmp_path / "seed.duckdb"
    catalog = Catalog(connect(seed))
    catalog.create_team("platform")
    dev = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    catalog.set_budget("developer", dev, "monthly", parse_usd("100"))
    Destinations(catalog).add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
                              ["threshold", "blocked", "forecast"])
    for day in range(9, 16):  # $4 a day over the 7 complete days before MID_MONTH
        _day(catalog.conn, date(2026, 12, day), dev, parse_usd("4"))
    catalog.conn.close()
    # Two admin processes, each with its own DuckDB file (DuckDB has one writer) and one Redis.
    one, two = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    shutil.copy(seed, one)
    shutil.copy(seed, two)
    redis = connect_redis(redis_server.url)
    await redis.flushdb()
    counter = KeySpace().counter("developer", dev, "monthly", MID_MONTH)
    try:
        # $80 of $100 at mid-month: past 75 %, and at $4 a day for the 15.5 days left on
        # course for $142.
        await redis.hset(counter, SPENT, parse_usd("80"))
        sent = await asyncio.gather(*(_tick(f, redis_server.url, MID_MONTH)
                                      for f in (one, two)))
        assert sum(sent) == 2  # each event by whichever process claimed it first
        # Both restarted: nothing is sent again.
        sent = await asyncio.gather(*(_tick(f, redis_server.url, MID_MONTH)
                                      for f in (one, two)))
        assert sent == [0, 0]
        assert sorted(m["title"] for m in got) == [
            "Developer Ada: 75% of the monthly cap",
            "Developer Ada: forecast to pass the monthly cap"]
        # A restart sends nothing again; reaching the cap is a new event, sent once.
        await redis.hset(counter, SPENT, parse_usd("100"))
        sent = await asyncio.gather(*(_tick(f, redis_server.url, MID_MONTH)
                                      for f in (one, two)))
        assert sum(sent) == 2
        assert await _tick(one, redis_server.url, MID_MONTH) == 0
        assert sorted(m["title"] for m in got[2:]) == [
            "Developer Ada: 95% of the monthly cap", "Developer Ada: monthly cap reached"]
        assert len(got) == 4
        blocked = next(m for m in got if m["title"].endswith("cap reached"))
        assert blocked["message"].startswith(
            "Developer Ada: monthly cap reached. Spent $100.00 of $100.00; forecast $162.00 by "
            "2027-01-01 00:00 UTC.")
    finally:
        await redis.flushdb()
        await redis.aclose()


def test_a_destination_url_is_never_shown_back_in_full(tmp_path: Path) -> None:
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    url = "mailtos://user:hunter2-secret@smtp.example.com?to=finance@example.com"
    dest = Destinations(catalog).add("org", "", "finance mail", url, ["blocked"], actor="t")
    assert dest["url"] == mask(url) == "mailtos://….com"
    assert "hunter2" not in str(Destinations(catalog).shown())
    assert "hunter2" not in str(catalog.audit())
    assert Destinations(catalog).secret(dest["id"])["url"] == url


async def test_the_test_button_emails_through_a_local_smtp_sink_and_logs_it(
        dashboard: Dashboard, smtp: tuple[Sink, int]) -> None:
    sink, port = smtp
    admin = await dashboard.signed_in("admin")
    secret = f"mailto://127.0.0.1:{port}?from=meterd@example.com&to=finance@example.com" \
             "&mode=insecure&pass=smtp-secret"
    status, _, _ = await admin.post("/admin/alerts/destinations", {
        "label": "finance mail", "url": secret, "events": "blocked"})
    assert status == 303
    page = await admin.page("/admin/alerts")
    assert "smtp-secret" not in str(page)
    row = page.select_one("#destinations tbody tr")
    assert row is not None
    status, _, _ = await admin.post(f"/admin/alerts/destinations/{row['data-id']}/test")
    assert status == 303
    assert len(sink.mail) == 1
    to, message = sink.mail[0]
    assert to == ["finance@example.com"] and "Subject: meterd test alert" in message
    log = (await admin.page("/admin/alerts")).select("#alert-log tbody tr")
    assert [td.get_text(strip=True) for td in log[0].select("td")][1:6] == [
        "test", "finance mail", "meterd test alert", "sent", "1"]


async def test_a_failing_destination_is_retried_and_logged_failed_with_why(
        dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    catalog = dashboard.gateway.admin.catalog
    dead = f"json://127.0.0.1:{free_port()}/hook"  # nothing listens
    dest = await dashboard.gateway.admin.db(Destinations(catalog).add, "org", "", "dead",
                                            dead, ["blocked"])
    status, _, _ = await admin.post(f"/admin/alerts/destinations/{dest['id']}/test")
    assert status == 303
    cells = [td.get_text(strip=True) for td in
             (await admin.page("/admin/alerts")).select("#alert-log tbody tr")[0].select("td")]
    assert cells[4:6] == ["failed", "3"]
    assert "connection error" in cells[6].lower() and dead not in cells[6]


async def test_alert_forms_need_their_csrf_token(dashboard: Dashboard) -> None:
    admin = await dashboard.signed_in("admin")
    catalog = dashboard.gateway.admin.catalog
    dest = await dashboard.gateway.admin.db(Destinations(catalog).add, "org", "", "hook",
                                            "json://127.0.0.1:9/hook", ["blocked"])
    for path, body in (("/admin/alerts/destinations",
                        {"label": "x", "url": "json://127.0.0.1:9/x", "events": "blocked"}),
                       (f"/admin/alerts/destinations/{dest['id']}/test", {}),
                       (f"/admin/alerts/destinations/{dest['id']}/delete", {})):
        status, _, _ = await admin.post(path, body, csrf=False)
        assert status == 403, path
    assert [d["id"] for d in await dashboard.gateway.admin.db(Destinations(catalog).shown)] \
        == [dest["id"]]
    assert await dashboard.gateway.admin.db(Destinations(catalog).log) == []


def _request_row(conn: Any, request_id: str, ts: datetime, status: int) -> None:
    """A request log row: every column at its type's zero but the ones a test is about."""
    zero = {"VARCHAR": "", "BOOLEAN": False, "TIMESTAMP": ts, "DATE": ts.date()}
    cols = conn.execute("DESCRIBE requests").fetchall()
    values = {c[0]: zero.get(c[1], 0) for c in cols}
    values.update(id=request_id, ts=ts, status=status)
    conn.execute(f"INSERT INTO requests ({', '.join(values)}) VALUES "
                 f"({', '.join('?' * len(values))})", list(values.values()))


def _day(conn: Any, day: Any, developer_id: str, micros: int) -> None:
    conn.execute("INSERT INTO usage_daily VALUES (?, ?, 'team', 'claude-sonnet-4-6', 1, 0, 0, "
                 "0, 0, 0, 0, 0, 0, ?, 0)", [day, developer_id, micros])


@pytest.fixture
async def hooked(redis: Any, tmp_path: Path, webhook: tuple[TestServer, list[dict[str, Any]]]
                 ) -> AsyncIterator[tuple[Alerter, Catalog, list[dict[str, Any]]]]:
    server, got = webhook
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    dests = Destinations(catalog)
    dests.add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
              ["unusual", "upstream", "digest_daily"])

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    yield Alerter(dests, db, redis, KeySpace(), backoff=0.01), catalog, got
    catalog.conn.close()


async def test_a_day_far_above_a_developers_usual_is_told_once(
        hooked: tuple[Alerter, Catalog, list[dict[str, Any]]]) -> None:
    alerter, catalog, got = hooked
    today = MID_MONTH.date()
    for n in range(1, 7):  # six usual days of $2 each
        for dev in ("dev_ada", "dev_bob"):
            _day(catalog.conn, today - timedelta(days=n), dev, parse_usd("2"))
    _day(catalog.conn, today, "dev_ada", parse_usd("10"))  # 5× her median: unusual
    _day(catalog.conn, today, "dev_bob", parse_usd("5.99"))  # under 3×: not
    assert await evaluate_ledger(alerter, catalog, MID_MONTH) == 1
    assert await evaluate_ledger(alerter, catalog, MID_MONTH) == 0
    assert [m["title"] for m in got] == ["Unusual spend: dev_ada"]
    assert got[0]["message"] == ("dev_ada spent $10.00 today, against a usual day of $2.00 "
                                 "(median of the last 28 days).")


async def test_upstream_failures_in_an_hour_are_told_once_past_the_threshold(
        hooked: tuple[Alerter, Catalog, list[dict[str, Any]]]) -> None:
    alerter, catalog, got = hooked
    hour = MID_MONTH.replace(tzinfo=None)
    for n in range(9):
        _request_row(catalog.conn, f"r{n}", hour + timedelta(minutes=n), 502)
    _request_row(catalog.conn, "ok", hour, 200)
    _request_row(catalog.conn, "earlier", hour - timedelta(minutes=1), 504)
    assert await evaluate_ledger(alerter, catalog, MID_MONTH) == 0  # 9 in this hour
    _request_row(catalog.conn, "r9", hour + timedelta(minutes=30), 529)
    assert await evaluate_ledger(alerter, catalog, MID_MONTH + timedelta(minutes=40)) == 1
    assert await evaluate_ledger(alerter, catalog, MID_MONTH + timedelta(minutes=50)) == 0
    assert [m["title"] for m in got] == ["The provider is failing requests"]
    assert got[0]["message"].startswith("10 requests failed upstream (5xx) since "
                                        "2026-12-16 12:00 UTC")


async def test_the_daily_digest_gives_spend_forecast_and_top_movers(
        hooked: tuple[Alerter, Catalog, list[dict[str, Any]]]) -> None:
    alerter, catalog, got = hooked
    catalog.create_team("platform")
    ada = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    bob = catalog.create_developer("Bob", "bob@example.com", "platform")["id"]
    today = MID_MONTH.date()  # Dec 16: the digest covers Dec 15, against Dec 14
    _day(catalog.conn, today - timedelta(days=1), ada, parse_usd("30"))
    _day(catalog.conn, today - timedelta(days=2), ada, parse_usd("10"))
    _day(catalog.conn, today - timedelta(days=1), bob, parse_usd("5"))
    _day(catalog.conn, today - timedelta(days=2), bob, parse_usd("20"))
    _day(catalog.conn, today, bob, parse_usd("99"))  # today is not in it
    assert await send_digest(alerter, catalog, 1, MID_MONTH)
    assert not await send_digest(alerter, catalog, 1, MID_MONTH)  # once a day
    assert [m["title"] for m in got] == ["meterd daily digest, 2026-12-16"]
    # The month-end forecast the dashboard shows: $164 so far (today's $99 included) plus the
    # last 7 complete days' average, $65 // 7 = $9.285714 a day, over the 15.5 days left:
    # 164,000,000 + 9,285,714 × 1,339,200 // 86,400 = 307,928,567 µ$.
    assert got[0]["message"].splitlines() == [
        "Spent $35.00 (the 1 day(s) before: $30.00).",
        "This month so far $164.00; forecast $307.93.",
        "Top movers: Ada +$20.00, Bob -$15.00"]


async def test_the_digest_covers_the_organizations_yesterday(
        hooked: tuple[Alerter, Catalog, list[dict[str, Any]]]) -> None:
    alerter, catalog, got = hooked
    catalog.create_team("platform")
    ada = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    _day(catalog.conn, date(2026, 3, 6), ada, parse_usd("10"))
    _day(catalog.conn, date(2026, 3, 7), ada, parse_usd("7"))
    periods.set_zone("America/New_York")
    try:  # 03:00 UTC on 8 March is 22:00 EST on the 7th: yesterday is the 6th
        assert await send_digest(alerter, catalog, 1, datetime(2026, 3, 8, 3, tzinfo=UTC))
    finally:
        periods.set_zone("UTC")
    assert [m["title"] for m in got] == ["meterd daily digest, 2026-03-07"]
    assert got[0]["message"].startswith("Spent $10.00 (the 1 day(s) before: $0.00).")


class Jobs:
    """Stands in for the scheduler: keeps the jobs so a test runs a tick when it wants."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}

    def add_job(self, fn: Any, *args: Any, id: str, **kwargs: Any) -> None:
        self.jobs[id] = fn


async def test_a_redis_outage_is_told_once_when_redis_answers_again(
        own_redis: RedisServer, tmp_path: Path,
        webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    Destinations(catalog).add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
                              ["redis"])
    state = AdminState(catalog, connect_redis(own_redis.url), KeySpace(), "")
    jobs = Jobs()
    schedule_alerts(jobs, state, (75, 95), 1.0)  # type: ignore[arg-type]
    tick = jobs.jobs["alerts"]
    try:
        await tick()
        own_redis.stop()
        await tick()
        await tick()
        assert got == []  # nothing can be claimed, so nothing is sent, while it is away
        own_redis.start()
        await tick()
        await tick()
        assert [m["title"] for m in got] == ["Redis was unreachable"]
    finally:
        await state.redis.aclose()
        state.executor.shutdown(wait=True)
        catalog.conn.close()


async def test_a_redis_outage_is_told_once_by_two_admins_that_noticed_it_at_other_minutes(
        own_redis: RedisServer, tmp_path: Path,
        webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    ticks, states = [], []
    # Each admin process has its own DuckDB file and its own clock: one finds Redis away at
    # 12:00:59, the other at 12:01:01.
    for name, noticed in (("one", MID_MONTH + timedelta(seconds=59)),
                          ("two", MID_MONTH + timedelta(seconds=61))):
        catalog = Catalog(connect(tmp_path / f"{name}.duckdb"))
        Destinations(catalog).add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
                                  ["redis"])
        state = AdminState(catalog, connect_redis(own_redis.url), KeySpace(), "")
        jobs = Jobs()
        schedule_alerts(jobs, state, (75, 95), 1.0,  # type: ignore[arg-type]
                        clock=partial(lambda at: at, noticed))
        ticks.append(jobs.jobs["alerts"])
        states.append(state)
    one, two = ticks

    async def outage(noticed_by: list[Any], save: bool) -> None:
        own_redis.stop(save=save)
        for tick in noticed_by:
            await tick()
        own_redis.start()
        for _ in range(2):  # the first command may meet the old connection, and fail
            await asyncio.gather(one(), two())

    try:
        await asyncio.gather(one(), two())
        await outage([one, two], save=True)  # Redis comes back with its data
        assert [m["title"] for m in got] == ["Redis was unreachable"]
        assert got[0]["message"].startswith("From about 2026-12-16 12:00:59 UTC") or \
            got[0]["message"].startswith("From about 2026-12-16 12:01:01 UTC")
        await outage([two], save=False)  # back empty; only one admin looked meanwhile
        assert len(got) == 2
        await outage([one, two], save=False)  # back empty, both saw it
        await outage([one, two], save=True)
        assert [m["title"] for m in got] == ["Redis was unreachable"] * 4
    finally:
        for state in states:
            await state.redis.aclose()
            state.executor.shutdown(wait=True)
            state.catalog.conn.close()


async def test_a_team_destination_hears_its_own_team_only(
        redis: Any, tmp_path: Path, webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    catalog.create_team("platform")
    catalog.create_team("data")
    ada = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    bob = catalog.create_developer("Bob", "bob@example.com", "data")["id"]
    for dev in (ada, bob):
        catalog.set_budget("developer", dev, "monthly", parse_usd("10"))
    dests = Destinations(catalog)
    dests.add("team", "platform", "platform hook", f"json://127.0.0.1:{server.port}/hook",
              ["blocked"])

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    for dev in (ada, bob):
        await redis.hset(KeySpace().counter("developer", dev, "monthly", MID_MONTH), SPENT,
                         parse_usd("10"))
    alerter = Alerter(dests, db, redis, KeySpace(), backoff=0.01)
    assert await evaluate_budgets(alerter, catalog, (75, 95), MID_MONTH) == 4  # 2 × 95 %, cap
    assert [m["title"] for m in got] == ["Developer Ada: monthly cap reached"]


async def test_a_cap_with_its_own_thresholds_warns_at_those(
        redis: Any, tmp_path: Path, webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    catalog.create_team("platform")
    ada = catalog.create_developer("Ada", "ada@example.com", "platform")["id"]
    cap = catalog.set_budget("developer", ada, "monthly", parse_usd("100"))
    dests = Destinations(catalog)
    dests.add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook", ["threshold"])
    dests.set_thresholds(cap["id"], [50, 60], actor="alice")

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    alerter = Alerter(dests, db, redis, KeySpace(), backoff=0.01)
    counter = KeySpace().counter("developer", ada, "monthly", MID_MONTH)
    await redis.hset(counter, SPENT, parse_usd("50"))  # 50 %: under the defaults, not hers
    await evaluate_budgets(alerter, catalog, (75, 95), MID_MONTH)
    await redis.hset(counter, SPENT, parse_usd("60"))
    await evaluate_budgets(alerter, catalog, (75, 95), MID_MONTH)
    assert [m["title"] for m in got] == ["Developer Ada: 50% of the monthly cap",
                                         "Developer Ada: 60% of the monthly cap"]
    with pytest.raises(CatalogError, match="between 1 and 99"):
        dests.set_thresholds(cap["id"], [100])


async def test_without_redis_an_event_is_not_sent_rather_than_sent_twice(
        tmp_path: Path, webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    catalog = Catalog(connect(tmp_path / "c.duckdb"))
    dests = Destinations(catalog)
    dests.add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook", ["increase"])

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    away = connect_redis(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    try:
        alerter = Alerter(dests, db, away, KeySpace(), backoff=0.01)
        assert not await alerter.fire("increase", "increase:x", 60, "t", "b")
    finally:
        await away.aclose()
    assert got == []


async def test_fallbacks_and_replays_reach_the_webhook_once_across_two_proxies_and_a_restart(
        gateway: Gateway, proxies: list[tuple[str, ProxyState]], tmp_path: Path,
        webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    """The proxies' in-process counts are raised here as routing (proxy.metrics.fallbacks),
    Gate.replay_spool and Journal.watch raise them; their reports and the alerts are real."""
    server, got = webhook
    (_, one), (_, two) = proxies
    redis = gateway.admin.redis
    at = MID_MONTH + timedelta(minutes=5)
    one.metrics.fallbacks[("bedrock", "anthropic")] += 2
    two.metrics.fallbacks[("bedrock", "anthropic")] += 1
    two.metrics.fallbacks[("vertex", "anthropic")] += 1
    one.gate.spool_replayed += 3
    assert two.gate.journal is not None
    two.gate.journal.replays += 1
    for state in (one, two):
        await state.report_ops(at)
        await state.report_ops(at)  # nothing grew: nothing added again
    assert await ops_counts.read(redis, KeySpace(), at) == {
        "fallback:bedrock>anthropic": 3, "fallback:vertex>anthropic": 1, "spool": 3,
        "journal": 1}

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def admin(name: str) -> Alerter:  # an admin process: its own DuckDB file, the one Redis
        catalog = Catalog(connect(tmp_path / f"{name}.duckdb"))
        dests = Destinations(catalog)
        if not dests.shown():
            dests.add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
                      ["fallback", "replay"])
        return Alerter(dests, db, redis, KeySpace(), backoff=0.01)

    first, second = admin("one"), admin("two")
    sent = await asyncio.gather(evaluate_ops(first, at), evaluate_ops(second, at))
    assert sum(sent) == 4
    first.destinations.catalog.conn.close()
    assert await evaluate_ops(admin("one"), at) == 0  # restarted: nothing again
    one.metrics.fallbacks[("bedrock", "anthropic")] += 5  # more of the same, this hour
    await one.report_ops(at)
    assert await evaluate_ops(second, at + timedelta(minutes=1)) == 0
    assert sorted(m["title"] for m in got) == [
        "Provider bedrock is failing over to anthropic",
        "Provider vertex is failing over to anthropic",
        "Redis lost data: the proxies replayed their journals",
        "Spooled usage replayed after a Redis outage"]
    told = next(m for m in got if m["title"].startswith("Provider bedrock"))
    assert told["message"] == ("3 request(s) that bedrock failed before answering were passed "
                               "to anthropic since 2026-12-16 12:00 UTC.")
    next_hour = at + timedelta(hours=1)  # a new hour is a new period
    one.metrics.fallbacks[("bedrock", "anthropic")] += 1
    await one.report_ops(next_hour)
    assert await evaluate_ops(second, next_hour) == 1
    assert len(got) == 5


BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
COST = 4500  # the mock's answer: 1200 × $3 + 60 × $15 per MTok, in µ$ (as in test_outage)


async def test_cap_events_from_spend_through_two_proxies_are_told_once_across_two_admins(
        gateway: Gateway, proxies: list[tuple[str, ProxyState]], tmp_path: Path,
        webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    key = await gateway.developer("Ada", "platform")
    cat = gateway.admin.catalog
    await gateway.change(cat.set_budget, "developer", "Ada", "monthly", 9 * COST)
    for _, state in proxies:
        await state.refresh_policy()
    async with aiohttp.ClientSession() as session:
        for i in range(9):  # the whole cap, alternating between the proxies
            async with session.post(proxies[i % 2][0] + "/v1/messages", data=BODY,
                                    headers={"x-api-key": key}) as resp:
                assert resp.status == 200
                await resp.read()
    for _, state in proxies:
        await state.drain()
    # The admins' own DuckDB files hold the gateway's teams, developers and caps.
    seed = tmp_path / "seed.duckdb"
    copy = Catalog(connect(seed))
    Destinations(copy).add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
                           ["threshold", "blocked", "forecast"])
    copy.conn.close()

    def export() -> None:
        cat.conn.execute(f"ATTACH '{seed}' AS seed")
        for table in ("teams", "developers", "budgets"):
            cat.conn.execute(f"INSERT INTO seed.{table} SELECT * FROM {table}")
        cat.conn.execute("DETACH seed")
    await gateway.admin.db(export)
    for name in ("one", "two"):
        shutil.copy(seed, tmp_path / f"{name}.duckdb")

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def tick(name: str) -> int:  # one admin process's tick, on its own DuckDB file
        catalog = Catalog(connect(tmp_path / f"{name}.duckdb"))
        try:
            alerter = Alerter(Destinations(catalog), db, gateway.admin.redis, KeySpace(),
                              backoff=0.01)
            return await evaluate_budgets(alerter, catalog, (75, 95))
        finally:
            catalog.conn.close()

    assert sum(await asyncio.gather(tick("one"), tick("two"))) == 2
    assert await tick("one") == await tick("two") == 0  # restarted: nothing again
    # Spent $0.0405 of $0.0405: the highest threshold and the cap, each once.
    assert sorted(m["title"] for m in got) == ["Developer Ada: 95% of the monthly cap",
                                               "Developer Ada: monthly cap reached"]


async def test_ledger_events_and_digests_are_told_once_across_two_admins_and_a_restart(
        tmp_path: Path, redis: Any, webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    seed = tmp_path / "seed.duckdb"
    catalog = Catalog(connect(seed))
    Destinations(catalog).add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook",
                              ["unusual", "upstream", "digest_daily", "digest_weekly"])
    today = MID_MONTH.date()
    for n in range(1, 7):
        _day(catalog.conn, today - timedelta(days=n), "dev_ada", parse_usd("2"))
    _day(catalog.conn, today, "dev_ada", parse_usd("10"))
    for n in range(10):
        _request_row(catalog.conn, f"r{n}", MID_MONTH.replace(tzinfo=None), 503)
    catalog.conn.close()
    for name in ("one", "two"):
        shutil.copy(seed, tmp_path / f"{name}.duckdb")

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def tick(name: str) -> int:
        catalog = Catalog(connect(tmp_path / f"{name}.duckdb"))
        try:
            alerter = Alerter(Destinations(catalog), db, redis, KeySpace(), backoff=0.01)
            sent = await evaluate_ledger(alerter, catalog, MID_MONTH)
            for days in (1, 7):
                sent += await send_digest(alerter, catalog, days, MID_MONTH)
            return sent
        finally:
            catalog.conn.close()

    assert sum(await asyncio.gather(tick("one"), tick("two"))) == 4
    assert await tick("one") == await tick("two") == 0  # restarted: nothing again
    assert sorted(m["title"] for m in got) == [
        "The provider is failing requests", "Unusual spend: dev_ada",
        "meterd daily digest, 2026-12-16", "meterd weekly digest, 2026-12-16"]
