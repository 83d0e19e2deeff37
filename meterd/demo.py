"""`meterd serve --demo`: a gateway you can try in a minute, against the built-in mock upstream."""

from __future__ import annotations

import random
import secrets
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from dashboard.accounts import create_demo_admin
from dashboard.state import ADMIN
from ledger.catalog import Catalog, connect
from ledger.gate import Gate, Ticket
from ledger.money import parse_usd
from ledger.policy import Principal
from ledger.pricing import PriceTable
from ledger.settlement import Settlement
from ledger.usage import Usage
from meterd.apps import ADMIN_APP, DB_FILE
from meterd.mock_upstream import MockOptions, create_mock_app
from meterd.ports import free_port
from meterd.settings import Settings
from proxy.state import STATE

DEMO_DIR = "meterd-demo"
MARKER = ".meterd-demo"
MOCK_KEY = "sk-ant-mock"
TEAMS = {
    "platform": [("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com")],
    "mobile": [("Alan Turing", "alan@example.com"), ("Katherine Johnson", "kj@example.com")],
    "data": [("Edsger Dijkstra", "edsger@example.com")],
}
_demo_key: list[str] = []
_demo_admin: list[str] = []


def prepare_demo(settings: Settings) -> Settings:
    """A fresh demo data directory, seeded, with the upstream pointed at the mock."""
    data = Path(settings.data_dir if settings.data_dir != Settings.data_dir else DEMO_DIR)
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
    _demo_admin[:] = create_demo_admin(catalog.conn)
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


MODELS = (("claude-sonnet-4-6", 6), ("claude-opus-4-8", 2), ("claude-haiku-4-5", 3))


async def seed_history(gate: Gate, prices: PriceTable, principals: list[Principal],
                       days: int = 21, seed: int = 7) -> int:
    """Weeks of plausible Claude Code usage, settled as real requests are (same counters, same
    settlements), so the dashboard has something to show. Returns how many requests."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    count = 0
    for principal in principals:
        appetite = rng.uniform(0.4, 1.5)
        for back in range(days, 0, -1):
            day = now - timedelta(days=back)
            busy = 1.0 if day.weekday() < 5 else 0.15
            for _ in range(int(rng.randint(4, 14) * appetite * busy)):
                model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
                usage = Usage(input_tokens=rng.randint(50, 3000),
                              output_tokens=rng.randint(200, 5000),
                              cache_write_5m=rng.choice((0, 0, rng.randint(2000, 20000))),
                              cache_read=rng.randint(20000, 80000), service_tier="standard")
                at = day.replace(hour=rng.randint(7, 19), minute=rng.randint(0, 59))
                ticket = Ticket("mreq_demo_" + secrets.token_hex(8), principal, at)
                cost = prices.cost(model, usage)
                await gate.settle(ticket, Settlement.of(
                    ticket, usage, cost, model=model, provider="anthropic", status=200,
                    stream=True, latency_ms=rng.randint(2000, 40000),
                    ttfb_ms=rng.randint(400, 1500),
                    session_id=f"demo-{rng.getrandbits(48):012x}"))
                count += 1
    return count


async def populate(app: web.Application) -> None:
    """Past usage for the seeded developers, rolled up into DuckDB before anyone looks."""
    proxy = app[STATE]
    await proxy.refresh_policy()
    principals = [proxy.policy.principal(secret) for secret in _demo_key]
    await seed_history(proxy.gate, proxy.prices, principals)
    rollup = app[ADMIN_APP][ADMIN].rollup
    if rollup is None:
        raise RuntimeError("the demo seeds history after the admin app has started its rollup")
    await rollup.run_once()


async def announce(settings: Settings) -> None:
    url = settings.proxy_url
    print(f"""
meterd demo is running.

  proxy       {url}
  dashboard   {url}/admin/
  admin       {_demo_admin[0]} / {_demo_admin[1]}   (sign in at {url}/admin/)
  developer   Ada Lovelace (team platform), key {_demo_key[0]}

Point Claude Code at it:

  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN={_demo_key[0]} claude

The upstream is a mock: answers are canned and usage is recorded as if they were real.
""", flush=True)
