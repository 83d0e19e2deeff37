"""What the admin side holds: the catalog, Redis, and how a change reaches the proxies."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from ledger.catalog import Catalog, queue_publish
from ledger.keyspace import KeySpace
from ledger.rollup import Rollup

T = TypeVar("T")


@dataclass
class AdminState:
    catalog: Catalog
    redis: Any
    keyspace: KeySpace
    proxy_url: str
    rollup: Rollup | None = None  # set once Redis and DuckDB are open
    # DuckDB work runs off the event loop, one statement at a time.
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, "duckdb"))

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def publish(self) -> None:
        """Mirror the whole policy to Redis; every proxy picks it up within a second."""
        docs = await self.db(self.catalog.policy_documents)
        async with self.redis.pipeline(transaction=True) as pipe:
            queue_publish(pipe, self.keyspace, docs)
            await pipe.execute()


ADMIN = web.AppKey("admin_state", AdminState)
