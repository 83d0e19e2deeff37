"""OTLP telemetry in: /v1/metrics, /v1/logs, /v1/traces take protobuf and JSON under the
caller's credential, queue compact rows on Redis, and the rollup stores them in DuckDB under the
developer and team; bounded, and never in the way of inference."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ledger.telemetry import TelemetryRollup, purge, stream_key
from meterd.apps import DB_FILE
from tests.conftest import Gateway, RedisServer
from tests.sso import SSO

pytest_plugins = ("tests.sso_fixtures",)

PROTOBUF, JSON = "application/x-protobuf", "application/json"
NOW_NS = 1_780_000_000_000_000_000
CHAT = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100,
                     "messages": [{"role": "user", "content": "Hello"}]})


def _kv(**attrs: Any) -> list[KeyValue]:
    out = []
    for k, v in attrs.items():
        value = AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v)
        out.append(KeyValue(key=k.replace("__", "."), value=value))
    return out


def lines_added(n: int, session: str = "s-1") -> metrics_pb.ExportMetricsServiceRequest:
    req = metrics_pb.ExportMetricsServiceRequest()
    metric = req.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "claude_code.lines_of_code.count"
    metric.sum.aggregation_temporality = 1  # delta
    point = metric.sum.data_points.add(time_unix_nano=NOW_NS, as_int=n)
    point.attributes.extend(_kv(session__id=session, type="added"))
    return req


def api_request(cost_micros: int, request_id: str = "req_1") -> logs_pb.ExportLogsServiceRequest:
    req = logs_pb.ExportLogsServiceRequest()
    rec = req.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=NOW_NS)
    rec.body.string_value = "claude_code.api_request"
    rec.attributes.extend(_kv(event__name="api_request", session__id="s-1",
                              request_id=request_id, model="claude-sonnet-4-6",
                              cost_usd_micros=cost_micros, prompt="secret words"))
    return req


async def post(gw: Gateway, signal: str, body: bytes, key: str,
               content_type: str = PROTOBUF) -> tuple[int, bytes]:
    resp = await gw.client.post(f"/v1/{signal}", data=body,
                                headers={"x-api-key": key, "content-type": content_type})
    return resp.status, await resp.read()


def rollup(gw: Gateway, **kw: Any) -> TelemetryRollup:
    admin = gw.admin
    return TelemetryRollup(admin.redis, admin.keyspace, admin.catalog.conn, admin.db, **kw)


async def stored(gw: Gateway) -> list[dict[str, Any]]:
    def read(conn: Any) -> list[dict[str, Any]]:
        cur = conn.execute("SELECT developer_id, team_id, signal, name, value, session_id, "
                           "request_id, cost_micros, attrs FROM telemetry "
                           "ORDER BY stream_id, seq")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return list(await gw.admin.db(read, gw.admin.catalog.conn))


async def queued(gw: Gateway) -> int:
    return int(await gw.proxy.redis.xlen(stream_key(gw.proxy.keyspace)))


async def test_protobuf_and_json_exports_land_under_the_developer_and_team(
        gateway: Gateway) -> None:
    ada, bob = await gateway.developer("Ada"), await gateway.developer("Bob", team="data")
    status, answer = await post(gateway, "metrics", lines_added(42).SerializeToString(), ada)
    assert status == 200
    assert not metrics_pb.ExportMetricsServiceResponse.FromString(answer).HasField(
        "partial_success")
    body = json_format.MessageToJson(api_request(1234)).encode()
    status, answer = await post(gateway, "logs", body, bob, JSON)
    assert status == 200 and orjson.loads(answer) == {}
    span = trace_pb.ExportTraceServiceRequest()
    span.resource_spans.add().scope_spans.add().spans.add(
        name="claude_code.interaction", start_time_unix_nano=NOW_NS,
        end_time_unix_nano=NOW_NS + 250_000_000)
    assert (await post(gateway, "traces", span.SerializeToString(), ada))[0] == 200

    assert await rollup(gateway).run_once() == 3
    assert await queued(gateway) == 0
    devs = {d["name"]: d for d in await gateway.admin.db(gateway.admin.catalog.developers)}
    lines, cost, interaction = await stored(gateway)
    assert (lines["developer_id"], lines["team_id"]) == (devs["Ada"]["id"], devs["Ada"]["team_id"])
    assert (lines["signal"], lines["name"], lines["value"], lines["session_id"]) == (
        "metric", "claude_code.lines_of_code.count", 42.0, "s-1")
    assert orjson.loads(lines["attrs"]) == {"type": "added"}
    assert (cost["developer_id"], cost["team_id"]) == (devs["Bob"]["id"], devs["Bob"]["team_id"])
    assert (cost["name"], cost["request_id"], cost["cost_micros"]) == (
        "claude_code.api_request", "req_1", 1234)
    assert "prompt" not in orjson.loads(cost["attrs"])  # prompt text is never stored
    assert (interaction["signal"], interaction["value"]) == ("span", 250.0)


async def test_a_signed_in_developer_s_bearer_token_stamps_the_rows(sso: SSO) -> None:
    """In gateway mode Claude Code sends telemetry with its sign-in bearer token (the same
    as for inference); the rows carry the developer that sign-in provisioned."""
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    gw = sso.gateway
    await gw.proxy.refresh_policy()  # the new sign-in, without waiting for the next poll
    resp = await gw.client.post("/v1/logs", data=api_request(7).SerializeToString(), headers={
        "authorization": f"Bearer {answer['access_token']}", "content-type": PROTOBUF})
    assert resp.status == 200
    await rollup(gw).run_once()
    [dev] = await gw.admin.db(gw.admin.catalog.developers)
    [row] = await stored(gw)
    assert (row["developer_id"], row["team_id"], row["cost_micros"]) == (
        dev["id"], dev["team_id"], 7)


async def test_gzip_compressed_export_is_taken(gateway: Gateway) -> None:
    key = await gateway.developer()
    resp = await gateway.client.post(
        "/v1/metrics", data=gzip.compress(lines_added(3).SerializeToString()),
        headers={"x-api-key": key, "content-type": PROTOBUF, "content-encoding": "gzip"})
    assert resp.status == 200
    await rollup(gateway).run_once()
    assert [r["value"] for r in await stored(gateway)] == [3.0]


async def test_malformed_body_is_refused_and_inference_is_unaffected(gateway: Gateway) -> None:
    key = await gateway.developer()
    status, answer = await post(gateway, "metrics", b"\xff\x00 not protobuf", key)
    assert status == 400 and orjson.loads(answer)["error"]["type"] == "invalid_request_error"
    status, _ = await post(gateway, "logs", b"{not json", key, JSON)
    assert status == 400
    status, answer = await post(gateway, "logs", b"hello", key, "text/plain")
    assert status == 415 and orjson.loads(answer)["type"] == "error"
    assert await queued(gateway) == 0
    resp = await gateway.client.post("/v1/messages", data=CHAT, headers={"x-api-key": key})
    assert resp.status == 200


async def test_unauthenticated_export_is_refused(gateway: Gateway) -> None:
    resp = await gateway.client.post("/v1/metrics", data=b"",
                                     headers={"content-type": PROTOBUF})
    assert resp.status == 401
    assert (await post(gateway, "metrics", b"", "sk-nope"))[0] == 401


async def test_oversized_body_gets_413(start_gateway: Any) -> None:
    gw = await start_gateway(telemetry_max_bytes=200)
    key = await gw.developer()
    big = api_request(1, request_id="r" * 300).SerializeToString()
    status, answer = await post(gw, "logs", big, key)
    assert status == 413 and orjson.loads(answer)["error"]["type"] == "request_too_large"

    async def chunks() -> Any:  # no content-length: the cap holds while reading
        yield big
    resp = await gw.client.post("/v1/logs", data=chunks(),
                                headers={"x-api-key": key, "content-type": PROTOBUF})
    assert resp.status == 413
    bomb = gzip.compress(bytes(10_000_000))  # ~10 KB that inflates to 10 MB: cut at the cap
    resp = await gw.client.post("/v1/logs", data=bomb, headers={
        "x-api-key": key, "content-type": PROTOBUF, "content-encoding": "gzip"})
    assert resp.status == 413
    assert await queued(gw) == 0
    assert (await post(gw, "logs", api_request(1).SerializeToString(), key))[0] == 200


async def test_exports_over_the_rate_limit_are_dropped_with_partial_success(
        start_gateway: Any) -> None:
    gw = await start_gateway(telemetry_per_minute=2)
    body = lines_added(1).SerializeToString()
    for attempt in range(3):  # a minute boundary in between resets the window: try afresh
        key = await gw.developer(f"Ada {attempt}")
        answers = [await post(gw, "metrics", body, key) for _ in range(3)]
        if await queued(gw) == 2:
            break
        await gw.proxy.redis.delete(stream_key(gw.proxy.keyspace))
    assert [status for status, _ in answers] == [200, 200, 200]
    partial = metrics_pb.ExportMetricsServiceResponse.FromString(answers[2][1]).partial_success
    assert partial.rejected_data_points == 1 and "dropped" in partial.error_message
    assert gw.proxy.metrics.telemetry_dropped["rate_limited"] >= 1
    assert (await post(gw, "metrics", body, await gw.developer("Bob")))[0] == 200  # per dev
    assert await queued(gw) == 3


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_redis_down_answers_200_partial_success_and_inference_is_served(
        start_gateway: Any, own_redis: RedisServer) -> None:
    gw = await start_gateway(redis_url=own_redis.url, redis_outage_policy="fail_open")
    key = await gw.developer()
    own_redis.stop(save=True)
    try:
        status, answer = await post(gw, "logs", json_format.MessageToJson(
            api_request(5)).encode(), key, JSON)
        assert status == 200
        assert orjson.loads(answer)["partialSuccess"]["rejectedLogRecords"] == "1"
        assert gw.proxy.metrics.telemetry_dropped["redis_unavailable"] == 1
        resp = await gw.client.post("/v1/messages", data=CHAT, headers={"x-api-key": key})
        assert resp.status == 200
    finally:
        own_redis.start()


@pytest.mark.parametrize("step", ["inserted", "committed"])
async def test_rollup_crash_mid_way_loses_nothing_and_doubles_nothing(
        gateway: Gateway, step: str) -> None:
    key = await gateway.developer()
    for n in range(1, 6):
        assert (await post(gateway, "metrics", lines_added(n).SerializeToString(), key))[0] == 200

    def crash(at: str) -> None:
        if at == step:
            raise RuntimeError(f"killed at {at}")
    with pytest.raises(RuntimeError):
        await rollup(gateway, batch=2, fault=crash).run_once()
    assert await rollup(gateway, batch=2).run_once() == (5 if step == "inserted" else 3)
    assert await rollup(gateway).run_once() == 0
    assert sorted(r["value"] for r in await stored(gateway)) == [1, 2, 3, 4, 5]
    assert await queued(gateway) == 0


async def test_retention_purges_old_telemetry(gateway: Gateway) -> None:
    key = await gateway.developer()
    await post(gateway, "metrics", lines_added(1).SerializeToString(), key)
    await rollup(gateway).run_once()
    conn = gateway.admin.catalog.conn
    later = datetime.now(UTC) + timedelta(days=91)
    assert await gateway.admin.db(purge, conn, 91, datetime.now(UTC)) == 0
    assert await gateway.admin.db(purge, conn, 90, later) == 1
    assert await stored(gateway) == []


async def test_the_admin_rollup_moves_telemetry_on_its_schedule(start_gateway: Any) -> None:
    gw = await start_gateway(rollup_interval=0.05)
    key = await gw.developer()
    assert (await post(gw, "metrics", lines_added(7).SerializeToString(), key))[0] == 200
    for _ in range(200):
        if rows := await stored(gw):
            break
        await asyncio.sleep(0.05)
    assert [r["value"] for r in rows] == [7.0]
    assert await queued(gw) == 0


async def test_telemetry_taken_in_before_the_admin_stops_is_stored_at_its_shutdown(
        gateway: Gateway, tmp_path: Path) -> None:
    """The last rollup at shutdown moves telemetry too: with the embedded Redis, whatever is
    still in the stream when the process ends is gone."""
    key = await gateway.developer()
    assert (await post(gateway, "metrics", lines_added(5).SerializeToString(), key))[0] == 200
    await gateway.client.close()  # the admin's shutdown: no scheduled rollup ran (3600 s)
    with duckdb.connect(str(tmp_path / "data" / DB_FILE), read_only=True) as conn:
        assert conn.execute("SELECT value FROM telemetry").fetchall() == [(5.0,)]
