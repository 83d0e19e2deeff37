"""/healthz and /readyz as a load balancer uses them: health stays up, readiness drops while
the proxy would refuse requests (Redis unreachable under fail_closed) or hold them (counters
being rebuilt)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import Gateway, RedisServer

pytestmark = pytest.mark.parametrize("redis_url", ["real"], indirect=True)


@pytest.mark.parametrize("policy, ready_without_redis", [("fail_closed", 503),
                                                         ("fail_open", 200)])
async def test_readiness_drops_when_redis_is_gone_only_if_the_proxy_would_refuse(
        policy: str, ready_without_redis: int, own_redis: RedisServer,
        start_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gateway = await start_gateway(redis_url=own_redis.url, redis_outage_policy=policy)
    assert (await gateway.client.get("/readyz")).status == 200
    own_redis.stop()
    assert (await gateway.client.get("/healthz")).status == 200
    ready = await gateway.client.get("/readyz")
    assert ready.status == ready_without_redis
    doc = await ready.json()
    assert doc["redis"] == "ConnectionError"
    assert doc["status"] == ("unready" if policy == "fail_closed" else "ready")


async def test_readiness_drops_while_the_counters_are_rebuilt(
        own_redis: RedisServer, start_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gateway = await start_gateway(redis_url=own_redis.url)
    await gateway.proxy.redis.delete(gateway.proxy.keyspace.ready)  # as Redis back empty
    ready = await gateway.client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["counters"] == "rebuilding"
    assert (await gateway.client.get("/healthz")).status == 200
