"""Latency of every report query and every dashboard page on a large ledger (make one with
gen_requests.py).

    python bench/report_bench.py [--db PATH] [--repeat 5] [--redis-url URL] [--pages-only]

Runs each dashboard query `--repeat` times on one connection (as the admin process does, on
its DuckDB thread) after one warm-up run, and prints the median and worst time, the rows
returned, and whether it meets the 300 ms budget. The Parquet export (archiving, not a dashboard
query) is timed once, for information. Dates are relative to the newest request in the file.

Then every dashboard page, served by the real admin app (create_root_app) on a copy of the file
with Redis (embedded unless --redis-url; its counters rebuilt from the ledger at start, as
after a Redis loss), fetched over loopback as an admin (and /me as a developer): median and
worst time to the last byte, and the page's bytes, against the targets (300 ms, 1 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
from aiohttp.test_utils import TestServer

from dashboard.accounts import Accounts, hash_password
from dashboard.state import ADMIN
from ledger import exports, forecasts, pivot, reports, session_report
from ledger.redis_client import connect_redis
from meterd.apps import ADMIN_APP, DB_FILE, create_root_app
from meterd.settings import Settings

DEFAULT_DB = Path(tempfile.gettempdir()) / "meterd-bench" / "requests.duckdb"
BUDGET_MS = 300
BUDGET_BYTES = 1_000_000


def queries(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, Callable[[], Any]]]:
    row = conn.execute("SELECT max(ts), min(ts), count(*) FROM requests").fetchone()
    assert row and row[0], "no requests in this file: run bench/gen_requests.py first"
    newest, oldest, count = row
    print(f"{count:,} requests from {oldest:%Y-%m-%d} to {newest:%Y-%m-%d %H:%M}")
    end = newest.date() + timedelta(days=1)
    month, week, quarter = end - timedelta(days=30), end - timedelta(days=7), oldest.date()
    dev = conn.execute("SELECT developer_id FROM requests LIMIT 1").fetchone()
    team = conn.execute("SELECT team_id FROM requests LIMIT 1").fetchone()
    session = conn.execute("SELECT session_id FROM requests ORDER BY ts DESC LIMIT 1"
                           ).fetchone()
    assert dev and team and session
    now = datetime.combine(newest.date(), dtime(15), UTC)
    day_start = datetime.combine(newest.date(), dtime(0), UTC)
    c = conn
    spend = partial(reports.spend, c, end=end)
    page = partial(reports.requests_page, c)
    out: list[tuple[str, Callable[[], Any]]] = []
    for grain, start in (("day", month), ("week", quarter), ("month", quarter)):
        days = f"({(end - start).days} d)"
        for dim in reports.DIMENSIONS:
            out.append((f"spend {grain} x {dim} {days}",
                        partial(spend, start=start, grain=grain, dimension=dim)))
        out.append((f"spend {grain} x session, top 100 {days}",
                    partial(spend, start=start, grain=grain, dimension="session", limit=100)))
    out += [
        ("spend week x model, one developer", partial(
            spend, start=quarter, grain="week", dimension="model", developer_id=dev[0])),
        ("spend day x developer, one team", partial(
            spend, start=month, dimension="developer", team_id=team[0])),
        ("totals (30 d)", partial(reports.totals, c, start=month, end=end)),
        ("totals, one team (30 d)", partial(reports.totals, c, start=month, end=end,
                                            team_id=team[0])),
        *((f"top spenders by {d} (30 d)", partial(reports.top_spenders, c, start=month,
                                                  end=end, dimension=d))
          for d in reports.DIMENSIONS),
        ("cache savings (30 d)", partial(reports.cache_savings, c, start=month, end=end)),
        ("cache savings, one developer (90 d)", partial(
            reports.cache_savings, c, start=quarter, end=end, developer_id=dev[0])),
        ("forecast (all budgets)", partial(reports.forecast, c, now=now)),
        ("requests page 1", page),
        ("requests page 200 (offset 10,000)", partial(page, offset=10_000)),
        ("requests, one developer", partial(page, developer_id=dev[0])),
        ("requests, one team, errors", partial(page, team_id=team[0], status="error")),
        ("requests, one model, today", partial(page, model="claude-opus-4-8",
                                               start=day_start)),
        ("requests, one session", partial(page, session_id=session[0])),
        ("requests, last 7 days, ok, page 3", partial(
            page, start=datetime.combine(week, dtime(0), UTC), status="ok", offset=100)),
        ("CSV export of spend day x team (30 d)",
         lambda: reports.export_csv(spend(start=month))),
        *((f"pivot week x {d}, top 20 ({(end - quarter).days} d)", partial(
            pivot.pivot, c, start=quarter, end=end, grain="week", dimension=d))
          for d in reports.DIMENSIONS),
        ("pivot day x developer, page 5 (30 d)", partial(
            pivot.pivot, c, start=month, end=end, dimension="developer", offset=80)),
        ("statement (last month)", partial(pivot.statement, c, month=month)),
        ("month-end forecasts (org + every team)", partial(forecasts.month_end, c, now=now)),
        ("session view", partial(session_report.session, c, session[0])),
        ("CSV stream week x developer (90 d)", lambda: "".join(exports.pivot_csv(
            c, start=quarter, end=end, grain="week", dimension="developer"))),
        ("CSV stream of requests, one team, 7 d", lambda: "".join(exports.requests_csv(
            c, team_id=team[0], start=datetime.combine(week, dtime(0), UTC)))),
    ]
    return out


def pages(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, Callable[[], Any]]]:
    """The ledger calls each new page makes, together (its server time less the rendering)."""
    c = conn
    newest = c.execute("SELECT max(ts) FROM requests").fetchone()
    session = c.execute("SELECT session_id FROM requests ORDER BY ts DESC LIMIT 1").fetchone()
    dev = c.execute("SELECT developer_id FROM requests LIMIT 1").fetchone()
    assert newest and session and dev
    end = newest[0].date() + timedelta(days=1)
    now = datetime.combine(newest[0].date(), dtime(15), UTC)

    def report_page(days: int, grain: str, dim: str) -> Callable[[], Any]:
        start = end - timedelta(days=days)
        return lambda: (pivot.pivot(c, start=start, end=end, grain=grain, dimension=dim),
                        reports.totals(c, start=start, end=end),
                        reports.cache_savings(c, start=start, end=end))

    def me_page() -> Any:
        start = end - timedelta(days=30)
        return (pivot.pivot(c, start=start, end=end, grain="month", dimension="model",
                            developer_id=dev[0]),
                pivot.pivot(c, start=start, end=end, grain="month", dimension="session",
                            developer_id=dev[0]),
                forecasts.month_end(c, now=now),
                reports.requests_page(c, developer_id=dev[0], limit=10))

    return [
        ("/reports day x developer, 90 d", report_page(90, "day", "developer")),
        ("/reports week x developer, 90 d", report_page(90, "week", "developer")),
        ("/reports week x session, 90 d", report_page(90, "week", "session")),
        ("/reports day x model, last 7 days", report_page(7, "day", "model")),
        ("/reports/statement", lambda: pivot.statement(c, month=end - timedelta(days=1))),
        ("/forecasts", lambda: forecasts.month_end(c, now=now)),
        ("/sessions/{id}", lambda: session_report.session(c, session[0])),
        ("/me (30 d)", me_page),
    ]


def rows_of(result: Any) -> int:
    if isinstance(result, tuple):  # requests_page: (page, total)
        return len(result[0])
    if isinstance(result, list | str):
        return len(result) if isinstance(result, list) else result.count("\n")
    return 1


def page_paths(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(name, path under /admin) of every dashboard page, on ids taken from the ledger."""
    row = conn.execute("SELECT developer_id, team_id FROM requests ORDER BY ts DESC LIMIT 1"
                       ).fetchone()
    session = conn.execute("SELECT session_id FROM requests ORDER BY ts DESC LIMIT 1"
                           ).fetchone()
    assert row and session
    dev, team = row
    return [
        ("overview", "/"), ("teams", "/teams"), ("team", f"/teams/{team}"),
        ("developers", "/developers"), ("developer", f"/developers/{dev}"),
        ("reports (default: day x team, 30 d)", "/reports"),
        *((f"reports preset {p} x developer", f"/reports?preset={p}&dimension=developer")
          for p in ("7d", "last-month", "qtd")),
        ("reports preset qtd, week x session", "/reports?preset=qtd&grain=week&dimension=session"),
        ("reports preset 7d, one team x developer",
         f"/reports?preset=7d&dimension=developer&team={team}"),
        ("request log", "/requests"), ("request log, refused", "/requests?status=refused"),
        ("request log, page 100", "/requests?page=100"),
        ("statement", "/reports/statement"), ("forecasts", "/forecasts"),
        ("session", f"/sessions/{session[0]}"), ("me (developer)", "/me"),
    ]


async def _signed_in(base: str, form: str, data: dict[str, str]) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get("/admin/signin") as r:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert csrf, "no CSRF token on the sign-in page"
    async with http.post(form, data={**data, "csrf": csrf.group(1)},
                         allow_redirects=False) as r:
        assert r.status == 303, f"sign-in failed: {r.status}"
    return http


async def bench_pages(db: Path, redis_url: str, repeat: int) -> int:
    """Serve a copy of `db` with the real app; print each page's time and size. Returns how
    many pages miss a target."""
    with duckdb.connect(str(db), read_only=True) as conn:
        paths = page_paths(conn)
        dev = conn.execute("SELECT developer_id FROM requests ORDER BY ts DESC LIMIT 1"
                           ).fetchone()
    assert dev
    with tempfile.TemporaryDirectory() as data:
        shutil.copy(db, Path(data) / DB_FILE)
        settings = Settings(data_dir=data, redis_url=redis_url, log_level="warning",
                            rollup_interval=3600.0,
                            redis_prefix=f"bench{time.time_ns()}").replace()
        app = create_root_app(settings, proxy=False)
        t0 = time.perf_counter()
        server = TestServer(app)
        await server.start_server()
        print(f"\nadmin app up on {len(paths)} pages in {time.perf_counter() - t0:.1f} s "
              f"(policy published, counters rebuilt from the ledger)")
        try:
            state = app[ADMIN_APP][ADMIN]
            accounts = Accounts(state.catalog)
            await state.db(accounts.create_user, "bench", "", "admin",
                           password_hash=hash_password("bench password 1"))
            key = await state.db(state.catalog.issue_key, dev[0])
            base = str(server.make_url("")).rstrip("/")
            admin = await _signed_in(base, "/admin/signin",
                                     {"name": "bench", "password": "bench password 1"})
            developer = await _signed_in(base, "/admin/signin/key", {"key": str(key.secret)})
            try:
                return await _time_pages(paths, admin, developer, repeat)
            finally:
                await admin.close()
                await developer.close()
        finally:
            await server.close()
            if redis_url:  # a shared server: leave nothing of this run behind
                await _drop_keys(redis_url, settings.redis_prefix)


async def _drop_keys(redis_url: str, prefix: str) -> None:
    redis = connect_redis(redis_url)
    try:
        async for key in redis.scan_iter(match=f"{{{prefix}}}*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()


async def _time_pages(paths: list[tuple[str, str]], admin: aiohttp.ClientSession,
                      developer: aiohttp.ClientSession, repeat: int) -> int:
    print(f"{'page':<44} {'median ms':>10} {'worst ms':>9} {'bytes':>10}  targets "
          f"< {BUDGET_MS} ms, < {BUDGET_BYTES:,} B")
    missed = 0
    for name, path in paths:
        http = developer if path == "/me" else admin
        times, size = [], 0
        for i in range(repeat + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            async with http.get(f"/admin{path}", allow_redirects=False) as r:
                body = await r.read()
                assert r.status == 200, f"{path}: {r.status} {body[:200]!r}"
            if i:
                times.append((time.perf_counter() - t0) * 1000)
            size = len(body)
        worst = max(times)
        flags = [f"over {BUDGET_MS} ms"] * (worst >= BUDGET_MS) + \
            [f"over {BUDGET_BYTES:,} B"] * (size >= BUDGET_BYTES)
        missed += bool(flags)
        print(f"{name:<44} {statistics.median(times):>10.1f} {worst:>9.1f} {size:>10,}  "
              f"{', '.join(flags) or 'ok'}")
    print(f"{'every page meets' if not missed else f'{missed} pages miss'} the targets")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default="",
                        help="Redis for the page benchmark (default: embedded)")
    parser.add_argument("--pages-only", action="store_true",
                        help="skip the query tables; time the pages only")
    args = parser.parse_args()
    if args.pages_only:
        asyncio.run(bench_pages(args.db, args.redis_url, args.repeat))
        return
    conn = duckdb.connect(str(args.db), read_only=True)
    slow = 0
    todo = queries(conn)
    print(f"{'query':<44} {'median ms':>10} {'worst ms':>9} {'rows':>6}")
    for name, run in todo:
        result = run()  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = run()
            times.append((time.perf_counter() - t0) * 1000)
        worst = max(times)
        slow += worst >= BUDGET_MS
        flag = "" if worst < BUDGET_MS else f"  over {BUDGET_MS} ms"
        print(f"{name:<44} {statistics.median(times):>10.1f} {worst:>9.1f} "
              f"{rows_of(result):>6}{flag}")
    print(f"\n{'page (its ledger calls together)':<44} {'median ms':>10} {'worst ms':>9}")
    for name, run in pages(conn):
        run()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1000)
        worst = max(times)
        slow += worst >= BUDGET_MS
        flag = "" if worst < BUDGET_MS else f"  over {BUDGET_MS} ms"
        print(f"{name:<44} {statistics.median(times):>10.1f} {worst:>9.1f}{flag}")
    with tempfile.TemporaryDirectory() as tmp:
        newest = conn.execute("SELECT max(ts)::DATE FROM requests").fetchone()
        assert newest
        t0 = time.perf_counter()
        n = reports.export_parquet(conn, start=newest[0] - timedelta(days=6),
                                   end=newest[0] + timedelta(days=1), path=Path(tmp) / "a.pq")
        print(f"(archive) Parquet export of 7 days: {n:,} rows in "
              f"{(time.perf_counter() - t0) * 1000:,.0f} ms")
    print(f"{'all dashboard queries under' if not slow else f'{slow} queries not under'} "
          f"{BUDGET_MS} ms")
    conn.close()
    asyncio.run(bench_pages(args.db, args.redis_url, args.repeat))


if __name__ == "__main__":
    main()
