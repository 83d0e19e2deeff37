"""Grants: a one-off top-up or temporary raise of a cap (developer, team member, team, org),
added to the cap until it expires.

A grant is kept in the catalog and mirrored into the policy snapshot with its expiry, so a proxy
computes a cap's effective amount (cap + the grants still running) at admission: a grant applies
within the policy refresh and ends on its own at expiry, with no job to take it back.

Callers (the dashboard's forms, the admin API, an approved increase request) create one with
`create_grant(catalog, ...)` and then publish the policy (`AdminState.publish`), as for any
catalog change. Every grant and revocation is audited.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ledger.periods import PERIODS

if TYPE_CHECKING:
    from ledger.catalog import Catalog

SCOPES = ("developer", "team", "team_member", "org")
MAX_REASON = 500


class GrantInvalid(ValueError):
    """The grant cannot be made; the message says why."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as a proxy holds it: µ$ added to a cap until `expires_at` (epoch seconds)."""

    grant_id: str
    amount: int
    expires_at: float


def _naive_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise GrantInvalid("a grant's expiry needs a time zone")
    return when.astimezone(UTC).replace(tzinfo=None)


def create_grant(catalog: Catalog, scope: str, ref: str, amount_micros: int,
                 expires_at: datetime, actor: str, reason: str, *,
                 period: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Raise the caps of one scope by `amount_micros` µ$ until `expires_at` (aware datetime).

    scope: developer, team_member (a team's per-member cap, for every member), team or org;
    ref: the developer's or team's id or name ('' for org). period: daily, weekly or monthly to
    raise only that cap; None raises every cap of the scope. actor: who grants (audited);
    reason: why (shown beside the cap). Returns the stored row; raises GrantInvalid, or the
    catalog's NotFound for an unknown developer or team.
    """
    if scope not in SCOPES:
        raise GrantInvalid(f"grant scope must be one of {', '.join(SCOPES)}")
    if period is not None and period not in PERIODS:
        raise GrantInvalid(f"grant period must be one of {', '.join(PERIODS)} (or none: all)")
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) \
            or amount_micros <= 0:
        raise GrantInvalid("a grant is a positive amount of µ$")
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON or not reason.isprintable():
        raise GrantInvalid(f"say why, in 1 to {MAX_REASON} printable characters")
    created = _naive_utc(now or datetime.now(UTC))
    expires = _naive_utc(expires_at)
    if expires <= created:
        raise GrantInvalid("a grant must expire in the future")
    with catalog.lock:
        scope_id = "" if scope == "org" else (
            catalog.developer_id(ref) if scope == "developer" else catalog.team_id(ref))
        grant_id = f"gra_{secrets.token_hex(5)}"
        catalog.conn.execute(
            "INSERT INTO grants VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            [grant_id, scope, scope_id, period, amount_micros, expires, reason, actor, created])
        row = _rows(catalog, "WHERE id = ?", [grant_id])[0]
        catalog._audit(actor, "grant.create", grant_id, None, row)
    return row


def revoke_grant(catalog: Catalog, grant_id: str, actor: str,
                 now: datetime | None = None) -> dict[str, Any]:
    """End a grant before its expiry (audited)."""
    from ledger.catalog import NotFound

    with catalog.lock:
        found = _rows(catalog, "WHERE id = ?", [grant_id])
        if not found:
            raise NotFound(f"no grant {grant_id!r}")
        catalog.conn.execute("UPDATE grants SET revoked_at = ? WHERE id = ?",
                             [_naive_utc(now or datetime.now(UTC)), grant_id])
        after = _rows(catalog, "WHERE id = ?", [grant_id])[0]
        catalog._audit(actor, "grant.revoke", grant_id, found[0], after)
    return after


def active(catalog: Catalog, now: datetime | None = None) -> list[dict[str, Any]]:
    """The grants running now (not expired, not revoked), soonest expiry first."""
    return _rows(catalog, "WHERE revoked_at IS NULL AND expires_at > ? ORDER BY expires_at",
                 [_naive_utc(now or datetime.now(UTC))])


def _rows(catalog: Catalog, where: str, params: list[Any]) -> list[dict[str, Any]]:
    return catalog._rows(f"SELECT * FROM grants {where}", params)


def mirror(catalog: Catalog, now: datetime | None = None) -> dict[str, bytes]:
    """The policy snapshot's `grants` hash: grant id → scope, period, amount, expiry (epoch s)."""
    return {g["id"]: orjson.dumps({
        "scope": g["scope"], "scope_id": g["scope_id"], "period": g["period"],
        "amount": g["amount_micros"],
        "expires_at": g["expires_at"].replace(tzinfo=UTC).timestamp()})
        for g in active(catalog, now)}


def applying(grants: dict[str, dict[str, Any]], scope: str, scope_id: str,
             period: str) -> tuple[Grant, ...]:
    """The mirrored grants that raise the cap of (scope, scope_id, period)."""
    return tuple(Grant(gid, int(g["amount"]), float(g["expires_at"]))
                 for gid, g in sorted(grants.items())
                 if g["scope"] == scope and g["scope_id"] == scope_id
                 and g.get("period") in (None, period))


def granted(grants: tuple[Grant, ...], now: float) -> int:
    """µ$ the running grants add at `now` (epoch seconds): the effective cap is cap + this."""
    return sum(g.amount for g in grants if g.expires_at > now)


def running(rows: list[dict[str, Any]], scope: str, scope_id: str,
            period: str) -> tuple[int, datetime | None]:
    """Of the `active` grants `rows`: the µ$ they add to the cap of (scope, scope_id, period),
    and when the first of them ends (naive UTC, as stored), to show beside the cap."""
    mine = [g for g in rows if g["scope"] == scope and g["scope_id"] == scope_id
            and g["period"] in (None, period)]
    return sum(int(g["amount_micros"]) for g in mine), min(
        (g["expires_at"] for g in mine), default=None)
