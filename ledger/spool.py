"""A local append-only file for settlements that could not reach Redis.

Each proxy process appends to its own file and holds an exclusive lock on it while alive, so a
replay (its own, or another process's after a crash) never races a writer. Settlement is
idempotent per request id, so a replay interrupted half way is simply run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

Entry = dict[str, Any]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the process's life
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.depth = self._count(self.path)

    def append(self, entry: Entry) -> None:
        """Durably record one settlement (fsync: this is the only copy until Redis returns)."""
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.depth += 1

    async def replay(self, apply: Callable[[Entry], Awaitable[Any]]) -> int:
        """Apply every spooled entry (ours and those of dead processes); return how many.

        Stops at the first failure, leaving the rest for the next attempt.
        """
        done = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.path:
                done += await self._replay_own(apply)
                continue
            with open(path, "rb") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it and will replay it itself
                for line in other.read().splitlines():
                    await apply(orjson.loads(line))
                    done += 1
                path.unlink()
        return done

    async def _replay_own(self, apply: Callable[[Entry], Awaitable[Any]]) -> int:
        if self.depth == 0:
            return 0
        with open(self.path, "rb") as own:
            lines = own.read().splitlines()
        for line in lines:
            await apply(orjson.loads(line))
        # Settlements that failed again while we awaited `apply` were appended after `lines`.
        with open(self.path, "rb") as own:
            rest = own.read().splitlines()[len(lines):]
        self._file.truncate(0)
        self._file.seek(0)
        for line in rest:
            self._file.write(line + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.depth = len(rest)
        return len(lines)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        if self.depth == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    @staticmethod
    def _count(path: Path) -> int:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
