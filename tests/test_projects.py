"""Projects (issue 16, item 5): the `billing_group_tag` claim in the bearer tokens meterd
issues, the project a request's tags name on its settlement and in the ledger, `tags` and their
beta kept from the upstream for signed-in developers, and reports by project."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ledger import reports
from ledger.catalog import connect
from ledger.rollup import Rollup
from tests.conftest import Gateway, Upstream
from tests.fakes.gateways import anthropic_provider
from tests.sso import SSO, claims
from tests.test_rollup import KS, fresh_db, inline_db, make_events, send

pytest_plugins = ("tests.sso_fixtures",)

TAGS_BETA = "request-tags-2026-08-21"
OTHER_BETA = "interleaved-thinking-2025-05-14"
TAGGED = {"model": "claude-sonnet-4-6", "max_tokens": 64,
          "messages": [{"role": "user", "content": "Hi"}],
          "tags": {"project": "apollo", "ticket": "OPS-7"}}


async def post(gw: Gateway, credential: dict[str, str], body: bytes,
               beta: str = f"{OTHER_BETA},{TAGS_BETA}") -> None:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/messages", data=body,
            headers={**credential, "content-type": "application/json",
                     "anthropic-beta": beta}) as r:
        assert r.status == 200, await r.text()
        await r.read()


def last_upstream_request(upstream: Upstream) -> tuple[bytes, dict[str, str]]:
    (found, *_) = [r for r in reversed(upstream.recorded) if r["path_qs"] == "/v1/messages"]
    return found["body"], {k.lower(): v for k, v in found["headers"]}


async def project_in_ledger(gw: Gateway) -> list[str]:
    await gw.proxy.drain()
    rollup = gw.admin.rollup
    assert rollup is not None
    await rollup.run_once()
    rows = await gw.admin.db(lambda: gw.admin.catalog.conn.execute(
        "SELECT project FROM requests ORDER BY ts").fetchall())
    return [r[0] for r in rows]


# --- the claim ------------------------------------------------------------------------------


async def test_a_signed_in_developers_token_carries_the_billing_group_tag(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    assert claims(answer["access_token"])["billing_group_tag"] == "project"
    async with aiohttp.ClientSession() as s:
        status, fresh = await sso.refresh(s, answer["refresh_token"])
    assert status == 200
    assert claims(fresh["access_token"])["billing_group_tag"] == "project"


async def test_an_empty_billing_group_tag_setting_issues_no_claim(start_sso: Any) -> None:
    sso = await start_sso(billing_group_tag="")
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    assert "billing_group_tag" not in claims(answer["access_token"])


# --- the request ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_signed_in_request_is_billed_to_its_project_and_the_upstream_never_sees_tags(
        sso: SSO, upstream: Upstream, stream: bool) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    gw = sso.gateway
    await gw.proxy.refresh_policy()
    sent = {**TAGGED, "stream": stream}
    await post(gw, {"Authorization": f"Bearer {answer['access_token']}"}, orjson.dumps(sent))
    body, headers = last_upstream_request(upstream)
    forwarded = orjson.loads(body)
    assert "tags" not in forwarded
    assert forwarded == {k: v for k, v in sent.items() if k != "tags"}
    assert headers["anthropic-beta"] == OTHER_BETA
    (event,) = await gw.settled(1)
    assert event["project"] == "apollo"
    assert await project_in_ledger(gw) == ["apollo"]


async def test_only_the_tags_beta_goes_and_an_untagged_body_goes_byte_for_byte(
        sso: SSO, upstream: Upstream) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    gw = sso.gateway
    await gw.proxy.refresh_policy()
    sent = orjson.dumps({k: v for k, v in TAGGED.items() if k != "tags"})
    await post(gw, {"Authorization": f"Bearer {answer['access_token']}"}, sent, beta=TAGS_BETA)
    body, headers = last_upstream_request(upstream)
    assert body == sent and "anthropic-beta" not in headers
    (event,) = await gw.settled(1)
    assert event["project"] == ""


async def test_through_a_configured_anthropic_provider_the_tags_stay_here_too(
        start_sso: Any, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    sso = await start_sso(providers={"anthropic": anthropic_provider(upstream, monkeypatch)})
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    gw = sso.gateway
    await gw.proxy.refresh_policy()
    await post(gw, {"Authorization": f"Bearer {answer['access_token']}"}, orjson.dumps(TAGGED))
    body, headers = last_upstream_request(upstream)
    assert "tags" not in orjson.loads(body) and headers["anthropic-beta"] == OTHER_BETA
    (event,) = await gw.settled(1)
    assert event["project"] == "apollo" and event["provider"] == "anthropic"


async def test_a_static_key_clients_tags_name_its_project_and_go_on_as_sent(
        start_gateway: Any, upstream: Upstream) -> None:
    gw = await start_gateway()
    key = await gw.developer()
    sent = orjson.dumps({**TAGGED, "tags": {"project": "zephyr"}})
    await post(gw, {"x-api-key": key}, sent)
    body, headers = last_upstream_request(upstream)
    assert body == sent  # its own choice, which the Anthropic API accepts with the beta
    assert headers["anthropic-beta"] == f"{OTHER_BETA},{TAGS_BETA}"
    (event,) = await gw.settled(1)
    assert event["project"] == "zephyr"


async def test_the_configured_tag_names_the_project_and_long_names_are_cut(
        start_gateway: Any) -> None:
    gw = await start_gateway(billing_group_tag="cost-center")
    key = await gw.developer()
    long_name = "é" * 300
    for tags in ({"project": "apollo", "cost-center": "cc-7"}, {"project": "apollo"},
                 {"cost-center": long_name}, {"cost-center": 7}, ["cost-center"]):
        await post(gw, {"x-api-key": key}, orjson.dumps({**TAGGED, "tags": tags}))
    events = await gw.settled(5)
    assert [e["project"] for e in events] == ["cc-7", "", "é" * 256, "", ""]


# --- the ledger -----------------------------------------------------------------------------


async def test_a_ledger_from_before_projects_gains_the_column_and_its_usage_by_project(
        redis: Any, tmp_path: Path) -> None:
    """A DuckDB file of meterd before projects (no `project` column, no usage_projects) gets
    both on open: its requests named no project, so they are all '' rows, counted once."""
    path = tmp_path / "old.duckdb"
    conn = connect(path)
    await send(redis, make_events(60, seed=4, start=datetime(2026, 2, 1, tzinfo=UTC)))
    rollup = Rollup(redis, KS, conn, inline_db)
    assert await rollup.run_once() == 60
    await rollup.close()
    conn.execute("ALTER TABLE requests DROP COLUMN project")
    conn.execute("DROP TABLE usage_projects")
    conn.close()

    for _ in range(2):  # every open runs the schema: the second adds nothing
        conn = connect(path)
        assert conn.execute("SELECT DISTINCT project FROM requests").fetchall() == [("",)]
        by_project = reports.spend(conn, start=date(2026, 2, 1), end=date(2026, 3, 1),
                                   grain="month", dimension="project")
        totals = reports.totals(conn, start=date(2026, 2, 1), end=date(2026, 3, 1))
        assert [(r["label"], r["requests"], r["cost_micros"]) for r in by_project] == [
            (reports.NO_PROJECT, 60, totals["cost_micros"])]
        conn.close()

    conn = connect(path)
    tagged = make_events(3, seed=5, start=datetime(2026, 2, 3, tzinfo=UTC), days=1)
    for e in tagged:
        e.update(project="apollo", cost_micros=1_000)
    await send(redis, tagged)
    rollup = Rollup(redis, KS, conn, inline_db)
    assert await rollup.run_once() == 3
    await rollup.close()
    rows = reports.spend(conn, start=date(2026, 2, 1), end=date(2026, 3, 1), grain="month",
                         dimension="project")
    assert {r["label"]: r["requests"] for r in rows} == {reports.NO_PROJECT: 60, "apollo": 3}
    assert rows[-1]["cost_micros"] == 3_000  # 3 × 1_000 µ$, the cheapest row
    conn.close()


async def test_report_by_project_sums_each_projects_requests_to_the_micro_dollar(
        redis: Any) -> None:
    day = datetime(2026, 4, 7, 9, tzinfo=UTC)
    events = make_events(5, seed=3, start=day, days=1)
    costs = (1_250_000, 340_000, 75_000, 9, 500_001)
    projects = ("apollo", "apollo", "=SUM(A1)", "", "zephyr")
    for e, cost, project in zip(events, costs, projects, strict=True):
        e.update(cost_micros=cost, project=project)
    await send(redis, events)
    conn = fresh_db()
    rollup = Rollup(redis, KS, conn, inline_db)
    assert await rollup.run_once() == 5
    await rollup.close()
    rows = reports.spend(conn, start=date(2026, 4, 1), end=date(2026, 5, 1), grain="month",
                         dimension="project")
    assert [(r["key"], r["label"], r["requests"], r["cost_micros"]) for r in rows] == [
        ("apollo", "apollo", 2, 1_590_000),  # 1_250_000 + 340_000
        ("zephyr", "zephyr", 1, 500_001),
        ("=SUM(A1)", "=SUM(A1)", 1, 75_000),
        ("", reports.NO_PROJECT, 1, 9),
    ]
    assert sum(r["cost_micros"] for r in rows) == sum(costs) == 2_165_010
    top = reports.top_spenders(conn, start=date(2026, 4, 1), end=date(2026, 5, 1),
                               dimension="project", limit=1)
    assert [(r["key"], r["cost_micros"]) for r in top] == [("apollo", 1_590_000)]
    parsed = list(csv.DictReader(io.StringIO(reports.export_csv(rows), newline="")))
    assert [(r["key"], r["label"], r["cost_micros"], r["cost_usd"]) for r in parsed] == [
        ("apollo", "apollo", "1590000", "1.590000"),
        ("zephyr", "zephyr", "500001", "0.500001"),
        ("'=SUM(A1)", "'=SUM(A1)", "75000", "0.075000"),  # escaped, not a formula
        ("", reports.NO_PROJECT, "9", "0.000009"),
    ]
