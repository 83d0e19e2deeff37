"""Real Claude Code (pinned) sends its OpenTelemetry to meterd, set up as the rollout page tells
a static-key machine to: the rows land under the developer, and the cost Claude Code reports
for each request (`api_request` `cost_usd_micros`) equals what meterd metered for it, and the
reconciliation by request id (ledger/bought.py) finds no drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from dashboard.rollout import HELPER_PATH, OTEL_HELPER, telemetry_settings
from ledger import bought
from ledger.telemetry import TelemetryRollup
from tests.claude_code import claude_p, need_claude
from tests.conftest import Gateway


def _rollout_settings(gw: Gateway, key: str, home: Path) -> None:
    """The rollout page's telemetry settings, its header helper reading the key from a file
    (as the key helper does on a developer's machine)."""
    key_helper, otel_helper = home / "meterd-key", home / "meterd-otel-headers"
    key_helper.write_text(f"#!/bin/sh\necho {key}\n")
    otel_helper.write_text(OTEL_HELPER.replace(HELPER_PATH, str(key_helper)))
    for script in (key_helper, otel_helper):
        script.chmod(0o700)
    settings = telemetry_settings(gw.url) | {"otelHeadersHelper": str(otel_helper)}
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").write_bytes(orjson.dumps(settings))


async def _claude(gw: Gateway, key: str, home: Path, protocol: str) -> tuple[int, str]:
    """`claude -p` with a static key, sending its telemetry to meterd: "rollout" as the
    rollout page sets it up (dashboard/rollout.py), else with the OTLP env variables."""
    need_claude()
    env = {"ANTHROPIC_BASE_URL": gw.url, "ANTHROPIC_API_KEY": key,
           "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           # Flushed well within the run (Claude Code also flushes when it exits).
           "OTEL_METRIC_EXPORT_INTERVAL": "500", "OTEL_LOGS_EXPORT_INTERVAL": "200"}
    home.mkdir(exist_ok=True)
    if protocol == "rollout":
        _rollout_settings(gw, key, home)
    else:
        env |= {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": gw.url,
                "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={key}"}
    run = await claude_p(home, env)
    return run.code, run.output



async def _stored(gw: Gateway) -> list[dict[str, Any]]:
    admin = gw.admin
    await TelemetryRollup(admin.redis, admin.keyspace, admin.catalog.conn, admin.db).run_once()

    def read(conn: Any) -> list[dict[str, Any]]:
        cur = conn.execute("SELECT developer_id, team_id, signal, name, session_id, "
                           "request_id, cost_micros, attrs FROM telemetry")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return list(await admin.db(read, admin.catalog.conn))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
@pytest.mark.parametrize("protocol", ["rollout", "http/json"])
async def test_claude_code_telemetry_lands_under_the_developer_with_meterd_s_cost(
        gateway: Gateway, tmp_path: Path, protocol: str) -> None:
    key = await gateway.developer("Ada")
    await _check(gateway, key, tmp_path, protocol)


async def _check(gateway: Gateway, key: str, tmp_path: Path, protocol: str) -> None:
    returncode, out = await _claude(gateway, key, tmp_path / "home", protocol)
    assert returncode == 0, out[-2000:]
    assert "Hello from the meterd mock upstream" in out
    [dev] = await gateway.admin.db(gateway.admin.catalog.developers)
    served = [e for e in await gateway.settled(1) if e["status"] == "200"]
    assert served

    rows = await _stored(gateway)
    assert rows and all((r["developer_id"], r["team_id"]) == (dev["id"], dev["team_id"])
                        for r in rows)
    names = {r["name"] for r in rows}
    assert {"claude_code.api_request", "claude_code.cost.usage",
            "claude_code.token.usage"} <= names, names
    requests = [r for r in rows if r["name"] == "claude_code.api_request"]
    assert len(requests) == len(served)
    # The session Claude Code names in its telemetry is the one meterd metered.
    assert {r["session_id"] for r in requests} == {e["session_id"] for e in served}
    # Claude Code's own price for each request is exactly what meterd charged for it.
    assert sorted(r["cost_micros"] for r in requests) == sorted(
        int(e["cost_micros"]) for e in served)
    assert all(r["cost_micros"] > 0 and r["request_id"].startswith("req_mock_")
               for r in requests)
    assert all(orjson.loads(r["attrs"]).get("model") == "claude-sonnet-4-6" for r in requests)
    # The reconciliation matches every request by the provider's id: no drift, no difference.
    assert {e["upstream_request_id"] for e in served} == {r["request_id"] for r in requests}
    await gateway.admin.rollup.run_once()
    today = datetime.now(UTC).date()
    check = await gateway.admin.db(bought.reconcile, gateway.admin.catalog.conn, start=today,
                                   end=today + timedelta(days=1))
    assert (check["matched"], check["drift_micros"], check["drift_percent"],
            check["differences"]) == (len(served), 0, 0.0, [])
