"""Budget periods on UTC boundaries: days, weeks starting Monday, calendar months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

PERIODS = ("daily", "weekly", "monthly")
_TAG = {"daily": "d", "weekly": "w", "monthly": "m"}
# Counters outlive their period so the dashboard and a counter rebuild can still read them.
COUNTER_TTL = {"daily": 8 * 86400, "weekly": 36 * 86400, "monthly": 93 * 86400}


def period_start(period: str, now: datetime) -> datetime:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}; expected one of {', '.join(PERIODS)}")


def period_end(period: str, now: datetime) -> datetime:
    """The first instant of the next period: when a cap of this period resets."""
    start = period_start(period, now)
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def period_tag(period: str, now: datetime) -> str:
    """Short stable name of the period holding `now`, used in counter keys: d:2026-11-28."""
    return f"{_TAG[period]}:{period_start(period, now):%Y-%m-%d}"
