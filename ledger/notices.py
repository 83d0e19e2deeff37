"""Where a developer stands against their caps, told the way Claude Code reads it.

Claude Code signed in to a gateway reads the `anthropic-ratelimit-unified-*` headers
api.anthropic.com sends its subscribers: past a threshold it shows "You've used NN% of your
usage credits · resets …", and once blocked it prints the 429's message. It asks
`GET /api/oauth/usage` for the dollars behind the percent and pairs the two only when their
reset instants agree to the second. Both are built here from one choice of cap (`fullest`), so
they always describe the same cap (gateway protocol, "Usage-limit headers").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from ledger.money import MICROS_PER_CENT
from ledger.periods import local_day, period_end
from ledger.policy import Cap
from ledger.status import BLOCKED, Standing, standing_of

_PREFIX = "anthropic-ratelimit-unified-"
# Budgets a whole group shares: Claude Code then says the team's pool blocked the user, not
# their own cap.
_SHARED = frozenset({"team", "org"})


_ENDS: dict[tuple[str, date], tuple[datetime, str]] = {}


def _reset(period: str, at: datetime) -> tuple[datetime, str]:
    """When a cap of `period` resets, and that instant as the headers give it (Unix seconds).
    Every period ends at the organization's midnight, so the answer holds for its whole day:
    remembered per day, it costs the hot path a lookup instead of a calendar computation."""
    key = (period, local_day(at))
    found = _ENDS.get(key)
    if found is None:
        if len(_ENDS) >= 64:
            _ENDS.clear()
        end = period_end(period, at)
        found = _ENDS[key] = (end, str(int(end.timestamp())))
    return found


def fullest(standings: Sequence[Standing], at: datetime) -> Standing | None:
    """The cap to describe: the most used (as a fraction of its amount), and of those the one
    that resets last (it blocks longest). Blocked caps are all full: of those, the one that
    resets last, however far over the others are (the protocol's rule, as the 429 names)."""
    if len(standings) <= 1:
        return standings[0] if standings else None
    return max(standings, key=lambda s: (min(_share(s), _FULL), _reset(s.cap.period, at)[0]))


def headers(standing: Standing, at: datetime, thresholds: Sequence[int]) -> dict[str, str]:
    """The headers of an answer to a request that was let through."""
    cap = standing.cap
    percent = _percent(standing)
    status = "allowed_warning" if thresholds and percent >= min(thresholds) else "allowed"
    reset = _reset(cap.period, at)[1]
    out = {
        _PREFIX + "status": status,
        _PREFIX + "representative-claim": "overage",
        _PREFIX + "overage-status": status,
        # below 1 while requests are still let through: 1 means blocked to the client
        _PREFIX + "overage-utilization": f"{min(percent, 99) / 100:.2f}",
        _PREFIX + "reset": reset,
        _PREFIX + "overage-reset": reset,
    }
    passed = [t for t in thresholds if percent >= t]
    if passed:
        out[_PREFIX + "overage-surpassed-threshold"] = f"{max(passed) / 100:.2f}"
    if cap.scope in _SHARED:
        out[_PREFIX + "overage-scope"] = "group_pool"
    return out


def blocked_headers(cap: Cap, resets_at: datetime, retry_after: int) -> dict[str, str]:
    """The headers of the 429 that refuses a request past `cap`. No representative-claim and
    no overage-status: with them the client writes its own line and drops the message."""
    reset = str(int(resets_at.timestamp()))
    out = {
        "retry-after": str(retry_after),
        "x-should-retry": "false",
        _PREFIX + "status": "rejected",
        _PREFIX + "reset": reset,
        _PREFIX + "overage-reset": reset,
        _PREFIX + "overage-utilization": "1",
        _PREFIX + "overage-surpassed-threshold": "1",
        _PREFIX + "overage-period": cap.period,
        _PREFIX + "overage-disabled-reason": "org_spend_cap_reached",
    }
    if cap.scope in _SHARED:
        out[_PREFIX + "overage-scope"] = "group_pool"
    return out


# Redis cannot be read and the gateway fails closed: the contract's "fetch_error" shape.
UNREADABLE_HEADERS = {"x-should-retry": "false",
                      _PREFIX + "overage-disabled-reason": "fetch_error"}


def _cents(micros: int) -> int:
    """µ$ as whole cents, half a cent up (what a person reads as the amount)."""
    return (micros + MICROS_PER_CENT // 2) // MICROS_PER_CENT


def _iso(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def usage_document(standings: Sequence[Standing], spend: dict[str, int], at: datetime,
                   thresholds: Sequence[int]) -> dict[str, Any]:
    """The answer of `GET /api/oauth/usage`: the cap the headers describe in `extra_usage` and
    a `limits` row per cap; with no cap, the developer's spend this day, week (from
    Monday) and month of the organization's calendar (`spend`: period → µ$)."""
    shown = fullest(standings, at)
    if shown is None:
        return {"extra_usage": {
            "is_enabled": True, "monthly_limit": None, "used_credits": _cents(spend["monthly"]),
            "utilization": None, "currency": "USD",
            "daily": {"limit": None, "used_credits": _cents(spend["daily"]),
                      "utilization": None},
            "weekly": {"limit": None, "used_credits": _cents(spend["weekly"]),
                       "utilization": None}},
            "limits": []}
    cap = shown.cap
    return {
        "extra_usage": {"is_enabled": True, "monthly_limit": _cents(cap.amount),
                        "used_credits": _cents(shown.used),
                        "utilization": _percent(shown), "currency": "USD"},
        "limits": [{"kind": "spend", "group": s.cap.period, "percent": _percent(s),
                    "resets_at": _iso(period_end(s.cap.period, at)),
                    "severity": _severity(s, thresholds), "is_active": s is shown}
                   for s in standings]}


_FULL = 10**6  # parts per million


def _share(s: Standing) -> int:
    """Parts per million of the cap used (above _FULL once over). A cap admission refuses at
    (status.standing_of: a $0 cap, or one whose spend has reached it) is full, whatever the
    division says, so it reads 100 % and critical, as the 429 it gives says."""
    share = s.used * _FULL // s.cap.amount if s.cap.amount else 0
    return max(share, _FULL) if standing_of(s.used, s.cap.amount) == BLOCKED else share


def _percent(s: Standing) -> int:
    """Whole percent of the cap used (above 100 once over), as /api/oauth/usage gives it."""
    return _share(s) // (_FULL // 100)


def _severity(s: Standing, thresholds: Sequence[int]) -> str:
    """The colour of a cap's meter: warning past the first threshold, critical past the last
    or once over."""
    percent = _percent(s)
    if percent >= 100 or (thresholds and percent >= max(thresholds)):
        return "critical"
    return "warning" if thresholds and percent >= min(thresholds) else "normal"
