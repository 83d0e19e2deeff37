"""How management commands reach the admin API.

A running `meterd serve` or `meterd admin` owns the DuckDB file (DuckDB allows one writer), so
commands go to it over the Unix socket in the data directory. When nothing runs, the command
starts the admin app in this process on a private socket for the length of one call: the same
handlers, the same audit trail, and the policy published to Redis either way.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterd.apps import SOCKET_FILE, create_root_app
from meterd.settings import Settings


class ManagementError(Exception):
    """The admin API refused the command; the message is its explanation."""


@contextlib.asynccontextmanager
async def admin_socket(settings: Settings) -> AsyncIterator[str]:
    """The path of a Unix socket that serves the admin API."""
    socket = settings.data_path / SOCKET_FILE
    if await _answers(socket):
        yield str(socket)
        return
    with tempfile.TemporaryDirectory(prefix="meterd-") as tmp:
        path = str(Path(tmp) / "admin.sock")
        runner = web.AppRunner(create_root_app(settings, proxy=False), access_log=None)
        await runner.setup()
        site = web.UnixSite(runner, path)
        await site.start()
        try:
            yield path
        finally:
            await runner.cleanup()


async def _answers(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(socket))) as s, \
                s.get("http://meterd/admin/api/v1/teams") as r:
            return r.status == 200
    except (aiohttp.ClientError, OSError):
        return False


async def call(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    """One admin API call; raises ManagementError with the API's message on failure."""
    raw = await fetch(settings, method, path, None if body is None else orjson.dumps(body))
    return orjson.loads(raw)


async def fetch(settings: Settings, method: str, path: str, data: bytes | None = None) -> bytes:
    """The raw body of one admin API call (JSON, CSV or Parquet)."""
    async with admin_socket(settings) as socket, aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(socket)
    ) as session, session.request(method, f"http://meterd/admin/api/v1/{path}", data=data,
                                  headers={"content-type": "application/json"}) as resp:
        raw = await resp.read()
        if resp.status >= 400:
            try:
                message = orjson.loads(raw)["error"]["message"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = f"HTTP {resp.status}"
            raise ManagementError(message)
        return raw
