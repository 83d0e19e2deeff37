"""Operating the gateway: health, metrics, identity checks, settings, graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import orjson
import pytest
from aiohttp import web

import meterd.apps
from dashboard.config import DashboardConfig
from ledger.keyspace import KeySpace
from ledger.money import parse_usd
from ledger.redis_client import connect_redis
from ledger.rollup import lock_key
from ledger.spool import Spool
from meterd.apps import DB_FILE, create_proxy_app
from meterd.settings import SETTINGS, Settings, SettingsError
from proxy.state import STATE, ProxyState
from tests.conftest import MOCK_KEY, Gateway, RedisServer, free_port
from tests.test_rollup import make_events, send

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
README = Path(__file__).parent.parent / "README.md"


async def test_health_and_readiness(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).status == 200
    ready = await gateway.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


async def test_metrics_count_requests_tokens_cost_and_rejections(start_gateway) -> None:
    gateway = await start_gateway(metrics_token="mtk-ops-test-token")
    key = await gateway.developer()
    await (await gateway.client.post("/v1/messages", data=BODY,
                                     headers={"x-api-key": key})).read()
    await gateway.settled(1)
    await (await gateway.client.post("/v1/messages", data=BODY,
                                     headers={"x-api-key": "mtd_nope"})).read()
    text = await (await gateway.client.get(
        "/metrics", headers={"authorization": "Bearer mtk-ops-test-token"})).text()
    lines = set(text.splitlines())
    assert 'meterd_requests_total{status="200",stream="1"} 1.0' in lines
    assert 'meterd_tokens_total{category="input"} 1200.0' in lines
    assert "meterd_cost_micros_total 4500.0" in lines
    assert 'meterd_rejections_total{reason="authentication_error"} 1.0' in lines
    assert "meterd_spool_depth 0.0" in lines
    assert any(line.startswith("meterd_gateway_overhead_seconds_count 1.0") for line in lines)


async def test_me_reports_identity_and_remaining_budget(gateway: Gateway) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "team", "platform", "monthly",
                         parse_usd("100"))
    await (await gateway.client.post("/v1/messages", data=BODY,
                                     headers={"x-api-key": key})).read()
    await gateway.settled(1)
    doc = await (await gateway.client.get("/meterd/v1/me",
                                          headers={"authorization": f"Bearer {key}"})).json()
    assert doc["developer"]["name"] == "Ada" and doc["team"]["name"] == "platform"
    (budget,) = doc["budgets"]
    assert budget["cap"] == "team platform, monthly"
    assert budget["spent_micros"] == 4500
    assert budget["remaining_micros"] == 100_000_000 - 4500
    assert key not in orjson.dumps(doc).decode()


def test_settings_reject_secrets_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text('upstream_key = "sk-ant-oops"\n')
    with pytest.raises(SettingsError, match="upstream_key is a secret"):
        Settings.load(config, environ={})


def test_settings_layer_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text('proxy_port = 5000\nredis_outage_policy = "fail_closed"\n'
                      '[prices.my-model]\ninput = 1.25\noutput = 5\ncache_write_5m = 1.5\n'
                      'cache_write_1h = 2.5\ncache_read = 0.125\n')
    secret = tmp_path / "key"
    secret.write_text("sk-ant-from-file\n")
    s = Settings.load(config, environ={"MTD_PROXY_PORT": "5001",
                                       "MTD_UPSTREAM_KEY_FILE": str(secret)}, host="0.0.0.0")
    assert (s.proxy_port, s.redis_outage_policy, s.host) == (5001, "fail_closed", "0.0.0.0")
    assert s.upstream_key == "sk-ant-from-file"
    assert "sk-ant-from-file" not in repr(s)
    with pytest.raises(SettingsError, match="redis_outage_policy"):
        Settings.load(environ={"MTD_REDIS_OUTAGE_POLICY": "sometimes"})
    with pytest.raises(SettingsError, match="proxy_port"):
        Settings.load(environ={"MTD_PROXY_PORT": "many"})


def test_readme_documents_every_setting() -> None:
    readme = README.read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert not missing, f"README lacks settings: {missing}"


def test_every_setting_has_one_field_whose_default_the_readme_states() -> None:
    """Defaults are stated once, on the Settings fields; the table's rows and the README's
    default column follow them."""
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    rows = {cells[0].strip("` "): cells[2].strip() for line in README.read_text().splitlines()
            if line.startswith("| `") and len(cells := line.strip("|").split("|")) == 4}
    for s in SETTINGS:
        value = s.default
        if isinstance(value, dict) or (value == () and s.name in ("routes", "oidc_group_rules")):
            stated = "(none)"  # a TOML table
        elif value in ("", ()):
            stated = "(empty)"
        elif isinstance(value, bool):
            stated = str(value).lower()
        elif isinstance(value, tuple):
            stated = ", ".join(map(str, value))
        else:
            stated = str(value)
        assert rows.get(s.name) == stated, s.name


def test_the_dashboard_takes_its_settings_without_defaults_of_its_own(tmp_path: Path) -> None:
    """DashboardConfig restates no default: what it holds of a setting is the setting's."""
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(DashboardConfig))
    settings = Settings(data_dir=str(tmp_path))
    config = DashboardConfig.from_settings(settings)
    derived = ("data_dir", "prices", "providers", "routes")  # converted, not copied
    shared = [f.name for f in dataclasses.fields(DashboardConfig)
              if f.name in {s.name for s in SETTINGS} and f.name not in derived]
    assert "rollup_interval" in shared and "redis_outage_policy" in shared
    for name in shared:
        value = getattr(settings, name)
        assert getattr(config, name) == (tuple(value) if isinstance(value, list) else value), name


async def test_a_failing_shutdown_step_does_not_skip_the_later_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step of the proxy's shutdown (stopping its maintenance loop) raises: the
    pending settlements still drain, and the provider session, spool and Redis still close."""
    ran: list[str] = []

    def recorded(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(method):
            async def later(*args: Any) -> Any:
                ran.append(name)
                return await method(*args)
            return later

        def now(*args: Any) -> Any:
            ran.append(name)
            return method(*args)
        return now

    async def broken_maintain(self: ProxyState) -> None:
        await self.stopping.wait()
        raise RuntimeError("maintenance broke")

    def connect(url: str) -> Any:
        client = connect_redis(url)
        client.aclose = recorded("redis", client.aclose)
        return client

    monkeypatch.setattr(ProxyState, "maintain", broken_maintain)
    monkeypatch.setattr(ProxyState, "drain", recorded("drain", ProxyState.drain))
    monkeypatch.setattr(Spool, "close", recorded("spool", Spool.close))
    monkeypatch.setattr(meterd.apps, "connect_redis", connect)
    app = create_proxy_app(Settings(data_dir=str(tmp_path),
                                    redis_url=f"embedded://{tmp_path.name}"))
    runner = web.AppRunner(app)
    await runner.setup()
    session = app[STATE].session
    with pytest.raises(RuntimeError, match="maintenance broke"):
        await runner.cleanup()
    assert ran == ["drain", "spool", "redis"]
    assert session.closed


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
async def test_shutdown_lets_open_streams_finish_and_settles_them(
        tmp_path: Path, upstream, redis_url: str) -> None:
    """SIGTERM mid-stream: the stream completes, then the process settles and exits."""
    port = free_port()
    env = {**os.environ, "MTD_UPSTREAM_URL": upstream.url, "MTD_UPSTREAM_KEY": MOCK_KEY,
           "MTD_LOG_LEVEL": "info", "MTD_SHUTDOWN_GRACE": "10"}
    data = tmp_path / "data"
    # Create the developer with the CLI while no server runs (direct mode).
    def cli(*args: str) -> bytes:
        import subprocess
        return subprocess.run([sys.executable, "-m", "meterd.cli", *args, "--data-dir",
                               str(data)], env=env, check=True, capture_output=True).stdout
    cli("team", "create", "platform")
    cli("dev", "create", "Ada", "--email", "ada@example.com", "--team", "platform")
    key = next(w for w in cli("key", "issue", "ada@example.com").decode().split()
               if w.startswith("mtd_"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", "serve", "--port", str(port), "--data-dir",
        str(data), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the policy reaches the proxy side
        resp = await s.post(url + "/v1/messages", data=BODY, headers={
            "x-api-key": key, "x-mock-text-chunks": "20", "x-mock-event-delay-ms": "50"})
        assert resp.status == 200
        first = await resp.content.readany()
        proc.send_signal(signal.SIGTERM)
        body = first + await resp.read()
    assert body.rstrip().endswith(b'data: {"type":"message_stop"}')
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"status":200' in err and b'"output_tokens":60' in err  # settled before exit


async def test_a_killed_admins_rollup_passes_to_its_restart_within_seconds(
        tmp_path: Path, own_redis: RedisServer) -> None:
    """SIGKILL leaves the rollup lock behind. A restarted admin takes it over and rolls up
    what was settled meanwhile within seconds (the lock lapses, its heartbeat takes it); a
    SIGTERM'd admin rolls up what is left and releases the lock at once, also when the signal
    comes during its first rollup, before it serves."""
    env = {**os.environ, "MTD_REDIS_URL": own_redis.url, "MTD_DATA_DIR": str(tmp_path / "data"),
           "MTD_ADMIN_PORT": str(free_port()), "MTD_LOG_LEVEL": "warning"}
    lock = lock_key(KeySpace())

    async def admin() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterd.cli", "admin", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)

    async def until_locked(proc: asyncio.subprocess.Process) -> bytes:
        for _ in range(600):
            if (token := await redis.get(lock)) or proc.returncode is not None:
                return token or b""
            await asyncio.sleep(0.05)
        return b""

    async def stop(proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        # released at shutdown, not left to lapse
        assert await redis.get(lock) is None, err.decode()[-2000:]

    def ledger_rows() -> int:
        with duckdb.connect(str(tmp_path / "data" / DB_FILE), read_only=True) as conn:
            row = conn.execute("SELECT count(*) FROM requests").fetchone()
        return row[0] if row else 0

    redis = connect_redis(own_redis.url)
    try:
        old = await admin()
        if not (old_token := await until_locked(old)):
            old.kill()
            _, err = await old.communicate()
            pytest.fail("the first admin never took the rollup lock: " + err.decode()[-2000:])
        old.kill()  # no cleanup: the lock stays in Redis
        await old.wait()
        killed = time.monotonic()
        events = make_events(50, seed=3)
        await send(redis, events)  # settled after the death: only the new admin can roll them up

        new = await admin()
        took = None
        while time.monotonic() - killed < 40:
            if await redis.xlen(KeySpace().events) == 0:
                took = time.monotonic() - killed
                break
            await asyncio.sleep(0.1)
        assert took is not None and took < 10, f"took over after {took} s"
        assert await redis.get(lock) not in (None, old_token)
        await stop(new)
        assert ledger_rows() == len(events)

        # Enough waiting that the first rollup is still running when the lock shows.
        waiting = make_events(30_000, seed=4, prefix="mreq_late_")
        await send(redis, waiting)
        late = await admin()
        assert await until_locked(late)
        await stop(late)
        assert ledger_rows() == len(events) + len(waiting)
        assert await redis.xlen(KeySpace().events) == 0
    finally:
        await redis.aclose()
