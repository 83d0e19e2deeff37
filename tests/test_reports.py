"""Reports against an independent computation: the same synthetic events are rolled up into
DuckDB through the real stream and summed in plain Python here, for every dimension and grain.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger import forecasts, reports
from ledger.catalog import Catalog
from ledger.periods import period_end, period_start
from ledger.rollup import Rollup
from tests.test_rollup import (
    KS,
    expected_saved,
    fresh_db,
    inline_db,
    is_error,
    make_events,
    send,
)

FIRST, DAYS = datetime(2026, 1, 3, tzinfo=UTC), 80  # 3 Jan to 23 Mar: weeks and months
START, END = date(2026, 1, 10), date(2026, 3, 15)  # partial weeks and months at both ends
MEASURES = reports.MEASURES


@dataclass
class Ledger:
    conn: duckdb.DuckDBPyConnection
    catalog: Catalog
    events: list[dict[str, Any]]
    names: dict[str, dict[str, str]]  # dimension → key → label


@pytest.fixture
async def ledger(redis: Any) -> Ledger:
    conn = fresh_db()
    catalog = Catalog(conn)
    teams = {name: catalog.create_team(name)["id"] for name in ("platform", "research")}
    devs = {}
    for name, team in (("Ada", "platform"), ("Bo", "platform"), ("Cy", "research")):
        row = catalog.create_developer(name, f"{name.lower()}@example.com", team)
        devs[row["id"]] = (name, teams[team])
    events = make_events(1500, seed=21, start=FIRST, days=DAYS,
                         developers=[(d, t) for d, (_, t) in devs.items()])
    # Someone who has since left the catalog: labelled by id.
    events += make_events(40, seed=22, start=FIRST, days=DAYS, prefix="gone_",
                          developers=[("dev_gone", "team_gone")])
    await send(redis, events)
    rollup = Rollup(redis, KS, conn, inline_db)
    assert await rollup.run_once() == len(events)
    await rollup.close()
    names = {
        "developer": {d: n for d, (n, _) in devs.items()},
        "team": {t: n for n, t in teams.items()},
    }
    return Ledger(conn, catalog, events, names)


def day_of(e: dict[str, Any]) -> date:
    return datetime.fromtimestamp(e["ts_ms"] / 1000, UTC).date()


def period_of(day: date, grain: str) -> date:
    if grain == "week":
        return day - timedelta(days=day.weekday())
    if grain == "month":
        return day.replace(day=1)
    return day


KEY_FIELD = {"developer": "developer_id", "team": "team_id", "model": "model",
             "session": "session_id", "project": "project"}


def label(ledger: Ledger, dimension: str, key: str) -> str:
    if dimension == "session":
        return key or reports.NO_SESSION
    if dimension == "project":
        return key or reports.NO_PROJECT
    return ledger.names.get(dimension, {}).get(key, key)


def selected(ledger: Ledger, start: date, end: date, developer_id: str | None = None,
             team_id: str | None = None) -> Iterator[dict[str, Any]]:
    for e in ledger.events:
        if not start <= day_of(e) < end:
            continue
        if developer_id is not None and e["developer_id"] != developer_id:
            continue
        if team_id is not None and e["team_id"] != team_id:
            continue
        yield e


def add(acc: dict[str, int], e: dict[str, Any]) -> None:
    acc["requests"] += 1
    acc["errors"] += is_error(e)
    for m in MEASURES[2:]:
        acc[m] += int(e[m])


def ref_spend(ledger: Ledger, start: date, end: date, grain: str, dimension: str,
              **filters: str | None) -> list[dict[str, Any]]:
    groups: dict[tuple[date, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in selected(ledger, start, end, **filters):
        add(groups[(period_of(day_of(e), grain), e[KEY_FIELD[dimension]])], e)
    rows = [{"period": p, "key": k, "label": label(ledger, dimension, k),
             **{m: acc[m] for m in MEASURES}} for (p, k), acc in groups.items()]
    return sorted(rows, key=lambda r: (r["period"], -r["cost_micros"], r["key"]))


def ref_totals(ledger: Ledger, start: date, end: date, **filters: str | None) -> dict[str, int]:
    acc: dict[str, int] = defaultdict(int)
    for e in selected(ledger, start, end, **filters):
        add(acc, e)
    return {m: acc[m] for m in MEASURES}


# --- spend, totals, top spenders, cache ------------------------------------------------------


@pytest.mark.parametrize("grain", reports.GRAINS)
@pytest.mark.parametrize("dimension", reports.DIMENSIONS)
async def test_spend_matches_plain_python_sums(ledger: Ledger, grain: str,
                                               dimension: str) -> None:
    got = reports.spend(ledger.conn, start=START, end=END, grain=grain, dimension=dimension)
    assert got == ref_spend(ledger, START, END, grain, dimension)
    assert len(got) > 3
    assert all(isinstance(r[m], int) for r in got for m in MEASURES)


@pytest.mark.parametrize("grain", reports.GRAINS)
async def test_spend_limit_keeps_the_costliest_keys_of_each_period(ledger: Ledger,
                                                                  grain: str) -> None:
    full = ref_spend(ledger, START, END, grain, "session")
    got = reports.spend(ledger.conn, start=START, end=END, grain=grain, dimension="session",
                        limit=2)
    by_period: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for row in full:
        by_period[row["period"]].append(row)
    assert got == [r for rows in by_period.values() for r in rows[:2]]


@pytest.mark.parametrize("dimension", reports.DIMENSIONS)
async def test_spend_filtered_to_a_developer_or_a_team(ledger: Ledger, dimension: str) -> None:
    dev = next(iter(ledger.names["developer"]))
    team = next(iter(ledger.names["team"]))
    choices: list[dict[str, Any]] = [{"developer_id": dev}, {"team_id": team},
                                      {"developer_id": dev, "team_id": team}]
    for filters in choices:
        got = reports.spend(ledger.conn, start=START, end=END, grain="week",
                            dimension=dimension, **filters)
        assert got == ref_spend(ledger, START, END, "week", dimension, **filters)
        assert got


async def test_end_date_is_exclusive_and_an_empty_range_is_empty(ledger: Ledger) -> None:
    day = date(2026, 2, 10)
    one = reports.spend(ledger.conn, start=day, end=day + timedelta(days=1), dimension="model")
    assert {r["period"] for r in one} == {day}
    assert reports.spend(ledger.conn, start=day, end=day) == []
    empty = reports.totals(ledger.conn, start=day, end=day)
    assert empty == dict.fromkeys(MEASURES, 0)


async def test_totals_match_plain_python_sums(ledger: Ledger) -> None:
    dev = next(iter(ledger.names["developer"]))
    team = next(iter(ledger.names["team"]))
    for filters in ({}, {"developer_id": dev}, {"team_id": team}):
        got = reports.totals(ledger.conn, start=START, end=END, **filters)
        assert got == ref_totals(ledger, START, END, **filters)


@pytest.mark.parametrize("dimension", reports.DIMENSIONS)
async def test_top_spenders_are_the_highest_cost_keys(ledger: Ledger, dimension: str) -> None:
    acc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in selected(ledger, START, END):
        acc[e[KEY_FIELD[dimension]]]["cost_micros"] += e["cost_micros"]
        acc[e[KEY_FIELD[dimension]]]["requests"] += 1
    want: list[dict[str, Any]] = sorted(
        ({"key": k, "label": label(ledger, dimension, k), **v} for k, v in acc.items()),
        key=lambda r: (-int(r["cost_micros"]), str(r["key"])))
    assert reports.top_spenders(ledger.conn, start=START, end=END, dimension=dimension,
                                limit=2) == want[:2]
    assert reports.top_spenders(ledger.conn, start=START, end=END, dimension=dimension,
                                limit=100) == want


async def test_cache_hit_ratio_and_money_saved_match_plain_python(ledger: Ledger) -> None:
    team = next(iter(ledger.names["team"]))
    for filters in ({}, {"team_id": team}):
        chosen = list(selected(ledger, START, END, **filters))
        cache_read = sum(e["cache_read"] for e in chosen)
        prompt = sum(e["input_tokens"] + e["cache_write_5m"] + e["cache_write_1h"]
                     + e["cache_read"] for e in chosen)
        assert reports.cache_savings(ledger.conn, start=START, end=END, **filters) == {
            "cache_read": cache_read, "prompt_tokens": prompt,
            "hit_permille": cache_read * 1000 // prompt,
            "saved_micros": sum(expected_saved(e) for e in chosen)}
    nothing = reports.cache_savings(ledger.conn, start=END, end=END)
    assert nothing == {"cache_read": 0, "prompt_tokens": 0, "hit_permille": 0,
                       "saved_micros": 0}


# --- forecasts ---------------------------------------------------------------------------------


async def test_forecast_projects_each_budget_from_its_period_run_rate(ledger: Ledger) -> None:
    dev, dev_name = next(iter(ledger.names["developer"].items()))
    team, team_name = next(iter(ledger.names["team"].items()))
    cat = ledger.catalog
    cat.set_budget("developer", dev, "daily", 5_000_000)
    cat.set_budget("team", team, "weekly", 40_000_000, mode="strict")
    cat.set_budget("org", "", "monthly", 100_000_000)
    cat.set_budget("team_member", team, "monthly", 30_000_000)
    now = datetime(2026, 3, 12, 18, 0, tzinfo=UTC)
    members = [d for d, (n, t) in _devs(ledger).items() if t == team]

    def spent(period: str, match: Any) -> int:
        first = period_start(period, now).date()
        return sum(e["cost_micros"] for e in ledger.events
                   if first <= day_of(e) <= now.date() and match(e))

    def projected(period: str, amount: int, match: Any) -> int:
        """The reference: spent plus the average of the 7 complete days before today for
        each second left, held at the cap (or at what was spent, past it)."""
        rate = sum(e["cost_micros"] for e in ledger.events
                   if now.date() - timedelta(days=7) <= day_of(e) < now.date()
                   and match(e)) // 7
        left = int((period_end(period, now) - now).total_seconds())
        value = spent(period, match) + rate * left // 86_400
        return max(amount, spent(period, match)) if value > amount else value

    got = {r["scope"]: r for r in reports.forecast(ledger.conn, now=now)}
    # The overview passes the run rates it reads for its live projections too.
    rates = forecasts.run_rates(ledger.conn, now=now)
    assert reports.forecast(ledger.conn, now=now, rates=rates) == reports.forecast(
        ledger.conn, now=now)
    of_dev = [lambda e: e["developer_id"] == dev]
    of_team = [lambda e: e["team_id"] == team]
    of_members = [lambda e, m=m: e["developer_id"] == m for m in members]
    cases = {  # period, cap, the counters it is compared with, name
        "developer": ("daily", 5_000_000, of_dev, dev_name),
        "team": ("weekly", 40_000_000, of_team, team_name),
        "org": ("monthly", 100_000_000, [lambda e: True], "organization"),
        "team_member": ("monthly", 30_000_000, of_members, None),
    }
    for scope, (period, amount, matches, name) in cases.items():
        row = got[scope]
        want = max(spent(period, m) for m in matches)
        assert want > 0
        assert (row["period"], row["amount_micros"], row["spent_micros"]) == (period, amount,
                                                                               want)
        assert row["projected_micros"] == max(projected(period, amount, m) for m in matches)
        assert row["percent"] == want * 100 // amount
        assert row["period_end"] == period_end(period, now)
        if name:
            assert row["label"] == name
    assert got["team_member"]["label"].startswith(f"each member of {team_name} (highest: ")
    # The table holds each kind of projection: below the cap, and held at it.
    assert {got[s]["projected_micros"] < got[s]["amount_micros"] for s in got} == {True, False}


def _devs(ledger: Ledger) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["name"], r["team_id"]) for r in ledger.catalog.developers()}


async def test_forecast_early_in_a_period_is_not_todays_start_stretched(
        ledger: Ledger) -> None:
    """One minute into the day, a daily cap is projected from the days before (their
    average per second left), not from the minute's spend times 1,440."""
    ledger.catalog.set_budget("org", "", "daily", 10**12)
    now = datetime(2026, 3, 12, 0, 1, tzinfo=UTC)
    (row,) = reports.forecast(ledger.conn, now=now)
    rate = sum(e["cost_micros"] for e in ledger.events
               if date(2026, 3, 5) <= day_of(e) < date(2026, 3, 12)) // 7
    assert rate > 0
    assert row["projected_micros"] == row["spent_micros"] + rate * 86_340 // 86_400


# --- the request log -------------------------------------------------------------------------


def _ts(e: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(e["ts_ms"] / 1000, UTC)


@pytest.mark.parametrize("filters", [
    {},
    {"status": "error"},
    {"status": "ok", "model": "claude-opus-4-8"},
    {"developer": True, "session": True},
    {"team": True, "start": datetime(2026, 2, 1, tzinfo=UTC),
     "end": datetime(2026, 2, 9, 12, tzinfo=UTC)},
    {"end": datetime(2026, 1, 20)},  # naive: taken as UTC
], ids=["all", "errors", "ok-model", "developer-session", "team-range", "naive-end"])
async def test_request_log_filters_and_pages_newest_first(ledger: Ledger,
                                                          filters: dict[str, Any]) -> None:
    dev = next(iter(ledger.names["developer"]))
    team = next(iter(ledger.names["team"]))
    args: dict[str, Any] = {
        "status": filters.get("status"), "model": filters.get("model"),
        "developer_id": dev if filters.get("developer") else None,
        "team_id": team if filters.get("team") else None,
        "session_id": f"sess-{dev}-1" if filters.get("session") else None,
        "start": filters.get("start"), "end": filters.get("end"),
    }
    start = args["start"]
    end = args["end"].replace(tzinfo=UTC) if args["end"] and not args["end"].tzinfo \
        else args["end"]

    def keep(e: dict[str, Any]) -> bool:
        return all((
            args["status"] is None or is_error(e) == (args["status"] == "error"),
            args["model"] is None or e["model"] == args["model"],
            args["developer_id"] is None or e["developer_id"] == args["developer_id"],
            args["team_id"] is None or e["team_id"] == args["team_id"],
            args["session_id"] is None or e["session_id"] == args["session_id"],
            start is None or _ts(e) >= start, end is None or _ts(e) < end))

    want = sorted((e for e in ledger.events if keep(e)), key=lambda e: (e["ts_ms"], e["id"]),
                  reverse=True)
    assert want
    seen = []
    for offset in range(0, len(want) + 20, 20):
        page, total = reports.requests_page(ledger.conn, limit=20, offset=offset, **args)
        assert total == len(want)
        seen += page
    assert [r["id"] for r in seen] == [e["id"] for e in want]
    first = seen[0]
    assert first["cost_micros"] == want[0]["cost_micros"]
    assert first["ts"] == _ts(want[0]).replace(tzinfo=None)


# --- exports and bad input --------------------------------------------------------------------


async def test_csv_export_round_trips_a_spend_report(ledger: Ledger) -> None:
    rows = reports.spend(ledger.conn, start=START, end=END, grain="month", dimension="team")
    text = reports.export_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == len(rows)
    for got, want in zip(parsed, rows, strict=True):
        assert got["period"] == want["period"].isoformat()
        assert got["label"] == want["label"]
        assert {m: int(got[m]) for m in MEASURES} == {m: want[m] for m in MEASURES}
        micros = want["cost_micros"]
        assert got["cost_usd"] == f"{micros // 1_000_000}.{micros % 1_000_000:06d}"
    assert reports.export_csv([]) == ""


@pytest.mark.parametrize(("text", "cell"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1+1", "'\t=1+1"), ("\r=1+1", "'\r=1+1"), ("x\r=1+1", "x\r=1+1"),
    ("claude-sonnet-4-6", "claude-sonnet-4-6"), ("a=b", "a=b"), ("", ""),
])
def test_csv_cells_that_would_be_formulas_are_escaped_and_numbers_stay_numbers(
        text: str, cell: str) -> None:
    # A negative amount, should one ever occur, must stay a number a spreadsheet sums.
    rows = [{"period": date(2026, 1, 5), "key": text, "label": text, "requests": -3,
             "cost_micros": -1500}]
    lines = list(csv.reader(io.StringIO(reports.export_csv(rows), newline="")))
    assert lines == [["period", "key", "label", "requests", "cost_micros", "cost_usd"],
                     ["2026-01-05", cell, cell, "-3", "-1500", "-0.001500"]]


def test_csv_of_no_rows_is_the_header_of_the_columns_asked_for() -> None:
    assert reports.export_csv([], ("period", "label")) == "period,label\r\n"


async def test_parquet_export_archives_the_raw_rows_of_a_date_range(ledger: Ledger,
                                                                    tmp_path: Path) -> None:
    path = tmp_path / "it's archived.parquet"
    start, end = date(2026, 2, 1), date(2026, 3, 1)
    count = reports.export_parquet(ledger.conn, start=start, end=end, path=path)
    want = {e["id"] for e in ledger.events if start <= day_of(e) < end}
    assert count == len(want)
    back = duckdb.connect().execute("SELECT id, cost_micros FROM read_parquet(?)",
                                    [str(path)]).fetchall()
    assert {r[0] for r in back} == want
    costs = {e["id"]: e["cost_micros"] for e in ledger.events}
    assert all(costs[i] == c for i, c in back)


async def test_unknown_grain_dimension_or_status_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="grain"):
        reports.spend(ledger.conn, start=START, end=END, grain="year")
    with pytest.raises(ValueError, match="dimension"):
        reports.spend(ledger.conn, start=START, end=END, dimension="1; DROP TABLE requests")
    with pytest.raises(ValueError, match="dimension"):
        reports.top_spenders(ledger.conn, start=START, end=END, dimension="key")
    with pytest.raises(ValueError, match="status"):
        reports.requests_page(ledger.conn, status="fine")
