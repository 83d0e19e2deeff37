"""Live reload of providers and routes: under load, mid-stream, and on SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from meterd.providers_config import PROVIDERS
from meterd.settings import Settings
from tests.conftest import MOCK_KEY, Gateway, Upstream, proxy_process
from tests.fakes.gateways import (
    Served,
    StartGateway,
    anthropic_provider,
    bedrock_provider,
)

pytest_plugins = ("tests.fakes.fixtures",)  # the fakes' fixtures


BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 256, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
REAL_ONLY = pytest.mark.parametrize("redis_url", ["real"], indirect=True)


def routed(providers: dict[str, Any], first: str, second: str) -> Settings:
    return Settings(providers=providers,
                    routes=({"match": "*", "providers": [first, second]},))


async def test_no_request_fails_while_routes_change_under_load(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served,
        monkeypatch: pytest.MonkeyPatch) -> None:
    providers = {"anthropic": anthropic_provider(upstream, monkeypatch),
                 "bedrock": bedrock_provider(bedrock)}
    gw = await start_gateway(providers=providers)
    key = await gw.developer()
    stop = asyncio.Event()

    async def reloader() -> int:
        n = 0
        while not stop.is_set():
            order = ("anthropic", "bedrock") if n % 2 else ("bedrock", "anthropic")
            gw.app[PROVIDERS].reload(routed(providers, *order))
            n += 1
            await asyncio.sleep(0.005)
        return n

    async def one(i: int) -> bytes:
        await asyncio.sleep(i * 0.003)  # starts spread over several reloads
        resp = await gw.client.post("/v1/messages", data=BODY, headers={
            "x-api-key": key, "x-mock-event-delay-ms": "5"})
        assert resp.status == 200, await resp.text()
        return await resp.read()

    reloads = asyncio.create_task(reloader())
    bodies: list[bytes] = []
    for _ in range(6):
        bodies += await asyncio.gather(*(one(i) for i in range(10)))
    stop.set()
    assert await reloads > 10
    assert all(b"event: message_stop" in body for body in bodies)
    events = await gw.settled(60)
    assert len(events) == 60
    assert [e for e in events if e["status"] != "200" or e["error_type"]] == []
    assert {e["provider"] for e in events} <= {"anthropic", "bedrock"}
    assert not bedrock.fake.rejected


async def test_a_stream_in_flight_finishes_on_the_provider_it_started_with(
        start_gateway: StartGateway, upstream: Upstream, bedrock: Served,
        monkeypatch: pytest.MonkeyPatch) -> None:
    providers = {"anthropic": anthropic_provider(upstream, monkeypatch)}
    gw = await start_gateway(providers=providers)
    key = await gw.developer()
    resp = await gw.client.post("/v1/messages", data=BODY, headers={
        "x-api-key": key, "x-mock-event-delay-ms": "40"})
    first = await resp.content.readany()
    # The provider it runs on disappears from the configuration mid-stream.
    gw.app[PROVIDERS].reload(Settings(providers={"bedrock": bedrock_provider(bedrock)}))
    body = first + await resp.read()
    assert b"event: message_stop" in body
    later = await gw.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    assert b"event: message_stop" in await later.read()
    events = await gw.settled(2)
    assert [e["provider"] for e in events] == ["anthropic", "bedrock"]
    assert all(e["estimated"] == "0" for e in events)


async def test_a_bad_configuration_leaves_the_providers_in_force(
        start_gateway: StartGateway, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    providers = {"anthropic": anthropic_provider(upstream, monkeypatch)}
    gw = await start_gateway(providers=providers)
    before = gw.proxy.router
    gw.app[PROVIDERS]._load = lambda: Settings(providers={"x": {"kind": "nope"}})
    gw.app[PROVIDERS].reload_logged()
    assert gw.proxy.router is before


@REAL_ONLY
async def test_sighup_reloads_the_config_file_of_a_running_proxy(
        gateway: Gateway, tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"

    def write(first: str) -> None:
        second = "two" if first == "one" else "one"
        config.write_text(f'''
[providers.one]
kind = "anthropic"
base_url = "{gateway.upstream.url}"

[providers.two]
kind = "anthropic"
base_url = "{gateway.upstream.url}"

[[routes]]
match = "*"
providers = ["{first}", "{second}"]
''')

    write("one")
    key = await gateway.developer()
    async with proxy_process(gateway, tmp_path / "proxy", MTD_CONFIG=str(config),
                             MTD_PROVIDER_ONE_KEY=MOCK_KEY,
                             MTD_PROVIDER_TWO_KEY=MOCK_KEY) as (base, proc):
        url = base + "/v1/messages"
        async with aiohttp.ClientSession() as s:
            async def served_by() -> str:
                async with s.post(url, data=BODY, headers={"x-api-key": key}) as r:
                    assert r.status in (200, 401), await r.text()
                    await r.read()
                    if r.status == 401:  # the key has not reached that process yet
                        return ""
                events = await gateway.events()
                return events[-1]["provider"] if events else ""

            deadline = time.monotonic() + 30  # process start-up on a busy machine
            while True:
                try:
                    if await served_by() == "one":
                        break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the proxy never served through provider one"
                await asyncio.sleep(0.05)
            write("two")
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while await served_by() != "two":
                assert time.monotonic() < deadline, "SIGHUP did not switch the route to two"
                await asyncio.sleep(0.05)
