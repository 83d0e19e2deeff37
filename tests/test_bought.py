"""What the spend bought (ledger/bought.py): metered cost next to Claude Code's work, and the
reconciliation of Claude Code's cost against meterd's by request id, with hand-computed µ$."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import orjson
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb

from ledger import bought
from ledger.rollup import Rollup
from ledger.settlement import Settlement
from ledger.telemetry import TelemetryRollup
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import PASSWORDS, Dashboard
from tests.test_dashboard_browser import _sign_in, chromium  # noqa: F401
from tests.test_rollup import KS, fresh_db, inline_db, send
from tests.test_telemetry import CHAT, _kv, post
from tests.test_telemetry import api_request as api_request_export

AT = datetime(2026, 3, 1, 10, tzinfo=UTC)
START, END = date(2026, 3, 1), date(2026, 3, 2)


def request(rid: str, upstream: str, cost: int, status: int = 200,
            dev: str = "dev_a") -> dict[str, Any]:
    return Settlement(id=rid, ts_ms=int(AT.timestamp() * 1000), developer_id=dev,
                      team_id="team_x", status=status, cost_micros=cost, session_id="s1",
                      upstream_request_id=upstream)._asdict()


def telemetry(conn: duckdb.DuckDBPyConnection, *rows: tuple[Any, ...]) -> None:
    """rows: (developer, signal, name, value, cumulative, request id, cost µ$, attrs)."""
    for seq, (dev, signal, name, value, cumulative, rid, cost, attrs) in enumerate(rows):
        conn.execute("INSERT INTO telemetry VALUES ('1-0', ?, ?, ?, ?, 'team_x', ?, ?, ?, ?, "
                     "'s1', ?, ?, ?)", [seq, AT.replace(tzinfo=None), AT.replace(tzinfo=None),
                                        dev, signal, name, value, cumulative, rid, cost,
                                        orjson.dumps(attrs).decode()])


def metric(name: str, value: float, dev: str = "dev_a", cumulative: bool = False,
           **attrs: str) -> tuple[Any, ...]:
    return (dev, "metric", f"claude_code.{name}", value, cumulative, "", None, attrs)


def api_request(rid: str, cost: int) -> tuple[Any, ...]:
    return ("dev_a", "log", "claude_code.api_request", None, False, rid, cost,
            {"model": "claude-sonnet-4-6"})


@pytest.fixture
async def ledger(redis: Any) -> duckdb.DuckDBPyConnection:
    """meterd metered req_1 (1000 µ$), req_2 (2500), req_4 (700) and a refused req_5;
    Claude Code reported req_1 (1000), req_2 (2000) and req_3 (300)."""
    conn = fresh_db()
    await send(redis, [request("m1", "req_1", 1000), request("m2", "req_2", 2500),
                       request("m4", "req_4", 700), request("m5", "req_5", 0, status=529),
                       request("m6", "", 400)])  # no request id: an older meterd's row
    await Rollup(redis, KS, conn, inline_db).run_once()
    telemetry(conn, api_request("req_1", 1000), api_request("req_2", 2000),
              api_request("req_3", 300), api_request("req_3", 300),  # exported twice
              metric("lines_of_code.count", 120, type="added"),
              metric("lines_of_code.count", 30, type="removed"),
              metric("pull_request.count", 2), metric("pull_request.count", 1),
              # a cumulative series re-sends its running total: 2, not 1 + 2
              metric("commit.count", 1, cumulative=True), metric("commit.count", 2,
                                                                 cumulative=True),
              metric("code_edit_tool.decision", 2, decision="accept", tool="Edit"),
              metric("code_edit_tool.decision", 3, decision="accept", tool="Write"),
              metric("code_edit_tool.decision", 1, decision="reject", tool="Edit"),
              metric("active_time.total", 90.0, type="cli"),
              metric("lines_of_code.count", 7, dev="dev_b", type="added"))
    return conn


def test_cost_per_pull_request_and_per_accepted_edit(ledger: duckdb.DuckDBPyConnection
                                                    ) -> None:
    a, b = bought.outcomes(ledger, start=START, end=END, dimension="developer")
    # dev_a: 1000 + 2500 + 700 + 0 + 400 = 4600 µ$ over 5 requests
    assert {k: a[k] for k in bought.OUTCOME_COLUMNS if k != "label"} == {
        "key": "dev_a", "requests": 5, "cost_micros": 4600, "lines_added": 120,
        "lines_removed": 30, "commits": 2, "pull_requests": 3, "edits_accepted": 5,
        "edits_rejected": 1, "active_seconds": 90,
        "cost_per_pr_micros": 1533,  # 4600 / 3 = 1533.33, rounded down
        "cost_per_accepted_edit_micros": 920}  # 4600 / 5
    # Telemetry without metered spend: cost 0, and no PRs, so no cost per PR.
    assert (b["key"], b["cost_micros"], b["lines_added"]) == ("dev_b", 0, 7)
    assert b["cost_per_pr_micros"] is b["cost_per_accepted_edit_micros"] is None
    [team] = bought.outcomes(ledger, start=START, end=END, dimension="team")
    assert (team["key"], team["cost_micros"], team["pull_requests"]) == ("team_x", 4600, 3)
    [session] = bought.outcomes(ledger, start=START, end=END, dimension="session")
    assert (session["key"], session["cost_per_pr_micros"]) == ("s1", 1533)
    # Outside the range: nothing.
    assert bought.outcomes(ledger, start=END, end=date(2026, 3, 3)) == []


def test_reconciliation_by_request_id(ledger: duckdb.DuckDBPyConnection) -> None:
    found = bought.reconcile(ledger, start=START, end=END)
    # Claude Code 1000 + 2000 + 300 = 3300; meterd 1000 + 2500 + 700 = 4200 (req_5 was
    # refused, m6 has no request id): drift -900 µ$, -900 / 4200 = -21.43 %.
    assert {k: v for k, v in found.items() if k != "differences"} == {
        "claude_code_micros": 3300, "metered_micros": 4200, "drift_micros": -900,
        "drift_percent": -21.43, "matched": 2, "differing": 3}
    assert [(d["request_id"], d["claude_code_micros"], d["metered_micros"],
             d["difference_micros"]) for d in found["differences"]] == [
        ("req_4", None, 700, -700),   # only in meterd
        ("req_2", 2000, 2500, -500),  # differs by a known amount
        ("req_3", 300, None, 300)]    # only in Claude Code's telemetry
    assert found["differences"][0]["developer_id"] == "dev_a"
    empty = bought.reconcile(ledger, start=START, end=END, developer_id="dev_b")
    assert (empty["drift_micros"], empty["drift_percent"], empty["differences"]) == (
        0, None, [])


@pytest.mark.timeout(120)
async def test_finance_sees_cost_per_pr_and_the_drift_in_chromium(
        dashboard: Dashboard, chromium: Any) -> None:  # noqa: F811
    """A request through the proxy (meterd records the provider's request id), Claude Code's
    telemetry for it at 123 µ$ more plus one request meterd never saw, and 2 pull requests:
    the page shows cost per PR and the drift."""
    gw = dashboard.gateway
    key = await gw.developer("Ada")
    resp = await gw.client.post("/v1/messages", data=CHAT, headers={"x-api-key": key})
    assert resp.status == 200
    upstream_id = resp.headers["request-id"]
    [event] = await gw.settled(1)
    assert event["upstream_request_id"] == upstream_id
    metered = int(event["cost_micros"])
    assert metered > 0
    await gw.admin.rollup.run_once()
    for rid, cost in ((upstream_id, metered + 123), ("req_elsewhere", 40)):
        export = api_request_export(cost, rid)
        export.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = \
            int(datetime.now(UTC).timestamp() * 1e9)
        assert (await post(gw, "logs", export.SerializeToString(), key))[0] == 200
    prs = metrics_pb.ExportMetricsServiceRequest()
    metric = prs.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "claude_code.pull_request.count"
    metric.sum.aggregation_temporality = 1  # delta
    point = metric.sum.data_points.add(time_unix_nano=int(datetime.now(UTC).timestamp() * 1e9),
                                       as_int=2)
    point.attributes.extend(_kv(session__id="s-1"))
    assert (await post(gw, "metrics", prs.SerializeToString(), key))[0] == 200
    admin = gw.admin
    await TelemetryRollup(admin.redis, admin.keyspace, admin.catalog.conn, admin.db).run_once()

    await dashboard.account("fred", "finance")
    page = await (await chromium.new_context()).new_page()
    await _sign_in(page, gw.url, "fred", PASSWORDS["finance"])
    await page.click("nav >> text=What it bought")
    await page.wait_for_selector("h1:has-text('What the spend bought')")
    [dev] = await admin.db(admin.catalog.developers)
    row = page.locator(f"#bought tr[data-key='{dev['id']}']")
    cells = [await c.get_attribute("data-sort") for c in await row.locator("td.num").all()]
    assert cells[1] == str(metered) and await row.locator("td").nth(6).inner_text() == "2"
    assert cells[-2] == str(metered // 2)  # cost per PR
    assert cells[-1] == "-1"  # no accepted edits: no cost per edit
    # Claude Code: metered + 123 + 40; meterd: metered. Drift 163 µ$.
    assert await page.get_attribute("#drift", "data-micros") == "163"
    assert await page.inner_text("#drift-percent") == f"{round(16300 / metered, 2)} %"
    differing = [await r.get_attribute("data-request")
                 for r in await page.locator("#differences tbody tr").all()]
    assert differing == [upstream_id, "req_elsewhere"]



async def test_admin_api_answers_json_and_an_escaped_csv(dashboard: Dashboard) -> None:
    """finance's read-only key: the reconciliation as JSON, the per-session view as CSV with
    a session id that would be a spreadsheet formula escaped."""
    gw = dashboard.gateway
    key = await gw.developer("Ada")
    resp = await gw.client.post("/v1/messages", data=CHAT, headers={
        "x-api-key": key, "x-claude-code-session-id": "=HYPERLINK(\"x\")"})
    assert resp.status == 200
    [event] = await gw.settled(1)
    await dashboard.roll_up()
    headers = {"x-api-key": await dashboard.admin_key("ro")}
    async with dashboard.client.get("/admin/api/v1/bought/reconciliation",
                                    headers=headers) as r:
        check = await r.json()
    # Claude Code sent no telemetry: the request is meterd's alone, drift minus its cost.
    cost = int(event["cost_micros"])
    assert (check["metered_micros"], check["drift_micros"], check["drift_percent"]) == (
        cost, -cost, -100.0)
    assert [(d["request_id"], d["claude_code_micros"]) for d in check["differences"]] == [
        (resp.headers["request-id"], None)]
    async with dashboard.client.get("/admin/api/v1/bought?dimension=session&format=csv",
                                    headers=headers) as r:
        assert r.content_type == "text/csv"
        header, row = csv.reader(io.StringIO(await r.text()))
    assert header == [*bought.OUTCOME_COLUMNS, "cost_usd"]
    assert row[:4] == ["'=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")", "1", str(cost)]
    async with dashboard.client.get("/admin/api/v1/bought?dimension=nope",
                                    headers=headers) as r:
        assert r.status == 400
