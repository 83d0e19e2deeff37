"""Asking for more: a developer's request for a higher cap, and the decision on it.

Approval is a grant (ledger.grants) on the developer's cap for the requested period: applied
within the policy refresh, shown beside the cap, and ending on its own at its expiry. A decision
is made once: a second approve or deny of the same request is refused.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.catalog import Catalog, NotFound
from ledger.grants import MAX_REASON, create_grant
from ledger.periods import PERIODS

MAX_DAYS = 366
MAX_MICROS = 1_000_000 * 1_000_000  # $1M: a typo, not a request


class IncreaseError(ValueError):
    """The request or decision cannot be made; the message says why."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def check_amount(amount_micros: int) -> int:
    if not 0 < amount_micros <= MAX_MICROS:
        raise IncreaseError("the amount must be more than $0 and at most $1,000,000")
    return amount_micros


def check_days(days: int) -> int:
    if not 1 <= days <= MAX_DAYS:
        raise IncreaseError(f"how long is 1 to {MAX_DAYS} days")
    return days


class Increases:
    """Increase requests on the catalog's DuckDB connection (its lock, its audit)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _get(self, request_id: str) -> dict[str, Any]:
        rows = self.catalog._rows("SELECT * FROM increase_requests WHERE id = ?", [request_id])
        if not rows:
            raise NotFound(f"no increase request {request_id!r}")
        return rows[0]

    def get(self, request_id: str) -> dict[str, Any]:
        return self._get(request_id)

    def ask(self, developer_id: str, period: str, amount_micros: int, days: int, reason: str,
            actor: str) -> dict[str, Any]:
        """File a pending request for `developer_id` (audited as `actor`)."""
        if period not in PERIODS:
            raise IncreaseError(f"period must be one of {', '.join(PERIODS)}")
        check_amount(amount_micros)
        check_days(days)
        if not reason.strip():
            raise IncreaseError("say why you need more")
        cat = self.catalog
        with cat.lock:
            devs = cat._rows("SELECT team_id FROM developers WHERE id = ?", [developer_id])
            if not devs:
                raise IncreaseError("no such developer")
            request_id = f"inc_{secrets.token_hex(5)}"
            cat.conn.execute(
                "INSERT INTO increase_requests (id, developer_id, team_id, period, "
                "amount_micros, days, reason, status, requested_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                [request_id, developer_id, devs[0]["team_id"], period, amount_micros, days,
                 reason.strip(), _now()])
            after = self._get(request_id)
            cat._audit(actor, "increase.request", request_id, None, after)
        return after

    def listing(self, team_id: str | None = None, developer_id: str | None = None,
                limit: int = 200) -> list[dict[str, Any]]:
        """Requests newest first, pending before decided, with the developer's name."""
        where, params = [], []
        if team_id is not None:
            where.append("r.team_id = ?")
            params.append(team_id)
        if developer_id is not None:
            where.append("r.developer_id = ?")
            params.append(developer_id)
        sql = ("SELECT r.*, d.name AS developer_name, d.email AS developer_email, "
               "t.name AS team_name FROM increase_requests r "
               "LEFT JOIN developers d ON d.id = r.developer_id "
               "LEFT JOIN teams t ON t.id = r.team_id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY r.status <> 'pending', r.requested_at DESC LIMIT ?")
        return self.catalog._rows(sql, [*params, limit])

    def _pending(self, request_id: str) -> dict[str, Any]:
        found = self._get(request_id)
        if found["status"] != "pending":
            raise IncreaseError(f"this request was already {found['status']}")
        return found

    def approve(self, request_id: str, amount_micros: int, days: int,
                actor: str = "cli", now: datetime | None = None) -> dict[str, Any]:
        """Grant the developer `amount_micros` more on the request's period cap until `days`
        from now (a grant: it ends on its own)."""
        check_amount(amount_micros)
        check_days(days)
        cat = self.catalog
        at = (now or datetime.now(UTC)).astimezone(UTC)
        with cat.lock:
            before = self._pending(request_id)
            grant = create_grant(cat, "developer", before["developer_id"], amount_micros,
                                 at + timedelta(days=days), actor,
                                 f"increase request {request_id}: {before['reason']}"[:MAX_REASON],
                                 period=before["period"], now=at)
            cat.conn.execute(
                "UPDATE increase_requests SET status = 'approved', decided_by = ?, "
                "decided_at = ?, granted_micros = ?, grant_id = ?, expires_at = ? WHERE id = ?",
                [actor, grant["created_at"], amount_micros, grant["id"], grant["expires_at"],
                 request_id])
            after = self._get(request_id)
            cat._audit(actor, "increase.approve", request_id, before, after)
        return after

    def deny(self, request_id: str, reason: str, actor: str = "cli") -> dict[str, Any]:
        if not reason.strip():
            raise IncreaseError("say why the request is denied")
        cat = self.catalog
        with cat.lock:
            before = self._pending(request_id)
            cat.conn.execute(
                "UPDATE increase_requests SET status = 'denied', decided_by = ?, "
                "decided_at = ?, decision_reason = ? WHERE id = ?",
                [actor, _now(), reason.strip(), request_id])
            after = self._get(request_id)
            cat._audit(actor, "increase.deny", request_id, before, after)
        return after
