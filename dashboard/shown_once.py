"""Secrets the dashboard shows once (a new gateway key): held in this process's memory,
not in a cookie or on disk, for the one page after the post/redirect/get, and only to the
session that asked. Taking one removes it, so reloading the page never shows it again,
and the POST that made it is not repeated by a reload either."""

from __future__ import annotations

import secrets
import time
from typing import Any

TTL = 300.0  # seconds a secret waits for its page; after that it is gone unseen
MAX_HELD = 1000  # never more than this many waiting: the oldest go first


class ShownOnce:
    def __init__(self) -> None:
        self._held: dict[str, tuple[float, str, Any]] = {}  # token → (deadline, session, value)

    def put(self, session: str, value: Any, now: float | None = None) -> str:
        """Hold `value` for `session` (its CSRF token); the token names it in the next URL."""
        now = time.monotonic() if now is None else now
        for token in [t for t, (deadline, _, _) in self._held.items() if deadline <= now]:
            del self._held[token]
        while len(self._held) >= MAX_HELD:
            del self._held[next(iter(self._held))]
        token = secrets.token_urlsafe(16)
        self._held[token] = (now + TTL, session, value)
        return token

    def take(self, session: str, token: str, now: float | None = None) -> Any:
        """The value once, to the session that put it; None after that, or when expired."""
        now = time.monotonic() if now is None else now
        held = self._held.get(token)
        if held is None or held[1] != session:
            return None
        del self._held[token]
        return held[2] if held[0] > now else None


# One per dashboard process: the redirect lands on the process that issued the key (the
# admin app runs in one process, the DuckDB writer).
KEYS = ShownOnce()
