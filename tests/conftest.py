"""Shared fixtures: Redis (a test-owned real server and the embedded backend), the mock
upstream, and a gateway built by the real app factory.

A test that needs something this machine lacks (redis-server, Chromium, Claude Code) is skipped
with the reason printed; under CI (CI=true) it fails instead, naming what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import settings as hypothesis_settings

from dashboard.state import ADMIN, AdminState
from ledger.redis_client import connect_redis
from ledger.settlement import unpack_entry
from meterd.apps import ADMIN_APP, create_root_app
from meterd.mock_upstream import RECORDED, MockOptions, create_mock_app
from meterd.ports import free_port
from meterd.settings import Settings
from proxy.state import STATE, ProxyState

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MOCK_KEY = "sk-ant-upstream-test"

# No per-example deadline for any Hypothesis test: on a loaded machine an example that runs
# the gateway, or just prices a request, passes 200 ms for reasons that are not its own.
hypothesis_settings.register_profile("meterd", deadline=None)
hypothesis_settings.load_profile("meterd")


def need(condition: bool, what: str) -> None:
    """Skip (or, in CI, fail) a test whose prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {what}", pytrace=False)
    pytest.skip(what)


class RedisServer:
    """A redis-server owned by the test session, on its own port, so runs never collide.
    Tests that inject outages stop and restart it."""

    def __init__(self, *args: str) -> None:
        self.args = args  # more redis-server options, e.g. --requirepass
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="meterd-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up, maybe locked
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, save: bool = False) -> None:
        """Stop the server; with `save`, write its data first so a restart brings it back."""
        if self.proc is None:
            return
        if save:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"SHUTDOWN SAVE\r\n")
                s.recv(64)
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    if shutil.which("redis-server") is None:
        yield None
        return
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(params=["real", "embedded"])
def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer | None) -> str:
    """Every Redis-touching test runs on a real server and on the embedded backend."""
    if request.param == "embedded":
        return f"embedded://{uuid.uuid4().hex}"
    need(redis_server is not None, "redis-server is not installed (apt-get install redis-server)")
    assert redis_server is not None
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = connect_redis(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@dataclass
class Upstream:
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def recorded(self) -> Any:
        return self.server.app[RECORDED]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = TestServer(create_mock_app(MockOptions(api_key=MOCK_KEY)))
    await server.start_server()
    yield Upstream(server)
    await server.close()


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        # Rollups run when a test asks (gateway.admin.rollup.run_once()), not on a timer, so a
        # test can read the usage events in the stream before they are rolled up.
        base = {"data_dir": str(tmp_path / "data"), "redis_url": redis_url,
                "upstream_key": MOCK_KEY, "policy_refresh": 0.05, "log_level": "warning",
                "rollup_interval": 3600.0}
        base.update(changes)
        return Settings(**base).replace()
    return make


@dataclass
class Gateway:
    """A running gateway (proxy + admin, as `meterd serve`) and handles on its insides."""

    client: TestClient[Any, Any]
    app: web.Application
    upstream: Upstream

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def admin(self) -> AdminState:
        return self.app[ADMIN_APP][ADMIN]

    @property
    def proxy(self) -> ProxyState:
        return self.app[STATE]

    async def change(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a catalog change as the admin API does, and wait until the proxy has it."""
        result = await self.admin.db(fn, *args, **kwargs)
        await self.admin.publish()
        await self.proxy.refresh_policy()
        return result

    async def developer(self, name: str = "Ada", team: str = "platform") -> str:
        """Create (team and) developer and return a fresh gateway key."""
        catalog = self.admin.catalog
        if not any(t["name"] == team for t in await self.admin.db(catalog.teams)):
            await self.change(catalog.create_team, team)
        email = f"{name.lower().replace(' ', '.')}@example.com"
        await self.change(catalog.create_developer, name, email, team)
        key = await self.change(catalog.issue_key, email)
        return str(key.secret)

    async def events(self) -> list[dict[str, str]]:
        """Usage events in the Redis stream, decoded."""
        redis = self.proxy.redis
        entries = await redis.xrange(self.proxy.keyspace.events)
        return [unpack_entry(fields) for _, fields in entries]

    async def settled(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        """Wait until `count` events were settled (settlement runs after the response)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.proxy.drain()
            events = await self.events()
            if len(events) >= count or asyncio.get_running_loop().time() > deadline:
                return events
            await asyncio.sleep(0.02)


@pytest.fixture
def start_gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    upstream: Upstream, make_settings: Callable[..., Settings],
) -> Callable[..., Awaitable[Gateway]]:
    async def start(**changes: Any) -> Gateway:
        settings = make_settings(**{"upstream_url": upstream.url, **changes})
        fresh = connect_redis(settings.redis_url)
        await fresh.flushdb()
        await fresh.aclose()
        app = create_root_app(settings)
        client = await aiohttp_client(app)
        if STATE in app:
            # On a fresh Redis the proxy starts before the admin's first publish and reads it
            # within policy_refresh; until then it refuses every credential (retryably).
            await app[STATE].refresh_policy()
        return Gateway(client, app, upstream)
    return start


@contextlib.asynccontextmanager
async def proxy_process(gateway: Gateway, data_dir: Path,
                        **env: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`meterd proxy` in its own process, on the same Redis as the test's gateway, with more
    `MTD_*` settings in `env`: its URL once it answers, and the process."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", "proxy", "--port", str(port),
        env={**os.environ, "MTD_REDIS_URL": _redis_url(gateway), "MTD_DATA_DIR": str(data_dir),
             "MTD_LOG_LEVEL": "warning", **env})
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.head(url + "/"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have SIGKILLed it
            proc.terminate()
        await proc.wait()


@pytest.fixture
async def second_proxy(gateway: Gateway, tmp_path: Path) -> AsyncIterator[str]:
    """`meterd proxy` in its own process, on the same Redis as the test's gateway."""
    async with proxy_process(gateway, tmp_path / "proxy2", MTD_UPSTREAM_KEY=MOCK_KEY,
                             MTD_UPSTREAM_URL=gateway.upstream.url) as (url, _):
        yield url


def _redis_url(gateway: Gateway) -> str:
    kw = gateway.proxy.redis.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


@pytest.fixture
async def gateway(start_gateway: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await start_gateway()


@pytest.fixture
def start_own_redis() -> Iterator[Callable[..., RedisServer]]:
    """Starts redis-servers only this test uses (with more redis-server options if given), so
    stopping one disturbs nobody; all are stopped after the test."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(*args)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def own_redis(start_own_redis: Callable[..., RedisServer]) -> RedisServer:
    """A redis-server only this test uses."""
    return start_own_redis()
