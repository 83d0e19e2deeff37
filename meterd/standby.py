"""A standby `meterd admin`: it waits for the DuckDB file, then takes the rollup lock.

DuckDB lets one process write a database file, so two admins on one file (shared storage) take
turns: the leader holds the file (DuckDB's own lock on it) and the rollup lock (ledger.rollup:
5 s TTL, renewed every second). A standby tries to open the file twice a second, and meanwhile
answers every HTTP request on its port with a redirect to the leader's address (published in
Redis by the leader). When the leader dies, its file lock goes with the process and its rollup
lock lapses within the TTL; the standby opens the file, takes the lock as soon as it is free,
and serves.

The file comes first because Redis can lose the rollup lock while the leader lives (restarted
empty): a standby that took the free lock then could not open the file the leader holds, the
leader could not take its lock back, and neither would roll up. Holding the file, the leader
just takes the lock again. A leader that finds the lock taken from it anyway stops: its rollup
already refuses to commit without the lock, and the process exits so that nothing else writes
the file either.

For a load balancer, both answer `/healthz` (200: the process lives) and `/readyz` themselves:
200 from the leader, 503 from a standby (with the leader's address when known), so the
balancer sends the dashboard to the leader alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

from ledger.catalog import connect
from ledger.keyspace import KeySpace
from ledger.rollup import Rollup, take_lease
from meterd.settings import Settings

log = logging.getLogger("meterd.standby")

POLL = 0.5  # seconds between a standby's asks for the lock
Handler = Callable[[web.Request], Awaitable[web.Response]]


def leader_key(keyspace: KeySpace) -> str:
    return f"{keyspace.base}:admin:leader"


def own_url(settings: Settings) -> str:
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://{settings.host}:{settings.admin_port}"


async def lead(settings: Settings, redis: Any, keyspace: KeySpace,
               db_path: Path) -> tuple[str, duckdb.DuckDBPyConnection]:
    """Wait until this process holds the database file, then the rollup lock; returns the
    lock's token and the connection. Redirects to the leader meanwhile."""
    token = secrets.token_hex(16)
    redirect = await _redirector(settings, redis, keyspace)
    conn: duckdb.DuckDBPyConnection | None = None
    try:
        while True:
            if conn is None:
                with contextlib.suppress(duckdb.IOException):  # a live leader holds it
                    conn = connect(db_path)
            if conn is not None:
                with contextlib.suppress(Exception):  # Redis away: keep asking
                    if await take_lease(redis, keyspace, token):
                        await redis.set(leader_key(keyspace), own_url(settings))
                        log.warning("this admin leads: it holds the database file and the "
                                    "rollup lock")
                        opened, conn = conn, None
                        return token, opened
            await asyncio.sleep(POLL)
    finally:
        if conn is not None:  # stopped while waiting for the lock
            conn.close()
        if redirect is not None:
            await redirect.cleanup()


async def _redirector(settings: Settings, redis: Any,
                      keyspace: KeySpace) -> web.AppRunner | None:
    """Answer on the admin port while standing by: 307 to the leader, or 503 if none is
    known. None if the port is taken (then nothing answers until this admin leads)."""
    async def leader() -> str | None:
        with contextlib.suppress(Exception):  # Redis away: no leader known
            url = await redis.get(leader_key(keyspace))
            return url.decode() if isinstance(url, bytes) else url
        return None

    async def redirect(request: web.Request) -> web.StreamResponse:
        if url := await leader():
            raise web.HTTPTemporaryRedirect(url + request.rel_url.raw_path_qs)
        raise web.HTTPServiceUnavailable(text="standby admin: no leader known yet\n")

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "unready", "role": "standby",
                                  "leader": await leader()}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.admin_port).start()
    except OSError as exc:
        log.warning("standby cannot answer on its port meanwhile: %s", exc)
        await runner.cleanup()
        return None
    return runner


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def leader_readyz(rollup: Callable[[], Rollup | None]) -> Handler:
    """`/readyz` of the leading admin: 200 while the rollup lock is ours (or Redis is away: the
    lock cannot be checked, and this process still holds the database file), 503 once another
    admin holds it (this one is stepping down)."""
    async def readyz(request: web.Request) -> web.Response:
        current = rollup()
        if current is not None and (current.leader or current.redis_down):
            return web.json_response({"status": "ready", "role": "leader"})
        return web.json_response({"status": "unready", "role": "stepping down"}, status=503)
    return readyz


def step_down() -> None:
    """The lock was taken from this leader: stop the process (SIGTERM, the usual shutdown)."""
    log.error("another admin took the rollup lock: this one stops writing and exits")
    os.kill(os.getpid(), signal.SIGTERM)
