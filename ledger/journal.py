"""Every settlement this proxy sent, kept on its own disk until the ledger has rolled it up.

Redis holds usage only until the next rollup; if it loses data in between (restarted without
persistence, flushed, failed over), the settlements are gone from it. So each settlement is
also appended here before it is sent: written to the file at once, fsynced every
`FSYNC_INTERVAL` by `keep` (not per request: that would put a disk flush on the hot path). What
remains at risk is what was appended since the last fsync when the machine itself crashes.

Trimming: after a complete rollup run the rollup publishes the time its reading started
(`rolled_until`): every settlement that reached Redis before it is in DuckDB. An entry is
dropped once it was sent more than `CLOCK_SKEW_MS` before that time (proxy and admin clocks may
differ that much; keep them in NTP).

Loss detection (`watch`): an epoch marker key, written with SET NX by the first process that
finds it missing, and Redis's own run id (INFO server). A missing or changed epoch means Redis
came back empty; a changed run id means another server answers (a restart or a failover, which
may have lost what the old one held, e.g. a replica that lagged). Either way every journalled
entry is replayed through the settlement script, marked as a replay: one that Redis still
remembers as settled is a no-op, one it forgot lands again, and the rollup keeps one copy per
request id.

The mark is the epoch this process last saw when it appended the entry ('' before its first
look); the rollup compares it with the epoch Redis has when it reads the replay (ledger.rollup).
The same epoch: no empty restart or rewind came between, so the counters were never rebuilt from
DuckDB, and a replay that lands adds what this server's counters lacked (a failover to a
replica that lagged). Another epoch: the counters were rebuilt from DuckDB since (ledger.rebuild,
ledger.rewind), and the rollup takes back a replay that DuckDB already held. The comparison is
made when the replay is read, not when it is sent: a replay still running when the epoch
changes (a rewind) is judged by the epoch its settlements landed under.

Each process writes its own file under an exclusive lock; a new process adopts the files of dead
ones (a SIGKILLed proxy's settlements are then kept and replayed like its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("meterd.journal")

Entry = dict[str, Any]
FSYNC_INTERVAL = 0.05  # seconds: the window a machine crash can still lose
CHECK_INTERVAL = 1.0  # seconds between looks at the epoch, run id and watermark
CLOCK_SKEW_MS = 5_000
REPLAY_FIELD = "r"  # a stream field of replayed settlements: the epoch of their line


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{socket.gethostname()}-{os.getpid()}.journal"
        # Unbuffered: each append is in the kernel at once, so a killed process loses nothing.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for life
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.entries: list[tuple[int, bytes]] = []  # (sent at ms, line), oldest first
        self._unsynced = False
        # Ours by name but left by a dead process with our pid (a pid reused after a reboot).
        self.adopted = self._read(self.path.read_bytes())
        self._file.truncate(0)
        self.adopted += self._adopt()
        self.epoch: str | None = None
        self.run_id: bytes | None = None
        self.watermark = 0
        self.replays = 0  # times a loss was detected and the journal replayed
        self.landed = 0  # replayed settlements Redis had lost

    def _adopt(self) -> int:
        """Take over the journals of dead processes (no lock held on them)."""
        count = 0
        for path in sorted(self.directory.glob("*.journal")):
            if path == self.path:
                continue
            with open(path, "rb") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
                count += self._read(other.read())
                path.unlink()  # under the lock: no other process adopts it too
        if self.entries:
            self.entries.sort(key=lambda e: e[0])
            self._file.write(b"".join(line + b"\n" for _, line in self.entries))
            self._sync()
        return count

    def _read(self, data: bytes) -> int:
        count = 0
        for line in data.splitlines():
            try:
                sent = orjson.loads(line)[0]
            except (orjson.JSONDecodeError, ValueError, TypeError, IndexError, KeyError):
                continue  # a line torn by a crash: it was never fsynced
            self.entries.append((int(sent), line))
            count += 1
        return count

    def append(self, entry: Entry) -> None:
        """Record one settlement (the hot path: one write, no fsync; `keep` fsyncs)."""
        sent = int(time.time() * 1000)
        line = orjson.dumps([sent, entry, self.epoch])
        self._file.write(line + b"\n")
        self.entries.append((sent, line))
        self._unsynced = True

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def sync(self) -> None:
        if self._unsynced:
            self._unsynced = False
            self._sync()

    async def trim(self, rolled_until: int) -> int:
        """Drop what the ledger surely has: the rest is written to a new file off the event
        loop (tens of ms for 10,000 entries), then what was appended meanwhile."""
        cut = rolled_until - CLOCK_SKEW_MS
        count = len(self.entries)
        keep = [e for e in self.entries[:count] if e[0] >= cut]
        dropped = count - len(keep)
        if not dropped:
            return 0
        tmp = self.path.with_suffix(".tmp")
        new = await asyncio.get_running_loop().run_in_executor(None, _rewrite, tmp, keep)
        tail = self.entries[count:]  # appended while the rewrite ran
        new.write(b"".join(line + b"\n" for _, line in tail))
        os.replace(tmp, self.path)
        self._file.close()
        self._file = new
        self.entries = keep + tail
        self._unsynced = bool(tail)
        return dropped

    async def replay(self, apply: Callable[[Entry], Awaitable[Any]]) -> int:
        """Send every journalled settlement again, marked as a replay with the epoch it was
        sent under; returns how many Redis had forgotten, and so took again."""
        landed = 0
        for _, line in list(self.entries):
            _, entry, *seen = orjson.loads(line)  # no epoch in lines of an older meterd
            landed += int(await apply(replayed(entry, seen[0] if seen else None)))
        self.landed += landed
        return landed

    async def watch(self, redis: Any, epoch_key: str, watermark_key: str,
                    apply: Callable[[Entry], Awaitable[Any]]) -> bool:
        """One look at Redis: replay if it lost data, trim to the ledger's watermark.
        True when a replay ran."""
        await redis.set(epoch_key, secrets.token_hex(8), nx=True)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(epoch_key)
            pipe.get(watermark_key)
            pipe.info("server")
            found, mark, info = await pipe.execute(raise_on_error=False)
        # The embedded backend has no INFO (and no other server to fail over to).
        run_id = str(info.get("run_id", "")).encode() if isinstance(info, dict) else b""
        if isinstance(found, Exception) or isinstance(mark, Exception):
            raise found if isinstance(found, Exception) else mark
        epoch = found.decode() if isinstance(found, bytes) else str(found)
        lost = (self.epoch is not None and epoch != self.epoch) or (
            self.run_id is not None and run_id != self.run_id)
        first = self.epoch is None
        if lost or (first and self.adopted):
            landed = await self.replay(apply)
            self.replays += 1
            log.warning("redis %s: replayed %d journalled settlements, %d of them lost by it",
                        "lost data or changed server" if lost else "seen after a restart",
                        len(self.entries), landed)
        self.epoch, self.run_id = epoch, run_id
        if mark is not None and not lost:
            self.watermark = max(self.watermark, int(mark))
            await self.trim(self.watermark)
        return lost or (first and self.adopted > 0)

    async def keep(self, redis: Any, epoch_key: str, watermark_key: str,
                   apply: Callable[[Entry], Awaitable[Any]], stopping: asyncio.Event) -> None:
        """Until `stopping`: fsync every FSYNC_INTERVAL, look at Redis every CHECK_INTERVAL."""
        loop = asyncio.get_running_loop()
        last_check = 0.0
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), FSYNC_INTERVAL)
            if self._unsynced:
                self._unsynced = False
                self._file.flush()
                await loop.run_in_executor(None, os.fsync, self._file.fileno())
            if time.monotonic() - last_check >= CHECK_INTERVAL:
                last_check = time.monotonic()
                try:
                    await self.watch(redis, epoch_key, watermark_key, apply)
                except Exception as exc:  # Redis away: the next look retries; keep fsyncing
                    log.debug("journal cannot look at redis: %s", exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sync()
            self._file.close()
        if not self.entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _rewrite(path: Path, entries: list[tuple[int, bytes]]) -> Any:
    """`entries` in a new, fsynced, locked file; returns it open for appending."""
    with open(path, "wb") as out:
        out.write(b"".join(line + b"\n" for _, line in entries))
        out.flush()
        os.fsync(out.fileno())
    new = open(path, "ab", buffering=0)  # noqa: SIM115 - becomes the held file
    fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return new


def replayed(entry: Entry, epoch: str | None) -> Entry:
    """The settlement with its stream event marked as a replay of a line sent under `epoch`
    (the event's field, value pairs end the script's arguments, so one more pair is added)."""
    return {"keys": entry["keys"], "args": [*entry["args"], REPLAY_FIELD, epoch or ""]}
