"""Connections to the two stores: Redis (real, or embedded in-process) and the DuckDB file."""

from __future__ import annotations

from typing import Any

import fakeredis
import redis.asyncio as aioredis

EMBEDDED = "embedded://"
_servers: dict[str, fakeredis.FakeServer] = {}


def connect_redis(url: str) -> Any:
    """An asyncio Redis client. An empty URL (or `embedded://NAME`) gives the embedded backend:
    fakeredis with Lua, shared by everything in this process that names the same server."""
    if not url or url.startswith(EMBEDDED):
        name = url[len(EMBEDDED):] if url else "default"
        server = _servers.setdefault(name, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(server=server, max_connections=64,
                                        connection_pool_class=aioredis.BlockingConnectionPool)
    # A bounded pool that makes a burst queue for connections (a plain pool fails the excess
    # with "Too many connections", which would look like an outage). Short timeouts: during a
    # real outage a request should meet the outage policy, not hang.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=2.0, socket_connect_timeout=1.0, socket_timeout=2.0,
        health_check_interval=10)
    return aioredis.Redis.from_pool(pool)


def is_embedded(url: str) -> bool:
    return not url or url.startswith(EMBEDDED)
