"""meterd on the two multi-node Redis deployments, with real processes on loopback: a primary
with a replica and three Sentinels (a failover is followed), and a three-primary Cluster."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from ledger.rewind import rewind_if_behind
from tests.conftest import Gateway, RedisServer, free_port, need

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "stream": True,
                     "messages": [{"role": "user", "content": "Hello"}]})
SONNET_COST = 1200 * 3 + 60 * 15  # µ$: the mock's 1,200 input and 60 output tokens at $3/$15
MASTER = "meterd-test"
# The gateway's own settings and flushes go to the URL given, not to the fixture's Redis.
pytestmark = pytest.mark.parametrize("redis_url", ["real"], indirect=True)


class Sentinel:
    """One `redis-server --sentinel` watching `MASTER`."""

    def __init__(self, primary_port: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="meterd-sentinel-")
        conf = Path(self.dir) / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 5000\n")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinels() -> Iterator[Callable[[int], list[Sentinel]]]:
    started: list[Sentinel] = []

    def start(primary_port: int) -> list[Sentinel]:
        started.extend(Sentinel(primary_port) for _ in range(3))
        return started

    yield start
    for sentinel in started:
        sentinel.stop()


def sentinels_ready(watchers: list[Sentinel]) -> bool:
    """Every Sentinel knows the two others, and the first one knows the replica."""
    try:
        return all(int(sync_redis.Redis(port=s.port).sentinel_master(MASTER)
                       ["num-other-sentinels"]) == 2 for s in watchers) and \
            int(sync_redis.Redis(port=watchers[0].port).sentinel_master(MASTER)
                ["num-slaves"]) == 1
    except (sync_redis.RedisError, KeyError):
        return False


def sentinel_url(watchers: list[Sentinel]) -> str:
    """The `redis_url` that gives meterd these Sentinels."""
    return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in watchers) + f"/{MASTER}"


async def sentinels_settled(watchers: list[Sentinel]) -> None:
    """Wait until the Sentinels found each other and the replica (sentinels_ready)."""
    async def ready() -> bool:
        return sentinels_ready(watchers)
    await wait_for(ready, "the Sentinels to find each other and the replica")


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def send(gateway: Gateway, key: str) -> int:
    response = await gateway.client.post("/v1/messages", data=BODY, headers={"x-api-key": key})
    await response.read()
    return response.status


async def test_requests_are_admitted_and_settled_after_a_sentinel_failover(
        start_own_redis: Callable[..., RedisServer],
        sentinels: Callable[[int], list[Sentinel]],
        start_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    primary = start_own_redis()
    replica = start_own_redis("--replicaof", "127.0.0.1", str(primary.port))
    watchers = sentinels(primary.port)
    ask = sync_redis.Redis(port=watchers[0].port)
    await sentinels_settled(watchers)

    url = sentinel_url(watchers)
    # fail_closed: a request answered 200 was admitted by Redis, not let through by the
    # outage policy while no primary was known.
    gateway = await start_gateway(redis_url=url, redis_outage_policy="fail_closed")
    key = await gateway.developer()
    for _ in range(3):
        assert await send(gateway, key) == 200
    assert len(await gateway.settled(3)) == 3
    sync_redis.Redis(port=primary.port).wait(1, 5000)  # the replica has all of it

    assert primary.proc is not None
    killed = asyncio.get_running_loop().time()
    primary.proc.send_signal(signal.SIGKILL)
    primary.proc.wait()
    primary.proc = None

    async def promoted() -> bool:
        return tuple(ask.sentinel_get_master_addr_by_name(MASTER))[1] == replica.port
    await wait_for(promoted, "the Sentinels to promote the replica")

    # After the failover, requests are admitted and settled against the new primary, one
    # event each; the three from before the failover are there too (replicated).
    async def answered() -> bool:
        return await send(gateway, key) == 200
    await wait_for(answered, "a request answered after the failover", timeout=15)
    print(f"first request answered {asyncio.get_running_loop().time() - killed:.1f} s after "
          "the primary was killed")
    for _ in range(4):
        assert await send(gateway, key) == 200
    await gateway.proxy.drain()
    new_primary = sync_redis.Redis(port=replica.port)
    await wait_for(lambda: _at_least(new_primary, gateway, 8), "8 settled events")
    events = await gateway.events()
    assert len(events) == 8
    assert len({e["id"] for e in events}) == 8
    assert all(e["cost_micros"] == str(SONNET_COST) for e in events)
    ready = await gateway.client.get("/readyz")
    assert ready.status == 200


async def _at_least(redis: sync_redis.Redis, gateway: Gateway, count: int) -> bool:
    return int(redis.xlen(gateway.proxy.keyspace.events)) >= count


def low_port() -> int:
    """A free port a cluster node accepts: Redis 7.0 refuses one above 55535 (its bus port,
    port + 10000, would overflow)."""
    while (port := free_port()) > 55535:
        pass
    return port


@pytest.fixture
def cluster() -> Iterator[list[RedisServer]]:
    need(shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None,
         "redis-server or redis-cli is not installed")
    nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-node-timeout", "2000") for _ in range(3)]
    try:
        for node in nodes:
            node.port = low_port()
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            shutil.rmtree(node.dir, ignore_errors=True)


async def test_a_cluster_meters_every_request_exactly_and_keeps_every_key_in_one_slot(
        cluster: list[RedisServer], start_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    clients = [sync_redis.Redis(port=n.port) for n in cluster]

    async def cluster_ok() -> bool:
        return all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                   for c in clients)
    await wait_for(cluster_ok, "the cluster to agree on its slots")

    # Failing closed, a budget refuses every request until the rollup has marked the counters
    # complete (ledger.rebuild, a script the Cluster runs).
    gateway = await start_gateway(redis_url=f"redis+cluster://127.0.0.1:{cluster[1].port}",
                                  redis_outage_policy="fail_closed")
    key = await gateway.developer()
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly",
                         21 * SONNET_COST, mode="strict")
    statuses = await asyncio.gather(*(send(gateway, key) for _ in range(20)))
    assert statuses == [200] * 20
    events = await gateway.settled(20)
    assert len(events) == 20 and len({e["id"] for e in events}) == 20
    assert sum(int(e["cost_micros"]) for e in events) == 20 * SONNET_COST

    doc = await (await gateway.client.get(
        "/meterd/v1/me", headers={"authorization": f"Bearer {key}"})).json()
    assert doc["developer"]["name"] == "Ada"

    await gateway.admin.rollup.run_once()
    rows: Any = await gateway.admin.db(lambda: gateway.admin.catalog.conn.execute(
        "SELECT count(*), sum(cost_micros) FROM requests").fetchone())
    assert rows == (20, 20 * SONNET_COST)
    # Acknowledged and deleted under the rollup lock (a compare-and-set the Cluster runs).
    redis, keyspace = gateway.admin.rollup.redis, gateway.proxy.keyspace
    assert await redis.xlen(keyspace.events) == 0

    # Redis back as an older copy of itself (ledger.rewind): the script that zeroes the
    # counters finds them by SCAN on the node that owns the slot, and the rebuild restores them.
    org = keyspace.counter("org", "", "monthly", datetime.now(UTC))
    assert int(await redis.hget(org, "spent")) == 20 * SONNET_COST
    ahead = int(await redis.get(keyspace.rolled_until)) + 1
    assert await rewind_if_behind(redis, keyspace, ahead, datetime.now(UTC))
    assert await redis.hget(org, "spent") is None
    await gateway.admin.rollup.run_once()
    assert int(await redis.hget(org, "spent")) == 20 * SONNET_COST

    # Every key meterd wrote carries the deployment's hash tag, so all of them are on the
    # one node that owns its slot: scripts and transactions never cross slots.
    tag = "{" + gateway.proxy.keyspace.base.strip("{}") + "}"
    keys = {n.port: [k.decode() for k in c.keys("*")]
            for n, c in zip(cluster, clients, strict=True)}
    written = [k for found in keys.values() for k in found]
    assert len(written) > 5
    assert all(k.startswith(tag) for k in written), written
    assert sum(1 for found in keys.values() if found) == 1


async def test_a_failover_to_a_replica_that_lagged_replays_what_it_lost_exactly_once(
        start_own_redis: Callable[..., RedisServer],
        sentinels: Callable[[int], list[Sentinel]],
        start_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    primary = start_own_redis()
    # The replica replicates as its own user, so the test can cut replication at a chosen
    # moment (disable the user, drop its link) while the primary keeps taking writes.
    old = sync_redis.Redis(port=primary.port)
    old.acl_setuser("repl", enabled=True, passwords=["+replpw"], keys=["*"], channels=["*"],
                    commands=["+@all"])
    replica = start_own_redis("--replicaof", "127.0.0.1", str(primary.port),
                              "--masteruser", "repl", "--masterauth", "replpw")
    watchers = sentinels(primary.port)
    ask = sync_redis.Redis(port=watchers[0].port)
    await sentinels_settled(watchers)

    url = sentinel_url(watchers)
    gateway = await start_gateway(redis_url=url, redis_outage_policy="fail_closed")
    key = await gateway.developer()
    journal = gateway.proxy.gate.journal
    assert journal is not None
    for _ in range(3):
        assert await send(gateway, key) == 200
    await gateway.settled(3)
    await gateway.admin.rollup.run_once()
    assert old.wait(1, 5000) == 1  # the replica has all of it

    old.acl_setuser("repl", enabled=False)
    old.execute_command("CLIENT", "KILL", "USER", "repl")
    new = sync_redis.Redis(port=replica.port)
    await wait_for(lambda: _link_down(new), "the replica to lose its link")
    # Four settled and rolled up into DuckDB, two only settled: all six on the primary only.
    for _ in range(4):
        assert await send(gateway, key) == 200
    await gateway.settled(4)
    assert await gateway.admin.rollup.run_once() == 4
    for _ in range(2):
        assert await send(gateway, key) == 200
    await gateway.settled(2)
    counter = gateway.proxy.keyspace.counter("developer", await _dev_id(gateway), "monthly",
                                             datetime.now(UTC))
    assert int(old.hget(counter, "spent") or 0) == 9 * SONNET_COST
    assert int(new.hget(counter, "spent") or 0) == 3 * SONNET_COST  # it lags by six
    assert journal.run_id is not None  # the proxy had seen the old primary's run id

    assert primary.proc is not None
    primary.proc.send_signal(signal.SIGKILL)
    primary.proc.wait()
    primary.proc = None

    async def promoted() -> bool:
        return tuple(ask.sentinel_get_master_addr_by_name(MASTER))[1] == replica.port
    await wait_for(promoted, "the Sentinels to promote the replica")
    await wait_for(_true(lambda: journal.replays == 1), "the journal to replay")
    assert journal.landed == 6  # exactly the six the replica lacked
    for _ in range(2):
        assert await send(gateway, key) == 200
    await gateway.settled(2)

    async def rolled_up() -> bool:
        try:
            await gateway.admin.rollup.run_once()
        except sync_redis.RedisError:
            return False  # the admin's old connections to the dead primary
        return True
    await wait_for(rolled_up, "a rollup on the promoted replica")
    rows: Any = await gateway.admin.db(lambda: gateway.admin.catalog.conn.execute(
        "SELECT count(*), count(DISTINCT id), sum(cost_micros) FROM requests").fetchone())
    assert rows == (11, 11, 11 * SONNET_COST)
    # The counters hold every request once: the four replays DuckDB already had are not
    # taken back, since these counters were never rebuilt from DuckDB.
    assert int(new.hget(counter, "spent") or 0) == 11 * SONNET_COST


async def _link_down(redis: sync_redis.Redis) -> bool:
    return redis.info("replication")["master_link_status"] == "down"


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()
    return wrapped


async def _dev_id(gateway: Gateway) -> str:
    devs = await gateway.admin.db(gateway.admin.catalog.developers)
    return str(devs[0]["id"])
