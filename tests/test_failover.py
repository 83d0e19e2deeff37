"""Faults under load, with real processes: two `meterd admin` (leader and standby) on one
DuckDB file, two `meterd proxy`, one Redis. After each fault every request a client saw
answered is in the ledger exactly once with its exact cost, and the counters match the ledger.

A Redis Sentinel failover is one more case for FAULTS once the proxies can follow one: a
function that takes the Cluster and makes the fault happen (see `kill_leader`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import duckdb
import orjson
import redis.asyncio as aioredis

from ledger.keyspace import KeySpace
from meterd.ports import free_port
from tests.conftest import MOCK_KEY, RedisServer, Upstream

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
COST = 4500  # 1200 × $3 + 60 × $15, in µ$ (as in test_outage)
BUDGET_USD = 1000


@dataclass
class Cluster:
    redis: RedisServer
    upstream: Upstream
    root: Path
    key: str = ""
    admins: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)  # port →
    proxies: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)  # url →
    answered: list[str] = field(default_factory=list)
    takeover: float = 0.0

    def env(self, data_dir: Path, **more: str) -> dict[str, str]:
        return {**os.environ, "MTD_REDIS_URL": self.redis.url, "MTD_DATA_DIR": str(data_dir),
                "MTD_UPSTREAM_URL": self.upstream.url, "MTD_UPSTREAM_KEY": MOCK_KEY,
                "MTD_LOG_LEVEL": "warning", "MTD_ROLLUP_INTERVAL": "0.5",
                "MTD_POLICY_REFRESH": "0.2", **more}

    async def admin(self) -> int:
        port = free_port()
        self.admins[port] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterd.cli", "admin",
            env=self.env(self.root / "shared", MTD_ADMIN_PORT=str(port)))
        return port

    async def proxy(self, name: str) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.proxies[url] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterd.cli", "proxy", "--port", str(port),
            env=self.env(self.root / name))
        await until_answers(url + "/healthz", {200})
        return url

    async def load(self, stop: asyncio.Event) -> None:
        """Requests, four at a time, round robin over the live proxies, until `stop`."""
        async with aiohttp.ClientSession() as s:
            async def one(url: str) -> None:
                try:
                    async with s.post(url + "/v1/messages", data=BODY,
                                      headers={"x-api-key": self.key}) as resp:
                        await resp.read()
                        if resp.status == 200:
                            self.answered.append(resp.headers["x-meterd-request-id"])
                except aiohttp.ClientError:
                    pass  # a killed proxy: not answered, not owed
            turn, start = 0, len(self.answered)
            # A ceiling per load, so that a fault that stalls the stop cannot run it forever.
            while not stop.is_set() and len(self.answered) - start < 5_000:
                urls = [u for u, p in self.proxies.items() if p.returncode is None]
                await asyncio.gather(*(one(urls[(turn + i) % len(urls)]) for i in range(4)))
                turn += 1


async def admin_status(port: int) -> int:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/admin/", allow_redirects=False) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def until_answers(url: str, ok: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url, allow_redirects=False) as resp:
                    if resp.status in ok:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered {ok}")


async def leads(port: int, timeout: float = 30) -> float:
    """Wait until the admin on `port` serves its own dashboard (not the standby's redirect);
    returns how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if (await admin_status(port)) not in (0, 307, 503):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"admin on {port} never led")


async def kill_leader(c: Cluster) -> None:
    leader, standby = list(c.admins)
    c.admins[leader].send_signal(signal.SIGKILL)
    await c.admins[leader].wait()
    c.takeover = await leads(standby)


async def restart_redis_empty(c: Cluster) -> None:
    c.redis.stop()
    c.redis.start()


async def kill_proxy(c: Cluster) -> None:
    proc = next(iter(c.proxies.values()))
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await c.proxy("proxy0")  # its data directory: it adopts the killed one's journal


FAULTS: list[tuple[str, Callable[[Cluster], Awaitable[None]]]] = [
    ("leading admin SIGKILLed", kill_leader),
    ("redis restarted empty", restart_redis_empty),
    ("proxy SIGKILLed", kill_proxy),
]


async def answered(c: Cluster, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(c.answered) < count:
        assert time.monotonic() < deadline, f"only {len(c.answered)} of {count} answered"
        await asyncio.sleep(0.02)


def direct(c: Cluster, *steps: list[str]) -> str:
    """Management commands in direct mode (no admin runs yet), in one interpreter."""
    script = "from meterd.cli import main\n" + "".join(f"main({s!r})\n" for s in steps)
    done = subprocess.run([sys.executable, "-c", script], env=c.env(c.root / "shared"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def settled_ids(c: Cluster) -> set[str]:
    r = aioredis.from_url(c.redis.url)
    try:
        ids: set[str] = set()
        async for key in r.scan_iter(match=f"{KeySpace().base}:settled:*"):
            ids |= {k.decode() for k in await r.hkeys(key)}
        return ids
    finally:
        await r.aclose()


async def test_no_answered_request_is_lost_or_doubled_through_faults(
        start_own_redis: Callable[..., RedisServer], upstream: Upstream,
        tmp_path: Path) -> None:
    c = Cluster(start_own_redis(), upstream, tmp_path)
    out = direct(c, ["team", "create", "platform"],
                 ["dev", "create", "Ada", "--email", "ada@example.com", "--team", "platform"],
                 ["key", "issue", "ada@example.com"],
                 ["budget", "set", "developer", "ada@example.com", "--usd", str(BUDGET_USD),
                  "--period", "monthly"])
    found = re.search(r"\bmtd_\S+", out)
    assert found is not None, out
    c.key = found.group(0)
    rows = []
    try:
        first = await c.admin()
        await leads(first)
        second = await c.admin()
        await until_answers(f"http://127.0.0.1:{second}/admin/", {307})  # the standby redirects
        for name in ("proxy0", "proxy1"):
            await c.proxy(name)
        for case, fault in FAULTS:
            before = len(c.answered)
            stop = asyncio.Event()
            load = asyncio.create_task(c.load(stop))
            await answered(c, before + 40)
            await fault(c)
            await answered(c, before + 120)  # and the load goes on after it
            stop.set()
            await load
            rows.append((case, len(c.answered) - before))
        for _ in range(200):  # replays (journal, spool) reach Redis within about a second
            if set(c.answered) <= await settled_ids(c):
                break
            await asyncio.sleep(0.05)
        for proc in c.proxies.values():
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
    finally:
        for proc in [*c.proxies.values(), *c.admins.values()]:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()  # the leader's SIGTERM rolls up what is left

    conn = duckdb.connect(str(tmp_path / "shared" / "meterd.duckdb"), read_only=True)
    held = dict(conn.execute("SELECT id, count(*) FROM requests GROUP BY id").fetchall())
    costs = {r[0] for r in conn.execute("SELECT DISTINCT cost_micros FROM requests").fetchall()}
    (dev_id, total), = conn.execute(
        "SELECT developer_id, sum(cost_micros) FROM requests GROUP BY ALL").fetchall()
    conn.close()
    r = aioredis.from_url(c.redis.url)
    counter = KeySpace().counter("developer", dev_id, "monthly", datetime.now(UTC))
    spent = int(await r.hget(counter, "spent") or 0)
    await r.aclose()
    print(f"\nleading admin SIGKILLed: the standby led {c.takeover:.1f} s later")
    print(f"{'after':<28}{'sent':>6}{'accounted':>11}{'lost':>6}{'doubled':>9}")
    start = 0
    totals = [0, 0, 0, 0]
    for case, count in rows:
        ids = c.answered[start:start + count]
        start += count
        line = (len(ids), sum(held.get(i) == 1 for i in ids), sum(i not in held for i in ids),
                sum(held.get(i, 0) > 1 for i in ids))
        totals = [a + b for a, b in zip(totals, line, strict=True)]
        print(f"{case:<28}{line[0]:>6}{line[1]:>11}{line[2]:>6}{line[3]:>9}")
    print(f"{'total':<28}{totals[0]:>6}{totals[1]:>11}{totals[2]:>6}{totals[3]:>9}")
    assert totals[2] == totals[3] == 0
    assert totals[1] == len(c.answered)
    # A request cut by the proxy's SIGKILL after its settlement is in the ledger, unseen.
    assert len(held) >= len(c.answered)
    assert costs == {COST} and total == COST * len(held)
    assert spent == total  # the counters match the ledger
    assert total <= BUDGET_USD * 1_000_000  # the cap held
    assert c.takeover < 10
