"""Redis connections (a real server or the embedded one) and the hot path's pipelined script client.

The hot path sends two Lua scripts per request (admission, settlement). redis-py spends
75-100 µs of CPU on each command (connection pool, retries, timeouts, observability hooks,
response parsing), more than the rest of the request. So on a real Redis, `register_script`
returns a `FastScript` that runs over one pipelined connection per process
(`ScriptConnection`): the commands of one event-loop turn go out in one write, and replies
resolve their callers in order.
Everything else (policy reloads, reports, rollup) uses the ordinary redis-py client.

Three deployments: one Redis (`redis://`), a primary that Sentinels watch
(`redis+sentinel://HOST:PORT,HOST:PORT/MASTER[/DB]`, redis-py's Sentinel client), and a Cluster
(`redis+cluster://HOST:PORT[,HOST:PORT]`, redis-py's RedisCluster). Every key shares one hash
tag, so on a Cluster everything lives in one slot; the script connection asks Sentinel or the
slot map where that is each time it connects, and reconnects when the node answers that it no
longer is (READONLY after a failover, MOVED after a resharding).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

import fakeredis
import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

EMBEDDED = "embedded://"
SENTINEL = "redis+sentinel://"
CLUSTER = "redis+cluster://"
# Short timeouts: during a real outage a request should meet the outage policy, not hang.
_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
_servers: dict[str, fakeredis.FakeServer] = {}


def connect_redis(url: str) -> Any:
    """An asyncio Redis client. An empty URL (or `embedded://NAME`) gives the embedded backend:
    fakeredis with Lua, shared by everything in this process that names the same server."""
    if not url or url.startswith(EMBEDDED):
        name = url[len(EMBEDDED):] if url else "default"
        server = _servers.setdefault(name, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(server=server, max_connections=64,
                                        connection_pool_class=aioredis.BlockingConnectionPool)
    if url.startswith(SENTINEL):
        return _connect_sentinel(url)
    if url.startswith(CLUSTER):
        auth, hosts, _ = _split(url, CLUSTER)
        return MeterdCluster(startup_nodes=[ClusterNode(host, port) for host, port in hosts],
                             max_connections=64, **auth, **_TIMEOUTS)
    # A bounded pool that makes a burst queue for connections (a plain pool fails the excess
    # with "Too many connections", which would look like an outage).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=2.0, health_check_interval=10, **_TIMEOUTS)
    return MeterdRedis.from_pool(pool)


def check_url(url: str) -> None:
    """Raise ValueError (saying what is missing, never echoing a password) for a malformed
    Sentinel or Cluster URL."""
    if url.startswith(SENTINEL):
        _sentinel_parts(url)
    elif url.startswith(CLUSTER):
        _split(url, CLUSTER)


def _split(url: str, scheme: str) -> tuple[dict[str, Any], list[tuple[str, int]], list[str]]:
    """The credentials, the host:port list and the path segments of a multi-host URL (which
    urllib cannot parse: a netloc has one port)."""
    rest = url[len(scheme):]
    netloc, _, path = rest.partition("/")
    auth: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon:
            auth["password"] = unquote(password)
        if user:
            auth["username"] = unquote(user)
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{scheme} URL needs HOST:PORT[,HOST:PORT...], not {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return auth, hosts, [p for p in path.split("/") if p]


class _SentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (asks the Sentinels where the primary is), bounded like the plain one:
    a burst queues for connections instead of failing."""


def _sentinel_parts(url: str) -> tuple[dict[str, Any], list[tuple[str, int]], list[str]]:
    auth, hosts, path = _split(url, SENTINEL)
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("redis+sentinel:// URL needs /MASTER_NAME[/DB] after the Sentinels")
    return auth, hosts, path


def _connect_sentinel(url: str) -> MeterdRedis:
    auth, hosts, path = _sentinel_parts(url)
    # The Sentinels' own password, if any, is not the data nodes': not supported here.
    sentinel = Sentinel(hosts, sentinel_kwargs=dict(_TIMEOUTS), **_TIMEOUTS)
    client: MeterdRedis = sentinel.master_for(
        path[0], redis_class=MeterdRedis, connection_pool_class=_SentinelPool,
        db=int(path[1]) if len(path) == 2 else 0, max_connections=64, timeout=2.0,
        health_check_interval=10, **auth)
    client.sentinels = sentinel
    return client


def is_embedded(url: str) -> bool:
    return not url or url.startswith(EMBEDDED)


class MeterdRedis(aioredis.Redis):
    """redis-py's client, whose Lua scripts run over a pipelined `ScriptConnection`."""

    _scripts: ScriptConnection | None = None
    sentinels: Sentinel | None = None  # its connections to the Sentinels, closed with it

    def script_connection(self) -> ScriptConnection | None:
        """The connection scripts use, made on first use; None for TLS (redis-py runs them)."""
        if self._scripts is None:
            pool = self.connection_pool
            kw = pool.connection_kwargs
            if isinstance(pool, SentinelConnectionPool) and \
                    pool.connection_class is SentinelManagedConnection:
                address: Address = _sentinel_primary(pool)
            elif pool.connection_class is Connection:
                address = (kw.get("host", "localhost"), int(kw.get("port", 6379)))
            elif pool.connection_class is UnixDomainSocketConnection:
                address = kw["path"]
            else:
                return None
            self._scripts = ScriptConnection(
                address, db=int(kw.get("db") or 0), username=kw.get("username"),
                password=kw.get("password"),
                connect_timeout=kw.get("socket_connect_timeout") or 1.0,
                timeout=kw.get("socket_timeout") or 2.0)
        return self._scripts

    def register_script(self, script: str | bytes) -> Any:  # type: ignore[override]
        scripts = self.script_connection()
        if scripts is None:
            return super().register_script(script)
        return FastScript(scripts, script)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._scripts is not None:
            self._scripts.close()
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def _sentinel_primary(pool: SentinelConnectionPool) -> Resolver:
    async def primary(_: Sequence[Any]) -> tuple[str, int]:
        host, port = await pool.get_master_address()
        return host, int(port)
    return primary


class MeterdCluster(RedisCluster):
    """redis-py's Cluster client, whose Lua scripts run over a pipelined `ScriptConnection` to
    the primary of the slot of the scripts' keys (one slot: the keys share a hash tag)."""

    _scripts: ScriptConnection | None = None
    _stale = False  # a node answered MOVED: read the slot map again before reconnecting

    def script_connection(self) -> ScriptConnection:
        if self._scripts is None:
            kw = self.connection_kwargs
            self._scripts = ScriptConnection(
                self._slot_primary, username=kw.get("username"), password=kw.get("password"),
                connect_timeout=kw.get("socket_connect_timeout") or 1.0,
                timeout=kw.get("socket_timeout") or 2.0)
            self._scripts.on_moved = self._moved
        return self._scripts

    def _moved(self) -> None:
        self._stale = True

    async def _slot_primary(self, command: Sequence[Any]) -> tuple[str, int]:
        """The primary of the slot of the first key of the command about to be sent."""
        if self._initialize:
            await self.initialize()
        elif self._stale:
            self._stale = False
            await self.nodes_manager.initialize()
        key = command[3] if len(command) > 3 and int(command[2]) > 0 else ""
        node = self.nodes_manager.get_node_from_slot(self.keyslot(key))
        return node.host, int(node.port)

    def register_script(self, script: str | bytes) -> Any:  # type: ignore[override]
        return FastScript(self.script_connection(), script)

    async def aclose(self, *args: Any, **kwargs: Any) -> None:
        if self._scripts is not None:
            self._scripts.close()
        await super().aclose(*args, **kwargs)


class FastScript:
    """A Lua script called like redis-py's: `await script(keys=[...], args=[...])`.

    Sent when called, without a task: the call returns the future of the reply. Runs by SHA.
    The connection loads it whenever it connects; a Redis that lost it while connected
    (SCRIPT FLUSH) is sent the source instead, in the same place in the order.
    """

    def __init__(self, connection: ScriptConnection, script: str | bytes) -> None:
        self.connection = connection
        self.script = script.encode() if isinstance(script, str) else script
        self.sha = hashlib.sha1(self.script).hexdigest()
        connection.scripts[self.sha] = self.script

    def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = ()) -> asyncio.Future[Any]:
        return self.connection.submit(["EVALSHA", self.sha, len(keys), *keys, *args],
                                      self.script)


# Encoded arguments seen before. Most arguments of admission and settlement repeat from
# request to request (key names, TTLs, limits, thresholds), and a dict lookup is several times
# cheaper than formatting. Bounded: cleared when full.
_FRAGMENTS: dict[Any, str] = {}
_FRAGMENTS_LIMIT = 16384
_FRAGMENT_MAX = 128  # characters


def encode_command(args: Sequence[Any]) -> bytes:
    """One command in RESP: str, int, bytes and float arguments, as redis-py encodes them."""
    fragments = _FRAGMENTS
    out = [f"*{len(args)}\r\n"]
    for arg in args:
        kind = type(arg)
        if kind is not str and kind is not int:
            return _encode_bytes(args)  # rare: bytes, floats (or bad types, which raise)
        fragment = fragments.get(arg)
        if fragment is None:
            text = arg if kind is str else str(arg)
            if not text.isascii():
                return _encode_bytes(args)
            fragment = f"${len(text)}\r\n{text}\r\n"
            if len(text) <= _FRAGMENT_MAX:  # long ones are unique (an event): not worth it
                if len(fragments) >= _FRAGMENTS_LIMIT:
                    fragments.clear()
                fragments[arg] = fragment
        out.append(fragment)
    return "".join(out).encode()


def _encode_bytes(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _to_bytes(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _to_bytes(arg: Any) -> bytes:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise DataError(f"invalid input of type bool: {arg!r}; convert to a str or int first")
    if isinstance(arg, int | float):
        return repr(arg).encode()
    raise DataError(f"invalid input of type {type(arg).__name__}: {arg!r}")


# A command on its way: the future of its reply, when it was submitted, its arguments, for a
# script called by SHA the script's source (sent instead if Redis answers NOSCRIPT), and its
# bytes on the wire.
_Command = tuple[asyncio.Future[Any], float, Sequence[Any], bytes | None, bytes]
# Where Redis is: a TCP address, a Unix socket path, or (Sentinel, Cluster) asked on each
# connect, given the first command waiting to be sent.
Resolver = Callable[[Sequence[Any]], Awaitable[tuple[str, int]]]
Address = tuple[str, int] | str | Resolver
# Replies that say "not here": the primary moved (a failover demoted this node, a resharding
# moved the slot). The command did not run; the connection is dropped so the next one asks
# where the primary is now.
_NOT_HERE = ("READONLY", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: ScriptConnection) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=ResponseError,  # C, from redis[hiredis]
                                     protocolError=RedisConnectionError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        owner = self.owner
        pending = owner.pending
        try:
            while (value := reader.gets()) is not False:
                future, _, args, source, _ = pending.popleft()
                if future.done():
                    pass
                elif isinstance(value, RedisError):
                    if source is not None and str(value).startswith("NOSCRIPT"):
                        owner.retry(future, ["EVAL", source, *args[2:]])
                    elif str(value).startswith(_NOT_HERE):
                        future.set_exception(owner.moved(value))
                        return
                    else:
                        future.set_exception(value)
                else:
                    future.set_result(value)
                if future is owner.barrier:
                    owner.barrier = None
                    owner.wake()
        except (RedisError, IndexError, ValueError) as exc:  # garbage or unsolicited reply
            owner.abort(RedisConnectionError(f"bad reply from redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.lost(self, exc)


class ScriptConnection:
    """One pipelined RESP2 connection for the hot path's script calls.

    Commands are queued and written once per event-loop turn, so a burst of requests costs one
    system call, and Redis answers in order. Any failure (refused, reset, no answer within
    `timeout`) fails every waiting command with a redis-py `ConnectionError`/`TimeoutError`,
    so callers see the same exceptions as with redis-py; the next command reconnects.

    Redis runs commands in the order they were submitted, connected or not: while the
    connection opens and is set up (AUTH, SELECT, and loading the scripts, which a restarted
    Redis has lost), commands wait in the queue. A settlement must reach Redis before the
    same client's next admission, or that admission finds both reservations.
    """

    on_moved: Callable[[], None] | None = None  # told when a node answers _NOT_HERE

    def __init__(self, address: Address, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 connect_timeout: float = 1.0, timeout: float = 2.0) -> None:
        self.address, self.db = address, db
        self.username, self.password = username, password
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.pending: deque[_Command] = deque()  # written, waiting for replies, in that order
        self._queue: list[_Command] = []  # not written yet (or waiting for the connection)
        self._retries: list[_Command] = []  # calls Redis answered NOSCRIPT, with their source
        self.barrier: asyncio.Future[Any] | None = None  # the queue waits for its reply
        self.scripts: dict[str, bytes] = {}  # SHA: source, loaded on connecting
        self._protocol: _Protocol | None = None  # set up and ready for commands
        self._opening: _Protocol | None = None  # connected, being set up
        self._connecting: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop  # the connection's, set when it opens

    def submit(self, args: Sequence[Any], source: bytes | None = None) -> asyncio.Future[Any]:
        """Queue one command; the future resolves with its reply (or its error). `source`:
        the script an EVALSHA runs, sent instead if Redis no longer has it."""
        payload = encode_command(args)  # raises DataError here, to the caller
        if self._protocol is None and self._connecting is None:
            self._loop = asyncio.get_running_loop()
            self._connecting = self._loop.create_task(self._open())
        loop = self._loop  # not get_running_loop(): on 3.11 that is a getpid() system call
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((future, loop.time(), args, source, payload))
        self.wake()
        return future

    def retry(self, future: asyncio.Future[Any], args: Sequence[Any]) -> None:
        """Write `args` (EVAL and the source) for a script Redis answered NOSCRIPT to.

        It lost every script (SCRIPT FLUSH), so the commands written after this one and not
        answered yet may come back NOSCRIPT too, each then retried in turn. Until the last of
        them is answered, new commands wait: one written now could run before a retry, and
        everything must reach Redis in the order it was submitted.
        """
        if self.barrier is None and self.pending:
            self.barrier = self.pending[-1][0]
        self._retries.append((future, self._loop.time(), args, None, encode_command(args)))
        self.wake()

    def wake(self) -> None:
        """Write what is waiting at the end of this event-loop turn, and watch for a reply."""
        loop = self._loop
        if not self._flush_scheduled and self._protocol is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 2, self._check)

    def _flush(self) -> None:
        self._flush_scheduled = False
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return  # not set up yet: the queue waits for `_open`
        batch, self._retries = self._retries, []
        if self.barrier is None:
            batch += self._queue
            self._queue = []
        if batch:
            self.pending.extend(batch)
            protocol.transport.write(
                batch[0][4] if len(batch) == 1 else b"".join([c[4] for c in batch]))

    def _check(self) -> None:
        """Give up on a Redis that stopped answering: fail everything waiting, reconnect."""
        self._watchdog = None
        oldest = self.pending or self._retries or self._queue
        if not oldest:
            return
        loop = self._loop
        if loop.time() - oldest[0][1] > self.timeout:
            self.abort(RedisTimeoutError("timeout reading from redis"))
        else:
            self._watchdog = loop.call_later(self.timeout / 2, self._check)

    async def _open(self) -> None:
        """Connect, set the connection up ahead of everything queued, then send the queue."""
        loop = self._loop
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    address = self.address
                    if callable(address):
                        waiting = self._retries or self._queue
                        address = await address(waiting[0][2] if waiting else ())
                    if isinstance(address, str):
                        _, protocol = await loop.create_unix_connection(
                            lambda: _Protocol(self), address)
                    else:
                        _, protocol = await loop.create_connection(
                            lambda: _Protocol(self), *address)
            except (OSError, TimeoutError, RedisError) as exc:  # RedisError: no primary known
                self._fail(RedisConnectionError(
                    f"cannot connect to redis at {address}: {exc or 'timed out'}"))
                return
            if protocol.transport is None:  # lost before this task resumed: `lost` ignored it
                self._fail(RedisConnectionError("connection to redis lost while connecting"))
                return
            self._opening = protocol  # until it is set up: `lost` and `abort` see it
            setup: list[list[Any]] = []
            if self.password:
                setup.append(["AUTH", *([self.username] if self.username else []),
                              self.password])
            if self.db:
                setup.append(["SELECT", self.db])
            setup.extend(["SCRIPT", "LOAD", source] for source in self.scripts.values())
            if setup:
                now = loop.time()
                waiting = [(loop.create_future(), now, command, None, encode_command(command))
                           for command in setup]
                self.pending.extend(waiting)  # the first written: the queue waits meanwhile
                protocol.transport.write(b"".join([c[4] for c in waiting]))
                try:
                    await asyncio.gather(*(reply for reply, *_ in waiting))
                except RedisError as exc:
                    if self._opening is protocol:  # refused (a lost connection failed it all)
                        self.abort(RedisConnectionError(
                            f"redis refused the connection setup: {exc}"))
                    return
            if self._opening is not protocol:  # lost or closed meanwhile: the queue failed
                return
            self._opening, self._protocol = None, protocol
            self._flush()
        finally:
            self._connecting = None

    def moved(self, reply: RedisError) -> RedisConnectionError:
        """The node is no longer the primary: fail everything waiting (none of it ran after
        this reply, and order must hold) and reconnect to wherever the primary is now.
        Returns the error for the command that got the reply."""
        if self.on_moved is not None:
            self.on_moved()
        exc = RedisConnectionError(f"redis primary moved: {reply}")
        self.abort(exc)
        return exc

    def abort(self, exc: RedisError) -> None:
        for protocol in (self._protocol, self._opening):
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
        self._protocol = self._opening = None
        self._fail(exc)

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol or protocol is self._opening:
            self._protocol = self._opening = None
            self._fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    def _fail(self, exc: RedisError) -> None:
        failed = [*self.pending, *self._retries, *self._queue]
        self.pending, self._retries, self._queue, self.barrier = deque(), [], [], None
        for future, *_ in failed:
            if not future.done():
                future.set_exception(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        """Drop the connection; anything still waiting fails."""
        if self._connecting is not None:
            self._connecting.cancel()
        self.abort(RedisConnectionError("connection closed"))
