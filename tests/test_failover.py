"""Faults under load, with real processes, as issue 19 asks: three `meterd proxy`, two `meterd
admin` (leader and standby) on one DuckDB file, a Redis primary with a replica and three
Sentinels, every process connected through `redis+sentinel://`. Under load, one after the other:
SIGKILL the Redis primary (the Sentinels fail over), restart the primary empty (its replica
resyncs and empties too), restart it from a snapshot taken seconds before (Redis back as an
older copy of itself, after the journals dropped what came after it), SIGKILL the leading admin,
SIGKILL a proxy. Then: every request a client saw answered is in the ledger exactly once with
its exact cost, the counters match the ledger, and a strict cap that the load reached before the
faults held through all of them (0 overshoot, and no request of its developer answered once one
was refused).

The sent / accounted / lost / doubled table is printed (shown with `-s`), and written to the
terminal report otherwise, so that the test log shows it either way.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import duckdb
import orjson
import pytest
import redis as sync_redis

from ledger.journal import CLOCK_SKEW_MS
from ledger.keyspace import KeySpace
from ledger.rollup import lock_key
from meterd.ports import free_port
from meterd.standby import leader_key
from tests.conftest import MOCK_KEY, RedisServer, Upstream
from tests.test_redis_topologies import MASTER, Sentinel, sentinel_url, sentinels_ready

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
# Strict mode reserves every body byte as an input token: the mock answers 1,200 input tokens
# whatever the body, so the capped developer's body has more bytes than that.
CAPPED_BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                            "system": "x" * 1300,
                            "messages": [{"role": "user", "content": "Hello"}]})
COST = 4500  # 1200 × $3 + 60 × $15, in µ$ (as in test_outage)
CAP_MICROS = 270_000  # $0.27, strict: 60 requests at COST
CAP_REASON = "anthropic-ratelimit-unified-overage-disabled-reason"
KEYSPACE = KeySpace()


@dataclass
class Deployment:
    nodes: list[RedisServer]  # a primary and its replica (which is which changes)
    sentinels: list[Sentinel]
    upstream: Upstream
    root: Path
    keys: dict[str, str] = field(default_factory=dict)  # developer email → gateway key
    admins: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)  # port →
    proxies: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)  # url →
    answered: list[str] = field(default_factory=list)
    capped_answered: list[float] = field(default_factory=list)  # when (monotonic)
    capped_refused: list[float] = field(default_factory=list)  # when, refused for the cap
    takeover: float = 0.0

    @property
    def url(self) -> str:
        return sentinel_url(self.sentinels)

    def primary(self) -> RedisServer:
        port = sync_redis.Redis(port=self.sentinels[0].port).sentinel_get_master_addr_by_name(
            MASTER)[1]
        return next(n for n in self.nodes if n.port == int(port))

    def env(self, data_dir: Path, **more: str) -> dict[str, str]:
        return {**os.environ, "MTD_REDIS_URL": self.url, "MTD_DATA_DIR": str(data_dir),
                "MTD_UPSTREAM_URL": self.upstream.url, "MTD_UPSTREAM_KEY": MOCK_KEY,
                "MTD_LOG_LEVEL": "warning", "MTD_ROLLUP_INTERVAL": "0.5",
                "MTD_POLICY_REFRESH": "0.2", "MTD_REDIS_OUTAGE_POLICY": "fail_closed", **more}

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
        """Batches of four requests (three of Ada, one of the capped developer, so that one is
        never in flight twice), round robin over the live proxies, until `stop`."""
        ada, capped = self.keys["ada@example.com"], self.keys["cap@example.com"]
        async with aiohttp.ClientSession() as s:
            async def one(url: str, key: str, body: bytes) -> bool:
                try:
                    async with s.post(url + "/v1/messages", data=body,
                                      headers={"x-api-key": key}) as resp:
                        await resp.read()
                        if resp.status == 200:
                            self.answered.append(resp.headers["x-meterd-request-id"])
                            if key == capped:
                                self.capped_answered.append(time.monotonic())
                        elif resp.headers.get(CAP_REASON) == "org_spend_cap_reached":
                            self.capped_refused.append(time.monotonic())
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False  # a killed proxy: not answered, not owed
            turn, start = 0, len(self.answered)
            # A ceiling per load, so that a fault that stalls the stop cannot run it forever.
            while not stop.is_set() and len(self.answered) - start < 8_000:
                urls = [u for u, p in self.proxies.items() if p.returncode is None]
                if not urls:  # the test is ending
                    return
                done = await asyncio.gather(
                    one(urls[turn % len(urls)], capped, CAPPED_BODY),
                    *(one(urls[(turn + i) % len(urls)], ada, BODY) for i in (1, 2, 3)))
                turn += 1
                if not any(done):  # an outage (fail_closed refuses): do not spin
                    await asyncio.sleep(0.05)


async def admin_ready(port: int) -> int:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/readyz", allow_redirects=False) as resp:
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
    """Wait until the admin on `port` says it leads (/readyz 200); returns how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await admin_ready(port) == 200:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"admin on {port} never led")


async def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def start_node(node: RedisServer, replica_of: RedisServer | None) -> None:
    """Start `node` again, empty: without the snapshot its last full sync as a replica left
    in its directory (Redis would load that stale copy: another fault than this test's)."""
    (Path(node.dir) / "dump.rdb").unlink(missing_ok=True)
    node.args = ("--replicaof", "127.0.0.1", str(replica_of.port)) if replica_of else ()
    node.start()


def kill(node: RedisServer) -> None:
    assert node.proc is not None
    node.proc.kill()
    node.proc.wait()
    node.proc = None


def replica_in_sync(primary: RedisServer) -> bool:
    try:
        info = sync_redis.Redis(port=primary.port).info("replication")
    except sync_redis.RedisError:
        return False
    replica = info.get("slave0")  # redis-py parses "ip=...,state=online,..." into a dict
    return isinstance(replica, dict) and replica.get("state") == "online"


async def kill_primary(d: Deployment) -> None:
    """SIGKILL the primary; the Sentinels promote its replica. The killed node then comes
    back (empty) as the new primary's replica, so that the next fault has one too."""
    old = d.primary()
    kill(old)
    await until(lambda: d.primary() is not old, "the Sentinels to promote the replica")
    new = d.primary()
    start_node(old, replica_of=new)
    await until(lambda: replica_in_sync(new), "the old primary to resync as a replica")


async def restart_redis_empty(d: Deployment) -> None:
    """SIGKILL the primary and start it again at once, empty, before the Sentinels consider
    it down (1 s): its replica resyncs from it and is empty too."""
    primary = d.primary()
    kill(primary)
    start_node(primary, replica_of=None)
    await until(lambda: replica_in_sync(primary), "the replica to resync from the empty primary")
    assert d.primary() is primary  # no failover: this was a restart


async def restart_redis_from_an_older_snapshot(d: Deployment) -> None:
    """Snapshot the primary, let the load go on until the journals have dropped what was
    settled after it (a rollup published a watermark more than CLOCK_SKEW_MS later), then
    SIGKILL the primary and start it from that snapshot, before the Sentinels consider it
    down: Redis is back as an older copy of itself, epoch marker included."""
    primary = d.primary()
    client = sync_redis.Redis(port=primary.port)
    client.save()
    taken = int(time.time() * 1000)
    await until(lambda: int(client.get(KEYSPACE.rolled_until) or 0) > taken + CLOCK_SKEW_MS
                + 1500, "the journals to drop what was settled after the snapshot")
    kill(primary)
    primary.args = ()
    primary.start()  # loads dump.rdb, the snapshot
    await until(lambda: replica_in_sync(primary), "the replica to resync from the old copy")
    assert d.primary() is primary  # no failover: this was a restart


async def kill_leader(d: Deployment) -> None:
    statuses = {port: await admin_ready(port) for port in d.admins}
    assert sorted(statuses.values()) == [200, 503], statuses  # one leads, one stands by
    leader = next(p for p, s in statuses.items() if s == 200)
    standby = next(p for p in d.admins if p != leader)
    d.admins[leader].send_signal(signal.SIGKILL)
    await d.admins[leader].wait()
    d.takeover = await leads(standby)


async def kill_proxy(d: Deployment) -> None:
    proc = next(iter(d.proxies.values()))
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await d.proxy("proxy0")  # its data directory: it adopts the killed one's journal


FAULTS: list[tuple[str, Callable[[Deployment], Awaitable[None]]]] = [
    ("redis primary SIGKILLed", kill_primary),
    ("redis restarted empty", restart_redis_empty),
    ("redis back as older copy", restart_redis_from_an_older_snapshot),
    ("leading admin SIGKILLed", kill_leader),
    ("proxy SIGKILLed", kill_proxy),
]


async def answered(d: Deployment, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(d.answered) < count:
        assert time.monotonic() < deadline, f"only {len(d.answered)} of {count} answered"
        await asyncio.sleep(0.02)


def direct(d: Deployment, *steps: list[str]) -> str:
    """Management commands in direct mode (no admin runs yet), in one interpreter."""
    script = "from meterd.cli import main\n" + "".join(f"main({s!r})\n" for s in steps)
    done = subprocess.run([sys.executable, "-c", script], env=d.env(d.root / "shared"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def developer(name: str, email: str, usd: float, mode: str) -> list[list[str]]:
    return [["dev", "create", name, "--email", email, "--team", "platform"],
            ["key", "issue", email],
            ["budget", "set", "developer", email, "--usd", str(usd), "--period", "monthly",
             "--mode", mode]]


@pytest.fixture
def redis_with_sentinels(
        start_own_redis: Callable[..., RedisServer]) -> Iterator[tuple[list[RedisServer],
                                                                       list[Sentinel]]]:
    primary = start_own_redis()
    replica = start_own_redis("--replicaof", "127.0.0.1", str(primary.port))
    watchers = [Sentinel(primary.port) for _ in range(3)]
    try:
        yield [primary, replica], watchers
    finally:
        for sentinel in watchers:
            sentinel.stop()


@pytest.mark.timeout(240)  # 35-65 s here; room for a machine busy with other work
async def test_no_answered_request_is_lost_or_doubled_and_caps_hold_through_faults(
        redis_with_sentinels: tuple[list[RedisServer], list[Sentinel]], upstream: Upstream,
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    nodes, watchers = redis_with_sentinels
    d = Deployment(nodes, watchers, upstream, tmp_path)
    await until(lambda: sentinels_ready(watchers), "the Sentinels to see each other")
    out = direct(d, ["team", "create", "platform"],
                 *developer("Ada", "ada@example.com", 1000, "estimate"),
                 *developer("Cap", "cap@example.com", CAP_MICROS / 1e6, "strict"))
    found = re.findall(r"\bmtd_\S+", out)
    assert len(found) == 2, out
    d.keys = dict(zip(("ada@example.com", "cap@example.com"), found, strict=True))
    rows = []
    try:
        first = await d.admin()
        await leads(first)
        second = await d.admin()
        await until_answers(f"http://127.0.0.1:{second}/admin/", {307})  # the standby redirects
        for name in ("proxy0", "proxy1", "proxy2"):
            await d.proxy(name)
        stop = asyncio.Event()
        load = asyncio.create_task(d.load(stop))
        await until(lambda: bool(d.capped_refused), "the capped developer to reach the cap")
        reached = len(d.capped_answered)
        stop.set()
        await load
        before_faults = len(d.answered)
        for case, fault in FAULTS:
            before, refused = len(d.answered), len(d.capped_refused)
            stop = asyncio.Event()
            load = asyncio.create_task(d.load(stop))
            await answered(d, before + 40)
            await fault(d)
            await answered(d, before + 120)  # and the load goes on after it
            stop.set()
            await load
            rows.append((case, len(d.answered) - before, len(d.capped_refused) - refused))
        # What reached Redis until now is in DuckDB once a rollup started after it (the
        # journals' replays landed long before: within a second of each fault).
        stopped = int(time.time() * 1000)
        primary = sync_redis.Redis(port=d.primary().port)
        await until(lambda: int(primary.get(KEYSPACE.rolled_until) or 0) > stopped,
                    "a rollup after the load")
        for proc in [*d.proxies.values(), *d.admins.values()]:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
    finally:
        for proc in [*d.proxies.values(), *d.admins.values()]:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()  # the leader's SIGTERM rolls up what is left

    conn = duckdb.connect(str(tmp_path / "shared" / "meterd.duckdb"), read_only=True)
    # Usage: the request log also keeps refusals (cost 0), which are not.
    conn.execute("CREATE TEMP VIEW usage AS SELECT * FROM requests WHERE refusal = ''")
    held = dict(conn.execute("SELECT id, count(*) FROM usage GROUP BY id").fetchall())
    costs = {r[0] for r in conn.execute("SELECT DISTINCT cost_micros FROM usage").fetchall()}
    totals = dict(conn.execute(
        "SELECT d.email, sum(r.cost_micros) FROM usage r "
        "JOIN developers d ON d.id = r.developer_id GROUP BY ALL").fetchall())
    dev_ids = dict(conn.execute("SELECT email, id FROM developers").fetchall())
    conn.close()
    spent = {email: int(primary.hget(KEYSPACE.counter("developer", dev_ids[email], "monthly",
                                                       datetime.now(UTC)), "spent") or 0)
             for email in totals}

    lines = [f"{'after':<28}{'sent':>6}{'accounted':>11}{'lost':>6}{'doubled':>9}"]
    sums = [0, 0, 0, 0]
    offset = 0
    for case, count, _ in [("load before the faults", before_faults, 0), *rows]:
        ids = d.answered[offset:offset + count]
        offset += count
        line = (len(ids), sum(held.get(i) == 1 for i in ids), sum(i not in held for i in ids),
                sum(held.get(i, 0) > 1 for i in ids))
        sums = [a + b for a, b in zip(sums, line, strict=True)]
        lines.append(f"{case:<28}{line[0]:>6}{line[1]:>11}{line[2]:>6}{line[3]:>9}")
    lines.append(f"{'total':<28}{sums[0]:>6}{sums[1]:>11}{sums[2]:>6}{sums[3]:>9}")
    capped = totals.get("cap@example.com", 0)
    lines.append(f"leading admin SIGKILLed: the standby led {d.takeover:.1f} s later; strict cap "
                 f"{CAP_MICROS} µ$: spent {capped} µ$ ({reached} requests until the first "
                 f"refusal, {len(d.capped_refused)} refused, "
                 f"{len(d.capped_answered) - reached} answered after it)")
    table = "\n".join(lines)
    print("\n" + table)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is not None and capture is not None and capture.is_capturing():
        with capture.global_and_fixture_disabled():  # past the capture, into the test log
            reporter.write_line("\n" + table)

    assert sums[2] == sums[3] == 0
    assert sums[1] == len(d.answered)
    # A request cut by the proxy's SIGKILL after its settlement is in the ledger, unseen.
    assert len(held) >= len(d.answered)
    assert costs == {COST}
    assert sum(totals.values()) == COST * len(held)
    assert spent == totals  # the counters match the ledger, for each developer
    # The strict cap held: never passed, and once its developer was refused, through every
    # fault (counters lost and rebuilt, a failover), none of its requests was answered again.
    assert capped <= CAP_MICROS
    assert capped == COST * reached
    assert len(d.capped_answered) == reached
    assert all(refused > 0 for _, _, refused in rows)  # it kept asking through each fault
    assert d.takeover < 10


async def readyz(port: int) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{port}/readyz", allow_redirects=False) as resp:
        return resp.status, await resp.json()


async def test_admin_readiness_tells_the_leader_from_the_standby_through_faults(
        own_redis: RedisServer, upstream: Upstream, tmp_path: Path) -> None:
    env = {**os.environ, "MTD_REDIS_URL": own_redis.url, "MTD_DATA_DIR": str(tmp_path),
           "MTD_LOG_LEVEL": "warning", "MTD_ROLLUP_INTERVAL": "0.5"}
    admins: dict[int, asyncio.subprocess.Process] = {}
    try:
        for _ in range(2):
            port = free_port()
            admins[port] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meterd.cli", "admin",
                env={**env, "MTD_ADMIN_PORT": str(port)})
            if len(admins) == 1:
                await leads(port)
        leader, standby = admins
        await until_answers(f"http://127.0.0.1:{standby}/healthz", {200})
        assert await readyz(leader) == (200, {"status": "ready", "role": "leader"})
        assert await readyz(standby) == (503, {"status": "unready", "role": "standby",
                                               "leader": f"http://127.0.0.1:{leader}"})

        # Redis loses the rollup lock (restarted empty, then the lock alone, a few times: the
        # standby asks twice a second, so it would win some races for a free lock). The
        # leader, which holds the database file, takes it again every time; the standby
        # does not take it from a live leader.
        own_redis.stop()
        own_redis.start()
        r = sync_redis.Redis(port=own_redis.port)
        for _ in range(4):
            r.delete(lock_key(KEYSPACE), leader_key(KEYSPACE))
            back = int(time.time() * 1000)
            await until(lambda back=back: int(r.get(KEYSPACE.rolled_until) or 0) > back,
                        "a rollup")
            assert (await readyz(leader))[0] == 200
            assert (await readyz(standby))[0] == 503
        assert admins[leader].returncode is None

        admins[leader].send_signal(signal.SIGKILL)
        await admins[leader].wait()
        assert await leads(standby) < 10
        assert await readyz(standby) == (200, {"status": "ready", "role": "leader"})
    finally:
        for proc in admins.values():
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
