"""Screenshots of the main dashboard pages, for the README.

    python bench/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Runs a gateway in this process (embedded Redis, a temporary data directory, the mock upstream),
seeds three teams, eight developers, budgets and five weeks of usage (history through the
Redis event stream and one rollup, today's spend through the proxy itself), then drives
headless Chromium over the pages and writes one PNG per page (desktop width, plus the overview
on a phone). PNGs are reduced to a 256-colour palette when Pillow is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dashboard.accounts import Accounts
from dashboard.state import ADMIN
from ledger.money import parse_usd
from meterd.apps import ADMIN_APP, create_root_app
from meterd.demo import seed_history
from meterd.mock_upstream import MockOptions, create_mock_app
from meterd.ports import free_port
from meterd.settings import Settings
from proxy.state import STATE

MOCK_KEY = "sk-ant-screenshots"
ADMIN_PASSWORD = "screenshots-only-password"
TEAMS = {
    "platform": ["Ada Lovelace", "Grace Hopper", "Barbara Liskov"],
    "mobile": ["Alan Turing", "Katherine Johnson", "Margaret Hamilton"],
    "data": ["Edsger Dijkstra", "Frances Allen"],
}
MODELS = (("claude-sonnet-4-6", 0.6), ("claude-opus-4-8", 0.15), ("claude-haiku-4-5", 0.25))
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES_TO_SHOOT = (
    ("overview", "/admin/"),
    ("teams", "/admin/teams"),
    ("team", None),  # the first team's page
    ("developer", None),  # the first developer's page
    ("requests", "/admin/requests"),
    ("reports", "/admin/reports?grain=week&dimension=developer"),
    ("rollout", "/admin/rollout"),
    ("settings", "/admin/settings"),
    ("audit", "/admin/audit"),
)


async def seed(app: web.Application) -> dict[str, Any]:
    """Teams, developers, keys, budgets and an admin account; returns names and secrets."""
    state = app[ADMIN_APP][ADMIN]
    catalog = state.catalog
    keys: dict[str, str] = {}
    devs: dict[str, tuple[str, str]] = {}
    for team, members in TEAMS.items():
        row = await state.db(catalog.create_team, team, actor="admin")
        for name in members:
            email = name.lower().replace(" ", ".") + "@example.com"
            dev = await state.db(catalog.create_developer, name, email, team, actor="admin")
            key = await state.db(catalog.issue_key, dev["id"], actor="admin")
            keys[dev["id"]], devs[dev["id"]] = key.secret, (row["id"], name)
    await state.db(catalog.set_budget, "team", "platform", "monthly", parse_usd("900"),
                   actor="admin")
    await state.db(catalog.set_budget, "team", "mobile", "monthly", parse_usd("75"),
                   actor="admin")
    await state.db(catalog.set_budget, "team", "data", "monthly", parse_usd("1200"),
                   actor="admin")
    await state.db(catalog.set_budget, "team_member", "platform", "daily", parse_usd("40"),
                   actor="admin")
    await state.db(catalog.set_limits, "team", "mobile", rpm=600, concurrency=20, actor="admin")
    await state.db(Accounts(catalog).create_user, "admin", ADMIN_PASSWORD, "admin",
                   actor="setup")
    await state.publish()
    return {"keys": keys, "devs": devs}


async def traffic_today(url: str, keys: dict[str, str], rounds: int = 3) -> None:
    """Real requests through the proxy, so today's live counters and request log fill."""
    rng = random.Random(11)
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for dev_id, secret in keys.items():
                model = rng.choice([m for m, _ in MODELS])
                usage = {"input_tokens": rng.randint(100, 3000),
                         "output_tokens": rng.randint(500, 8000),
                         "cache_read_input_tokens": rng.randint(10000, 80000)}
                async with session.post(
                        f"{url}/v1/messages", json={
                            "model": model, "max_tokens": 1024, "stream": True,
                            "messages": [{"role": "user", "content": "hello"}]},
                        headers={"authorization": f"Bearer {secret}",
                                 "x-claude-code-session-id": f"{dev_id}-today",
                                 "x-mock-usage": json.dumps(usage)}) as r:
                    await r.read()


def shrink(path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)


async def shoot(url: str, out: Path, chromium: str, team_id: str, dev_id: str) -> list[Path]:
    from playwright.async_api import async_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        page = await context.new_page()
        await page.goto(f"{url}/admin/signin")
        await page.fill("#signin-account input[name=name]", "admin")
        await page.fill("#signin-account input[name=password]", ADMIN_PASSWORD)
        await page.click("#signin-account button[type=submit]")
        await page.wait_for_url(f"{url}/admin/")
        for name, path in PAGES_TO_SHOOT:
            target = path or (f"/admin/teams/{team_id}" if name == "team"
                              else f"/admin/developers/{dev_id}")
            await page.goto(url + target)
            file = out / f"{name}.png"
            await page.screenshot(path=str(file), full_page=name in ("overview", "team"))
            written.append(file)
        phone = await browser.new_context(viewport={"width": 390, "height": 844},
                                          device_scale_factor=1, is_mobile=True)
        await phone.add_cookies(await context.cookies())  # type: ignore[arg-type]
        mobile = await phone.new_page()
        await mobile.goto(f"{url}/admin/")
        file = out / "overview-phone.png"
        await mobile.screenshot(path=str(file))
        written.append(file)
        await browser.close()
    for file in written:
        shrink(file)
    return written


async def main(out: Path, chromium: str) -> None:
    mock = web.AppRunner(create_mock_app(MockOptions(api_key=MOCK_KEY)), access_log=None)
    await mock.setup()
    mock_port = free_port()
    await web.TCPSite(mock, "127.0.0.1", mock_port).start()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meterd-shots-") as data:
        settings = Settings(data_dir=data, redis_url=f"embedded://shots-{port}",
                            upstream_url=f"http://127.0.0.1:{mock_port}", upstream_key=MOCK_KEY,
                            proxy_port=port, public_url="https://llm.example.com",
                            log_level="warning", rollup_interval=3600.0).replace()
        app = create_root_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            seeded = await seed(app)
            admin = app[ADMIN_APP][ADMIN]
            await app[STATE].refresh_policy()  # the proxy has the new keys at once
            proxy = app[STATE]
            principals = [proxy.policy.principal(k) for k in seeded["keys"].values()]
            events = await seed_history(proxy.gate, proxy.prices, principals, days=35)
            await traffic_today(url, seeded["keys"])
            await proxy.drain()
            assert admin.rollup is not None
            done = await admin.rollup.run_once()
            print(f"seeded {events} past requests; rolled up {done}")
            first_dev = next(iter(seeded["devs"]))
            files = await shoot(url, out, chromium, seeded["devs"][first_dev][0], first_dev)
            for f in files:
                print(f"{f}  {f.stat().st_size // 1024} KiB")
        finally:
            await runner.cleanup()
            await mock.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    asyncio.run(main(args.out, args.chromium))
