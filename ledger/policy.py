"""Who may call, and under which caps and limits: the policy every proxy holds in memory.

The catalog (DuckDB) is the source of truth and mirrors the policy into a few Redis hashes plus
a version counter. Each proxy polls the version (one GET every `policy_refresh` seconds, not per
request) and reloads the whole snapshot when it moves, so a revoked key or a new cap reaches every
proxy within a second without a Redis round trip on the hot path.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ledger import caps, grants, tokens
from ledger.keyspace import KeySpace
from ledger.model_caps import Matcher
from ledger.models_allowed import Allowlist

KEY_PREFIX = "mtd_"


def hash_key(secret: str) -> str:
    """Keys are 256-bit random tokens, so one SHA-256 is a safe and fast stored form."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Cap:
    budget_id: str
    scope: str  # developer, team, team_member (the per-member default of a team) or org
    scope_id: str  # of a per-member cap: the member's, whose own spend it is compared with
    scope_name: str
    period: str  # daily, weekly, monthly
    amount: int  # µ$
    mode: str  # estimate or strict
    grants: tuple[grants.Grant, ...] = ()  # what may raise it (ledger/grants.py)
    granted: int = 0  # of a cap as it stands (`at`): the µ$ of `amount` that grants add
    # A per-model cap (ledger/model_caps.py): the models whose spend it caps, and whether a
    # (resolved) model is one of them. () for a cap on all spend.
    models: tuple[str, ...] = ()
    matches: Matcher | None = field(default=None, compare=False)

    def at(self, now: float) -> Cap:
        """The cap as it stands at `now` (epoch seconds): its amount plus the running grants,
        so a grant ends at its expiry without anyone taking it back."""
        extra = grants.granted(self.grants, now)
        return replace(self, amount=self.amount + extra, granted=extra, grants=()) \
            if extra else self

    def next_change(self, now: float) -> float:
        """When a running grant of this cap ends (epoch seconds); inf when none runs."""
        return min((g.expires_at for g in self.grants if g.expires_at > now), default=math.inf)

    @property
    def counter_scope(self) -> tuple[str, str]:
        """The spend counter the cap is compared with (see ledger/caps.py)."""
        return caps.COUNTER_OF[self.scope], self.scope_id

    def describe(self) -> str:
        on = f" on {', '.join(self.models)}" if self.models else ""
        return f"{caps.describe(self.scope, self.scope_name)}{on}, {self.period}"


@dataclass(frozen=True, slots=True)
class Limits:
    scope: str  # developer or team
    scope_id: str
    scope_name: str
    rpm: int = 0  # 0 = no limit
    itpm: int = 0
    otpm: int = 0
    concurrency: int = 0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the key, its developer and team, and what applies to them."""

    key_id: str
    developer_id: str
    developer_name: str
    team_id: str
    team_name: str
    caps: tuple[Cap, ...]
    limits: tuple[Limits, ...]
    models: Allowlist | None = None  # the models the team may call; None: any
    signed_in: bool = False  # a bearer token from /login, not a static key


class KeyRefused(Exception):
    """The credential is unknown, revoked or expired; the message says which, never the key.
    `final`: retrying cannot help (revoked, expired, forged), so clients are told not to."""

    def __init__(self, message: str, final: bool = False,
                 who: tuple[str, str, str] | None = None) -> None:
        super().__init__(message)
        self.final = final
        # (key id, developer id, team id) when the key is known (revoked, expired): the
        # refusal is then a row in that developer's request log.
        self.who = who


@dataclass
class Policy:
    version: int
    keys: dict[str, dict[str, Any]]
    developers: dict[str, dict[str, Any]]
    teams: dict[str, dict[str, Any]]
    budgets: dict[str, dict[str, Any]]
    limits: dict[str, dict[str, Any]]
    # Signed-in developers' bearer tokens: "keys" (kid → public JWK) and "revoked" (sign-in
    # id → when its last access token expires). See ledger/tokens.py.
    tokens: dict[str, Any] = field(default_factory=dict)
    # Managed settings (ledger/managed.py): "org" or a team id → {uuid, checksum, settings}.
    managed: dict[str, Any] = field(default_factory=dict)
    # Models per team (ledger/models_allowed.py): "org" or a team id → the list.
    models: dict[str, list[str]] = field(default_factory=dict)
    # Grants (ledger/grants.py): grant id → scope, scope id, period (None: all), amount, expiry.
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Policy:
        return cls(-1, {}, {}, {}, {}, {})

    def __post_init__(self) -> None:
        self._principals: dict[str, Principal] = {}
        self._bearer_keys = tokens.public_keys(self.tokens.get("keys") or {})
        self._revoked: dict[str, Any] = self.tokens.get("revoked") or {}
        # One Allowlist per list, shared by its principals (and their remembered answers).
        self._allowlists = {scope: Allowlist(models) for scope, models in self.models.items()}
        self._matchers: dict[tuple[str, ...], Matcher] = {}

    def _matcher(self, models: list[str] | None) -> Matcher | None:
        """A per-model cap's matcher, one per model set in the policy; None for other caps."""
        if not models:
            return None
        found = self._matchers.get(tuple(models))
        if found is None:
            found = self._matchers[tuple(models)] = Matcher(tuple(models))
        return found

    def principal(self, secret: str, now: float | None = None) -> Principal:
        """Resolve a presented key or signed-in bearer token, or raise KeyRefused."""
        if self.version < 0:
            # No snapshot yet (Redis unreachable, or nothing published, since this proxy
            # started): every credential is unknown here, and none of them is wrong. Retryable.
            raise KeyRefused("this proxy has not loaded its keys yet; retry in a moment")
        if secret.startswith(tokens.TOKEN_PREFIX):
            return self.bearer(secret, now)
        digest = hash_key(secret)
        key = self.keys.get(digest)
        if key is None:
            # Final: a key's secret is shown only once its publish is under way, and nobody
            # puts it to use faster than a proxy reads the policy; one unknown here is
            # mistyped or from elsewhere, and Claude Code retrying it for minutes would only
            # hide that.
            raise KeyRefused("invalid gateway key", final=True)
        expires = key.get("expires_at") or 0
        expired = bool(expires) and (time.time() if now is None else now) >= expires
        if key.get("revoked") or expired:
            dev_id = key.get("developer_id") or ""
            who = (key.get("id") or "", dev_id,
                   self.developers.get(dev_id, {}).get("team_id") or "")
            raise KeyRefused("gateway key has been revoked" if key.get("revoked")
                             else "gateway key has expired", final=True, who=who)
        found = self._principals.get(digest)
        if found is None:
            found = self._principals[digest] = self._build(key)
        return found

    def managed_settings(self, team_id: str) -> dict[str, Any] | None:
        """The managed settings a team's developers get: its own, else the organization's."""
        return self.managed.get(team_id) or self.managed.get("org")

    def bearer(self, token: str, now: float | None = None) -> Principal:
        """Resolve a bearer token issued at sign-in: signature (once per token), then expiry,
        revocation and the developer, every time."""
        try:
            claims = tokens.verify(token, self._bearer_keys)
        except tokens.BearerRefused as exc:
            raise KeyRefused(str(exc), final=True) from None
        if (time.time() if now is None else now) >= claims.exp:
            raise KeyRefused("bearer token has expired: sign in again with /login", final=True)
        if claims.sid in self._revoked:
            raise KeyRefused("bearer token has been revoked: sign in again with /login",
                             final=True)
        found = self._principals.get(claims.sid)
        if found is None:
            if claims.sub not in self.developers:
                # Signed by this gateway, so issued to a developer it provisioned: one signed
                # in a moment ago reaches this proxy with its next policy refresh. Retryable,
                # or Claude Code would ask to sign in again right after signing in.
                raise KeyRefused("this proxy has not yet heard of the signed-in developer; "
                                 "retry in a moment", final=False)
            found = self._principals[claims.sid] = self._build(
                {"id": claims.sid, "developer_id": claims.sub}, signed_in=True)
        return found

    def _build(self, key: dict[str, Any], signed_in: bool = False) -> Principal:
        dev_id = key["developer_id"]
        dev = self.developers.get(dev_id)
        if dev is None or dev.get("disabled"):
            # An offboarded developer's attempt is a row of their request log; a removed
            # one has no page to show it on.
            raise KeyRefused("credential belongs to a disabled or removed developer",
                             final=True,
                             who=None if dev is None else (key["id"], dev_id,
                                                           dev.get("team_id") or ""))
        team_id = dev.get("team_id") or ""
        team_name = self.teams.get(team_id, {}).get("name", "")
        names = {"developer": dev["name"], "team": team_name, "team_member": team_name, "org": ""}
        applying = tuple(
            Cap(bid, b["scope"], caps.counter(b["scope"], b.get("scope_id", ""), dev_id)[1],
                names[b["scope"]], b["period"], int(b["amount"]), b.get("mode", "estimate"),
                grants.applying(self.grants, b["scope"], b.get("scope_id", ""), b["period"]),
                models=tuple(b.get("models") or ()), matches=self._matcher(b.get("models")))
            for bid, b in sorted(self.budgets.items())
            if caps.applies(b["scope"], b.get("scope_id", ""), dev_id, team_id)
        )
        limits = tuple(
            Limits(scope, scope_id, names[scope], **{k: int(v or 0) for k, v in lim.items()})
            for scope, scope_id in (("developer", dev_id), ("team", team_id))
            if (lim := self.limits.get(f"{scope}:{scope_id}"))
        )
        models = self._allowlists.get(team_id) or self._allowlists.get("org")
        return Principal(key["id"], dev_id, dev["name"], team_id, team_name, applying, limits,
                         models, signed_in)


async def load_policy(redis: Any, keyspace: KeySpace, known_version: int) -> Policy | None:
    """The current policy from Redis, or None when its version has not moved."""
    raw = await redis.get(keyspace.policy_version)
    if raw is None or int(raw) == known_version:
        # No version at all: Redis lost the mirror; keep serving the last snapshot until the
        # admin process publishes it again.
        return None
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(keyspace.policy_version)
        for key in keyspace.policy_hashes.values():
            pipe.hgetall(key)
        version_raw, *hashes = await pipe.execute()
    decoded = [{_text(k): orjson.loads(v) for k, v in h.items()} for h in hashes]
    return Policy(int(version_raw or 0), *decoded)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
