"""Device codes of the RFC 8628 device flow, kept in Redis while a developer signs in.

A code lives `EXPIRES_IN` seconds; its record stays `GRACE` seconds longer so a late poll hears
`expired_token` and a second exchange of a used code is told so. The device code itself is
never stored, only its SHA-256, and is single use: the first exchange of an approved code wins.
The user code (what the developer types or confirms in the browser) names a pending code until
someone decides on it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

EXPIRES_IN = 600
INTERVAL = 5
GRACE = 600
# RFC 8628 §6.1: 20 consonants, so no words and no 0/O or 1/I confusion; 8 of them ≈ 34 bits.
ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


@dataclass(frozen=True)
class Poll:
    """What a token request with a device code gets: `outcome` is pending, slow_down, denied,
    expired, used or approved (then `record` holds who approved it)."""

    outcome: str
    record: dict[str, str]


def normalize(user_code: str) -> str | None:
    """`wdjb mjht`, `WDJB-MJHT` → `WDJB-MJHT`; None when it cannot be a user code."""
    letters = [c for c in user_code.upper() if c.isalnum()]
    if len(letters) != 8 or any(c not in ALPHABET for c in letters):
        return None
    return _shown("".join(letters))


def _shown(letters: str) -> str:
    """Eight ALPHABET letters as a user code is shown and stored: `WDJB-MJHT`."""
    return f"{letters[:4]}-{letters[4:]}"


def _digest(device_code: str) -> str:
    return hashlib.sha256(device_code.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DeviceCodes:
    def __init__(self, redis: Any, base: str) -> None:
        self.redis, self.base = redis, base

    def _key(self, digest: str) -> str:
        return f"{self.base}:device:{digest}"

    def _user_key(self, user_code: str) -> str:
        return f"{self.base}:device:user:{user_code}"

    async def create(self, surface: str) -> DeviceCode:
        device_code = secrets.token_urlsafe(32)  # 256 bits
        digest = _digest(device_code)
        while True:
            user_code = _shown("".join(secrets.choice(ALPHABET) for _ in range(8)))
            if await self.redis.set(self._user_key(user_code), digest, ex=EXPIRES_IN, nx=True):
                break
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(digest), mapping={
                "status": "pending", "user_code": user_code, "surface": surface[:64],
                "expires_at": int(time.time()) + EXPIRES_IN})
            pipe.expire(self._key(digest), EXPIRES_IN + GRACE)
            await pipe.execute()
        return DeviceCode(device_code, user_code, EXPIRES_IN, INTERVAL)

    async def pending(self, user_code: str) -> str | None:
        """The code a user code names while it waits for a decision (its digest), else None."""
        digest = await self.redis.get(self._user_key(user_code))
        if digest is None:
            return None
        record = await self.redis.hgetall(self._key(_text(digest)))
        status = _text(record.get(b"status", record.get("status", b"")))
        expires = int(_text(record.get(b"expires_at", record.get("expires_at", b"0"))))
        return _text(digest) if status == "pending" and expires > time.time() else None

    async def decide(self, digest: str, approved: bool, grant: dict[str, str]) -> bool:
        """Approve (with who signed in) or deny a pending code; False when it was decided
        already or is gone. The user code stops naming it either way."""
        key = self._key(digest)
        record = await self.redis.hgetall(key)
        if not record:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "decided", "1")
            pipe.expire(key, EXPIRES_IN + GRACE, nx=True)  # never leave a record without one
            won, _ = await pipe.execute()
        if not won:
            return False
        fields = {"status": "approved" if approved else "denied", **grant}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            user_code = _text(record.get(b"user_code", record.get("user_code")))
            # Not pipe.delete: on a Cluster pipeline that is a coroutine, and queues nothing.
            pipe.execute_command("DEL", self._user_key(user_code))
            await pipe.execute()
        return True

    async def poll(self, device_code: str) -> Poll:
        """A token request's view of its code; an approved code is handed out once."""
        key = self._key(_digest(device_code))
        record = {_text(k): _text(v) for k, v in (await self.redis.hgetall(key)).items()}
        if not record or (int(record.get("expires_at", 0)) <= time.time() and \
                record.get("status") == "pending"):
            return Poll("expired", {})
        status = record.get("status")
        if status == "denied":
            return Poll("denied", {})
        if status == "pending":
            fresh = await self.redis.set(key + ":poll", "1", px=INTERVAL * 1000, nx=True)
            return Poll("pending" if fresh else "slow_down", {})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "used", 1)
            pipe.hdel(key, "idp_refresh")  # the provider's token leaves Redis with its first use
            used, _ = await pipe.execute()
        return Poll("approved", record) if int(used) == 1 else Poll("used", {})

    async def rate(self, kind: str, address: str, limit: int, window: int = 900) -> int:
        """Count a request from an address (RFC 8628 §5.1: guessing user codes, flooding
        codes); 0 to go ahead, else the seconds until the window ends."""
        key = f"{self.base}:device:rate:{kind}:{hashlib.sha256(address.encode()).hexdigest()[:24]}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        return 0 if int(count) <= limit else (int(ttl) if int(ttl) > 0 else window)
