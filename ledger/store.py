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
        return fakeredis.FakeAsyncRedis(server=server)
    # Short timeouts: during an outage a request should meet the outage policy, not hang.
    return aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0,
                                   health_check_interval=10)


def is_embedded(url: str) -> bool:
    return not url or url.startswith(EMBEDDED)
