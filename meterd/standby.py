"""A standby `meterd admin`: it waits for the rollup lock before it opens the DuckDB file.

DuckDB lets one process write a database file, so two admins on one file (shared storage) take
turns: the holder of the rollup lock (ledger.rollup: 5 s TTL, renewed every second) is the
leader and owns the file; a standby asks for the lock twice a second, and meanwhile answers
every HTTP request on its port with a redirect to the leader's address (published in Redis by
the leader). When the leader dies its lock lapses within the TTL; the standby takes it, opens
the file (the dead process's file lock went with it) and serves. A leader that finds the lock
taken from it (a stall longer than the TTL) stops: its rollup already refuses to commit
without the lock, and the process exits so that nothing else writes the file either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

from ledger.catalog import connect
from ledger.keyspace import KeySpace
from ledger.rollup import take_lease
from meterd.settings import Settings

log = logging.getLogger("meterd.standby")

POLL = 0.5  # seconds between a standby's asks for the lock


def leader_key(keyspace: KeySpace) -> str:
    return f"{keyspace.base}:admin:leader"


def own_url(settings: Settings) -> str:
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://{settings.host}:{settings.admin_port}"


async def lead(settings: Settings, redis: Any, keyspace: KeySpace,
               db_path: Path) -> tuple[str, duckdb.DuckDBPyConnection]:
    """Wait until this process holds the rollup lock, then open the database file; returns
    the lock's token and the connection. Redirects to the leader meanwhile."""
    token = secrets.token_hex(16)
    redirect = await _redirector(settings, redis, keyspace)
    try:
        while True:
            with contextlib.suppress(Exception):  # Redis away: keep asking
                if await take_lease(redis, keyspace, token):
                    try:
                        conn = connect(db_path)
                    except duckdb.IOException as exc:  # the old leader is still closing it
                        log.info("holding the lock, waiting for the database file: %s", exc)
                    else:
                        await redis.set(leader_key(keyspace), own_url(settings))
                        log.warning("this admin leads: it holds the rollup lock and the "
                                    "database file")
                        return token, conn
            await asyncio.sleep(POLL)
    finally:
        if redirect is not None:
            await redirect.cleanup()


async def _redirector(settings: Settings, redis: Any,
                      keyspace: KeySpace) -> web.AppRunner | None:
    """Answer on the admin port while standing by: 307 to the leader, or 503 if none is
    known. None if the port is taken (then nothing answers until this admin leads)."""
    async def redirect(request: web.Request) -> web.StreamResponse:
        leader = None
        with contextlib.suppress(Exception):  # Redis away: no leader known
            leader = await redis.get(leader_key(keyspace))
        if leader:
            url = leader.decode() if isinstance(leader, bytes) else leader
            raise web.HTTPTemporaryRedirect(url + request.rel_url.raw_path_qs)
        raise web.HTTPServiceUnavailable(text="standby admin: no leader known yet\n")

    app = web.Application()
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


def step_down() -> None:
    """The lock was taken from this leader: stop the process (SIGTERM, the usual shutdown)."""
    log.error("another admin took the rollup lock: this one stops writing and exits")
    os.kill(os.getpid(), signal.SIGTERM)
