"""`meterd serve --demo`: a gateway you can try in a minute, against the built-in mock upstream."""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ledger.catalog import Catalog, connect
from ledger.money import parse_usd
from meterd.apps import DB_FILE
from meterd.mock_upstream import MockOptions, create_mock_app
from meterd.settings import Settings

DEMO_DIR = "meterd-demo"
MARKER = ".meterd-demo"
MOCK_KEY = "sk-ant-mock"
TEAMS = {
    "platform": [("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com")],
    "mobile": [("Alan Turing", "alan@example.com"), ("Katherine Johnson", "kj@example.com")],
    "data": [("Edsger Dijkstra", "edsger@example.com")],
}
_demo_key: list[str] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_demo(settings: Settings) -> Settings:
    """A fresh demo data directory, seeded, with the upstream pointed at the mock."""
    data = Path(settings.data_dir if settings.data_dir != "meterd-data" else DEMO_DIR)
    if data.exists():
        if not (data / MARKER).exists():
            raise SystemExit(f"meterd: {data} holds real data; --demo only reuses its own "
                             f"directory ({DEMO_DIR})")
        shutil.rmtree(data)
    data.mkdir(parents=True)
    (data / MARKER).touch()
    catalog = Catalog(connect(data / DB_FILE))
    for team, members in TEAMS.items():
        catalog.create_team(team, actor="demo")
        catalog.set_budget("team", team, "monthly", parse_usd("500"), actor="demo")
        for name, email in members:
            catalog.create_developer(name, email, team, actor="demo")
            key = catalog.issue_key(email, actor="demo")
            _demo_key.append(key.secret)
    catalog.set_budget("team_member", "platform", "daily", parse_usd("25"), actor="demo")
    catalog.set_limits("team", "mobile", rpm=600, concurrency=20, actor="demo")
    catalog.conn.close()
    return settings.replace(data_dir=str(data), upstream_url=f"http://127.0.0.1:{free_port()}",
                            upstream_key=MOCK_KEY)


def with_mock_upstream(app: web.Application, settings: Settings) -> None:
    """Serve the mock upstream from this process for the life of `app`."""
    port = int(settings.upstream_url.rsplit(":", 1)[1])

    async def mock(_app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(create_mock_app(MockOptions(api_key=MOCK_KEY)), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield
        await runner.cleanup()

    app.cleanup_ctx.insert(0, mock)


async def announce(settings: Settings) -> None:
    url = settings.proxy_url
    print(f"""
meterd demo is running.

  proxy       {url}
  dashboard   {url}/admin/
  developer   Ada Lovelace (team platform), key {_demo_key[0]}

Point Claude Code at it:

  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN={_demo_key[0]} claude

The upstream is a mock: answers are canned and usage is recorded as if they were real.
""", flush=True)
