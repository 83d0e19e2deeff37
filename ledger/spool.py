"""A local append-only file for settlements that could not reach Redis.

Each proxy process appends to its own file and holds an exclusive lock on it while alive, so a
replay (its own, or another process's after a crash) never races a writer. Settlement is
idempotent per request id, so a replay interrupted half way is simply run again.

A line that is not a settlement (the half-written last line of a process that crashed while
appending, or a damaged file) is moved to REJECTED with an error in the log, and the rest is
replayed: one bad line must not hold back every settlement behind it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

Entry = dict[str, Any]
REJECTED = "rejected.txt"  # in the spool directory; not *.jsonl, so never replayed

log = logging.getLogger("meterd.spool")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the process's life
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        spooled = self.path.read_bytes()  # left by an earlier process with our name, if any
        self.depth = len(spooled.splitlines())
        if spooled and not spooled.endswith(b"\n"):
            # An earlier process with our name (a reused pid) died mid-line: start a new one,
            # or the next settlement would be glued to the torn line and lost with it.
            self._file.write(b"\n")

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
                for entry in self._entries(path, other.read().splitlines()):
                    await apply(entry)
                    done += 1
                path.unlink()
        return done

    async def _replay_own(self, apply: Callable[[Entry], Awaitable[Any]]) -> int:
        if self.depth == 0:
            return 0
        with open(self.path, "rb") as own:
            lines = own.read().splitlines()
        entries = self._entries(self.path, lines)
        for entry in entries:
            await apply(entry)
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
        return len(entries)

    def _entries(self, path: Path, lines: list[bytes]) -> list[Entry]:
        """The settlements in `lines`; any other non-empty line goes to REJECTED."""
        entries, rejected = [], []
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = None
            if isinstance(entry, dict) and "keys" in entry and "args" in entry:
                entries.append(entry)
            elif line.strip():
                rejected.append(line)
        if rejected:
            with open(self.directory / REJECTED, "ab") as out:
                out.write(b"".join(line + b"\n" for line in rejected))
                out.flush()
                os.fsync(out.fileno())
            log.error("spool %s: %d line(s) are not settlements (a write cut short by a crash, "
                      "or a damaged file); moved to %s, the rest replayed",
                      path.name, len(rejected), self.directory / REJECTED)
        return entries

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        if self.depth == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
