"""Real Claude Code signed in to `meterd serve` through `/login` (gateway mode) sends its
OpenTelemetry to meterd with its sign-in: the rows land under the signed-in developer, and the
cost it reports for the request (`api_request` `cost_usd_micros`) is what meterd metered.

What the client needs (read from the 2.1.332 binary): in a pinned gateway session the exporter
goes to `<gateway url>/v1/{metrics,logs}` with `Authorization: Bearer <jwt>` by itself, with no
OTLP endpoint or headers, but telemetry is only started when `CLAUDE_CODE_ENABLE_TELEMETRY` is
on, an exporter is `otlp` (`OTEL_METRICS_EXPORTER` / `OTEL_LOGS_EXPORTER`) and
`OTEL_EXPORTER_OTLP_PROTOCOL` is set (without it: "No protocol is set for the metrics OTLP
exporter, and its endpoint ... is unset"). dashboard/rollout.py's SIGNED_IN_TELEMETRY, which
the test serves as the team's managed settings (these variables need no approval)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from dashboard.rollout import SIGNED_IN_TELEMETRY
from tests.claude_code import claude_p
from tests.conftest import Upstream
from tests.fakes.idp import FakeIdP
from tests.sso import claims
from tests.test_managed_settings_claude_code import _serve, _sign_in_as_login_does

pytest_plugins = ("tests.sso_fixtures",)



async def _claude(home: Path, cert: Path) -> tuple[int, str, str]:
    run = await claude_p(home, {"NODE_EXTRA_CA_CERTS": str(cert),
                                "DISABLE_ERROR_REPORTING": "1"}, debug=True)
    return run.code, run.output, run.debug



def _read(db: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as conn:
        cur = conn.execute(sql)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
async def test_signed_in_claude_code_sends_telemetry_under_the_signed_in_developer(
        idp: FakeIdP, upstream: Upstream, tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "home"
    async with _serve(tmp_path, upstream, idp, MTD_ROLLUP_INTERVAL="0.2") as served:
        # Managed settings turn telemetry on (as the rollout page's login file does); no
        # endpoint, header or credential: the client takes them from its sign-in.
        await served.set_policy({"env": SIGNED_IN_TELEMETRY})
        answer = await served.sign_in(idp)
        _sign_in_as_login_does(home / ".claude", served, answer,
                               claims(answer["access_token"])["exp"] * 1000)
        returncode, out, debug = await _claude(home, served.cert)
        # The exports arrived before the client exited; let the admin's rollup move them.
        await asyncio.sleep(1.5)
    assert returncode == 0, out[-2000:] + debug[-3000:]
    assert "Hello from the meterd mock upstream" in out

    db = tmp_path / "data" / "meterd.duckdb"
    [ada] = _read(db, "SELECT id, team_id FROM developers WHERE email = 'ada@example.com'")
    served_rows = _read(db, "SELECT cost_micros, session_id FROM requests WHERE status = 200")
    assert served_rows
    rows = _read(db, "SELECT developer_id, team_id, name, session_id, request_id, cost_micros, "
                     "attrs FROM telemetry")
    assert rows, [ln for ln in debug.splitlines() if "telemetry" in ln.lower()][-20:]
    assert all((r["developer_id"], r["team_id"]) == (ada["id"], ada["team_id"]) for r in rows)
    names = {r["name"] for r in rows}
    assert {"claude_code.api_request", "claude_code.cost.usage",
            "claude_code.token.usage"} <= names, names
    requests = [r for r in rows if r["name"] == "claude_code.api_request"]
    assert len(requests) == len(served_rows)
    assert {r["session_id"] for r in requests} == {r["session_id"] for r in served_rows}
    # Claude Code's own price for the request is exactly what meterd charged for it.
    assert sorted(r["cost_micros"] for r in requests) == sorted(
        r["cost_micros"] for r in served_rows)
    assert all(r["cost_micros"] > 0 and r["request_id"].startswith("req_mock_")
               for r in requests)
    assert all(orjson.loads(r["attrs"]).get("model") == "claude-sonnet-4-6" for r in requests)
