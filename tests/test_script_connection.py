"""The pipelined script connection the hot path uses on a real Redis (ledger/redis_client.py).

It replaces redis-py only for EVALSHA, so it must behave like redis-py where the gate can tell:
same encoding of arguments, same replies, same exceptions on refusal, reset and silence, and
recovery on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger.gate import Estimate, Gate
from ledger.keyspace import KeySpace
from ledger.policy import Cap, Limits, Principal
from ledger.redis_client import (
    FastScript,
    MeterdRedis,
    ScriptConnection,
    _Protocol,
    connect_redis,
    encode_command,
)
from ledger.spool import Spool
from meterd.settings import Settings, SettingsError
from tests.conftest import RedisServer, free_port
from tests.settlements import settlement

ECHO = "return {#KEYS, ARGV[1], tonumber(ARGV[2]) + 1, {'nested', 7}}"


@pytest.fixture
async def client(own_redis: RedisServer) -> AsyncIterator[Any]:
    redis = connect_redis(own_redis.url)
    yield redis
    await redis.aclose()


@contextlib.asynccontextmanager
async def relay(redis_port: int, answer: Callable[[int, bytes, asyncio.StreamWriter],
                                                  Awaitable[None]]) -> AsyncIterator[int]:
    """A TCP relay in front of Redis, at the port it yields. Redis's answers on connection
    number n (from 1) reach the client through `answer(n, data, client)`."""
    relays: list[tuple[asyncio.Task[Any] | None, asyncio.StreamWriter]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(relays) + 1
        relays.append((asyncio.current_task(), writer))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", redis_port)

        async def requests() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    up_writer.write(data)
            up_writer.close()

        async def answers() -> None:
            with contextlib.suppress(OSError):
                while data := await up_reader.read(65536):
                    await answer(number, data, writer)
            writer.close()

        await asyncio.gather(requests(), answers())

    server = await asyncio.start_server(serve, "127.0.0.1", free_port())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for _, writer in relays:
            writer.close()
        await asyncio.wait([task for task, _ in relays if task is not None], timeout=3)


_args = st.lists(st.one_of(
    st.text(max_size=20), st.integers(-(2**70), 2**70), st.binary(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False)), max_size=12)


@given(_args)
def test_commands_are_encoded_exactly_as_redis_py_encodes_them(args: list[Any]) -> None:
    assert encode_command(["EVALSHA", *args]) == b"".join(
        Connection().pack_command("EVALSHA", *args))


def test_replies_split_anywhere_resolve_their_commands_in_order() -> None:
    class Owner:
        pending: deque[Any]
        retried: list[tuple[asyncio.Future[Any], list[Any]]]
        barrier = None

        def retry(self, future: asyncio.Future[Any], args: list[Any]) -> None:
            self.retried.append((future, args))

    loop = asyncio.new_event_loop()
    try:
        wire = (b"*4\r\n:2\r\n$5\r\nhello\r\n:42\r\n*2\r\n$6\r\nnested\r\n:7\r\n"
                b"$-1\r\n+OK\r\n-NOSCRIPT No matching script.\r\n"
                b"-NOSCRIPT No matching script.\r\n-ERR wrong\r\n:-3\r\n")
        by_sha = ["EVALSHA", "f00", 1, "k", 5]
        sent = [([], None), ([], None), ([], None), (by_sha, b"return 1"), (by_sha, None),
                ([], None), ([], None)]
        for size in (1, 2, 3, 7, len(wire)):
            owner = Owner()
            owner.pending = deque((loop.create_future(), 0.0, command, source, b"")
                                  for command, source in sent)
            owner.retried = []
            futures = [f for f, *_ in owner.pending]
            protocol = _Protocol(owner)  # type: ignore[arg-type]
            for i in range(0, len(wire), size):
                protocol.data_received(wire[i:i + size])
            assert [f.result() for f in futures[:3]] == [
                [2, b"hello", 42, [b"nested", 7]], None, b"OK"]
            # A script called by SHA is sent again with its source; anything else fails.
            assert owner.retried == [(futures[3], ["EVAL", b"return 1", 1, "k", 5])]
            assert not futures[3].done()
            assert type(futures[4].exception()) is ResponseError
            assert "NOSCRIPT" in str(futures[4].exception())
            assert type(futures[5].exception()) is ResponseError
            assert futures[6].result() == -3
            assert not owner.pending and protocol.reader.gets() is False
    finally:
        loop.close()


async def test_scripts_run_pipelined_with_the_replies_redis_py_gives(client: Any) -> None:
    script = client.register_script(ECHO)
    assert isinstance(script, FastScript)
    results = await asyncio.gather(*(script(keys=["a", "b"], args=[f"r{i}", i])
                                     for i in range(200)))
    assert results == [[2, f"r{i}".encode(), i + 1, [b"nested", 7]] for i in range(200)]
    plain = await client.evalsha(script.sha, 2, "a", "b", "r0", 0)
    assert plain == results[0]


async def test_a_redis_that_lost_its_scripts_gets_them_again(client: Any) -> None:
    script = client.register_script(ECHO)
    assert (await script(keys=["k"], args=["x", 1]))[0] == 1
    await client.script_flush()
    assert (await script(keys=["k"], args=["x", 1]))[0] == 1
    assert await client.script_exists(script.sha) == [True]


async def test_commands_sent_while_the_connection_is_set_up_keep_their_order(
        own_redis: RedisServer) -> None:
    """Connecting loads the scripts first (a round trip). Commands submitted meanwhile (a
    settlement, then the same client's next admission) still reach Redis in their order."""
    client = connect_redis(own_redis.url)
    push = client.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
    replies = [push(["order"], [0])]  # this one connects
    while not replies[0].done():
        replies.append(push(["order"], [len(replies)]))
        await asyncio.sleep(0)
    await asyncio.gather(*replies)
    assert len(replies) > 3  # the set-up took several loop turns
    assert await client.lrange("order", 0, -1) == [b"%d" % i for i in range(len(replies))]
    await client.aclose()


async def test_scripts_redis_lost_while_connected_still_run_in_the_order_sent(
        client: Any) -> None:
    """After SCRIPT FLUSH, Redis answers every call by SHA with NOSCRIPT. Each is sent again
    with its source in its place, ahead of anything submitted after that answer came."""
    first = client.register_script("return redis.call('RPUSH', KEYS[1], 'a' .. ARGV[1])")
    second = client.register_script("return redis.call('RPUSH', KEYS[1], 'b' .. ARGV[1])")
    await first(keys=["warm"], args=[0])  # connected, both scripts loaded
    await client.script_flush()
    replies = []
    for batch in range(5):  # the NOSCRIPT answers of one batch arrive before the next is sent
        replies += [script(["order"], [f"{batch}.{i}"])
                    for i in range(4) for script in (first, second)]
        await asyncio.sleep(0.01)
    await asyncio.gather(*replies)
    assert await client.lrange("order", 0, -1) == [
        f"{name}{batch}.{i}".encode() for batch in range(5) for i in range(4) for name in "ab"]


async def test_scripts_redis_lost_run_in_order_when_its_answers_come_one_at_a_time(
        own_redis: RedisServer) -> None:
    """The NOSCRIPT answers of a burst arrive in separate reads, and commands are submitted
    in between. Those wait until the burst's retries are written (ScriptConnection.retry)."""
    async def trickle(_: int, data: bytes, client: asyncio.StreamWriter) -> None:
        for i in range(0, len(data), 16):
            client.write(data[i:i + 16])
            await asyncio.sleep(0.002)

    async with relay(own_redis.port, trickle) as port:
        client = MeterdRedis.from_url(f"redis://127.0.0.1:{port}/0")
        direct = connect_redis(own_redis.url)
        push = client.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
        await push(["warm"], [0])  # connected, the script loaded
        await direct.script_flush()
        replies = [push(["order"], [i]) for i in range(10)]  # one burst
        while not replies[9].done():
            replies.append(push(["order"], [len(replies)]))
            await asyncio.sleep(0.001)
        await asyncio.gather(*replies)
        assert len(replies) > 20  # many submitted while the burst's answers trickled in
        assert await direct.lrange("order", 0, -1) == [b"%d" % i for i in range(len(replies))]
        await client.aclose()
        await direct.aclose()


async def test_a_settlement_lands_before_the_next_admission_after_redis_lost_its_scripts(
        own_redis: RedisServer, client: Any, tmp_path: Any) -> None:
    """The gate's view of the order above: a settlement sent before the same developer's next
    admission releases its reservation first, or a cap with room for one request refuses."""
    keyspace = KeySpace("t")
    spool = Spool(tmp_path / "spool")
    gate = Gate(client, keyspace, spool)
    await client.set(keyspace.ready, 1)
    ada = Principal("k1", "d1", "Ada", "t1", "platform",
                    (Cap("b1", "developer", "d1", "Ada", "monthly", 1500, "estimate"),), ())
    estimate = Estimate(100, 50, 1000, 5000)  # reserves 1,000 of the 1,500
    first = await gate.admit(ada, "r1", estimate)
    await client.script_flush()
    gate.settle_soon(first, settlement(first, 100))
    second = await gate.admit(ada, "r2", estimate)  # 100 spent + 1,000 held: room
    gate.settle_soon(second, settlement(second, 100))
    await gate.drain()
    assert await client.xlen(keyspace.events) == 2 and spool.depth == 0
    spool.close()


async def test_a_connection_lost_before_it_is_set_up_fails_its_commands_at_once(
        own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis can close a new connection before the task that made it resumes. Its commands
    fail then, not when the watchdog gives up on them (2 s), and the next call reconnects."""
    loop = asyncio.get_running_loop()
    connect = loop.create_connection

    async def cut(*args: Any, **kwargs: Any) -> Any:
        transport, protocol = await connect(*args, **kwargs)
        transport.abort()
        await asyncio.sleep(0)  # connection_lost has run
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", cut)
    client = connect_redis(own_redis.url)
    script = client.register_script("return 1")
    with pytest.raises(RedisConnectionError, match="lost while connecting"):
        await asyncio.wait_for(script(), 1.0)
    monkeypatch.undo()
    assert await script() == 1
    await client.aclose()


async def test_script_errors_are_response_errors(client: Any) -> None:
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    await client.set("text", "not a number")
    with pytest.raises(ResponseError):
        await script(keys=["text"])
    assert await script(keys=["n"]) == 1  # the connection carries on


async def test_a_stopped_redis_fails_calls_fast_and_a_restarted_one_serves_again(
        own_redis: RedisServer, client: Any) -> None:
    script = client.register_script(ECHO)
    assert (await script(keys=["k"], args=["x", 1]))[0] == 1
    own_redis.stop()
    for _ in range(3):
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(script(keys=["k"], args=["x", 1]), 3)
    own_redis.start()  # with no scripts: reconnecting loads them before any call by SHA
    assert (await script(keys=["k"], args=["x", 1]))[0] == 1
    with contextlib.suppress(RedisConnectionError):  # redis-py's pooled connection was cut
        await client.ping()
    assert "errorstat_NOSCRIPT" not in await client.info("errorstats")


async def test_a_silent_redis_times_out_every_waiting_call() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1 << 20)  # and never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    connection = ScriptConnection(("127.0.0.1", port), timeout=0.3)
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(connection.submit(["PING"]) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, RedisTimeoutError) for r in results)
    assert asyncio.get_running_loop().time() - started < 1.5
    connection.close()
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_the_connection_selects_the_database_and_authenticates(
        start_own_redis: Callable[..., RedisServer]) -> None:
    port = start_own_redis("--requirepass", "s3cret").port
    redis = connect_redis(f"redis://:s3cret@127.0.0.1:{port}/3")
    script = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    await script(keys=["where"], args=["db3"])
    assert await redis.get("where") == b"db3"
    await redis.aclose()
    wrong = connect_redis(f"redis://:nope@127.0.0.1:{port}/3")
    with pytest.raises(RedisConnectionError):
        await wrong.register_script("return 1")()
    await wrong.aclose()


async def test_the_embedded_backend_keeps_redis_py_scripts() -> None:
    redis = connect_redis("embedded://scripts")
    assert not isinstance(redis, MeterdRedis)
    script = redis.register_script(ECHO)
    assert not isinstance(script, FastScript)
    assert (await script(keys=["k"], args=["x", 1]))[2] == 2
    await redis.aclose()


async def test_an_admission_answered_too_late_keeps_nothing_reserved(
        own_redis: RedisServer, tmp_path: Any) -> None:
    """Redis runs the admission but its answer comes after the timeout (a stalled network):
    the request goes on unmetered (fail_open), and its hold and slot are released."""
    late: set[int] = set()  # connections (numbered from 1) whose answers are held back 1 s

    async def answer(number: int, data: bytes, client: asyncio.StreamWriter) -> None:
        if number in late:
            await asyncio.sleep(1.0)
        client.write(data)

    keyspace, spool = KeySpace("t"), Spool(tmp_path / "spool")
    ada = Principal("k1", "d1", "Ada", "t1", "platform",
                    (Cap("b1", "developer", "d1", "Ada", "monthly", 10**9, "estimate"),),
                    (Limits("developer", "d1", "Ada", concurrency=1),))
    estimate = Estimate(100, 50, 1000, 5000)
    async with relay(own_redis.port, answer) as port:
        slow = MeterdRedis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        direct = connect_redis(own_redis.url)
        await direct.set(keyspace.ready, 1)
        gate = Gate(slow, keyspace, spool)
        try:
            warm = await gate.admit(ada, "warm", estimate)
            await gate.settle(warm, settlement(warm, 0))
            late.add(1)  # the script connection, open now with its scripts loaded
            ticket = await gate.admit(ada, "r1", estimate)
            assert not ticket.admitted  # timed out: served unmetered, settled later
            await asyncio.wait_for(gate.drain(), 5)  # the release, on a new connection
            counter = keyspace.counter("developer", "d1", "monthly", ticket.at)
            assert await direct.hget(counter, "held") == b"0"  # Redis had reserved, released
            assert await direct.zcard(keyspace.in_flight("developer", "d1")) == 0
        finally:
            await slow.aclose()
            await direct.aclose()
            spool.close()


async def test_settlements_sent_without_a_task_land_or_spool(
        own_redis: RedisServer, client: Any, tmp_path: Any) -> None:
    """The proxy's settlement path (Gate.settle_soon): recorded even when Redis lost its
    scripts, spooled when Redis is gone, and never both."""
    keyspace = KeySpace("t")
    spool = Spool(tmp_path / "spool")
    gate = Gate(client, keyspace, spool)
    await client.set(keyspace.ready, 1)
    ada = Principal("k1", "d1", "Ada", "t1", "platform",
                    (Cap("b1", "developer", "d1", "Ada", "monthly", 10**9, "estimate"),), ())
    estimate = Estimate(100, 50, 1000, 5000)
    first = await gate.admit(ada, "r1", estimate)
    await client.script_flush()
    gate.settle_soon(first, settlement(first, 700))
    await gate.drain()
    assert await client.xlen(keyspace.events) == 1 and spool.depth == 0
    second = await gate.admit(ada, "r2", estimate)
    own_redis.stop()
    gate.settle_soon(second, settlement(second, 700))
    await asyncio.wait_for(gate.drain(), 5)
    assert spool.depth == 1
    own_redis.start()  # empty: this server keeps nothing across restarts
    assert await gate.replay_spool() == 1
    assert spool.depth == 0
    with contextlib.suppress(RedisConnectionError):  # redis-py's pooled connection was cut
        await client.ping()
    assert [e for _, e in await client.xrange(keyspace.events)] == [
        {b"e": settlement(second, 700).packed().encode()}]
    spool.close()


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel://127.0.0.1:26379", "needs /MASTER_NAME"),
    ("redis+sentinel://sentinel-a/meterd", "HOST:PORT"),
    ("redis+cluster://10.0.0.1:7000,10.0.0.2", "HOST:PORT"),
])
def test_a_malformed_sentinel_or_cluster_url_is_refused_with_what_it_needs(
        url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect_redis(url)
    with pytest.raises(SettingsError, match=f"setting redis_url: .*{message}"):
        Settings(redis_url=url).replace()


async def test_a_demoted_primary_is_left_and_the_primary_asked_for_again(
        start_own_redis: Callable[..., RedisServer]) -> None:
    """A node that answers READONLY (a primary a failover demoted) is no longer written to:
    the command fails like a lost connection, and the next connect resolves the primary anew."""
    primary = start_own_redis()
    replica = start_own_redis("--replicaof", "127.0.0.1", str(primary.port))
    answers = [("127.0.0.1", replica.port), ("127.0.0.1", primary.port)]
    asked: list[Sequence[Any]] = []

    async def resolve(command: Sequence[Any]) -> tuple[str, int]:
        asked.append(command)
        return answers[min(len(asked), 2) - 1]

    connection = ScriptConnection(resolve)
    script = FastScript(connection, "return redis.call('INCR', KEYS[1])")
    try:
        with pytest.raises(RedisConnectionError, match="primary moved: READONLY"):
            await script(keys=["{t}:n"])
        assert await script(keys=["{t}:n"]) == 1  # on the primary now
        assert [c[3] for c in asked] == ["{t}:n", "{t}:n"]  # resolved with the command's key
    finally:
        connection.close()
