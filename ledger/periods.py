"""Budget periods: days, weeks starting Monday and calendar months, on the organization's
local calendar (the `timezone` setting; UTC unless set), DST-correct: a day is 23 or 25 hours
long on the days the clocks change.

The zone is set once per process at start (`set_zone`), before any counter is named, so every
proxy, the admin process and the rollup name the same counters and reset them at the same
instant. Period starts and ends are returned as UTC instants.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("daily", "weekly", "monthly")
_TAG = {"daily": "d", "weekly": "w", "monthly": "m"}
# Counters outlive their period so the dashboard and a counter rebuild can still read them.
COUNTER_TTL = {"daily": 8 * 86400, "weekly": 36 * 86400, "monthly": 93 * 86400}

_zone: tzinfo = UTC


def check_zone(name: str) -> tzinfo:
    """The IANA zone `name` (e.g. America/New_York; '' or UTC: UTC), or ValueError naming it."""
    try:
        return UTC if name in ("", "UTC") else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name such as "
                         "America/New_York or UTC") from None


def set_zone(name: str) -> None:
    """Use the zone `name` for every period from now on (see check_zone)."""
    global _zone
    _zone = check_zone(name)


def zone() -> tzinfo:
    """The organization's time zone (UTC unless set)."""
    return _zone


def zone_name() -> str:
    """The zone's IANA name (America/New_York), or UTC."""
    return getattr(_zone, "key", "UTC")


def day_sql(column: str = "ts") -> str:
    """SQL for the organization's day of `column`, a naive UTC timestamp as `requests.ts`
    holds: the one rule by which the rollups file a request under a day. In UTC a plain
    cast, so a UTC organization's days are exactly what they always were."""
    if _zone is UTC:
        return f"{column}::DATE"
    name = zone_name().replace("'", "''")  # an IANA name has no quote; belt and braces
    return f"(({column} AT TIME ZONE 'UTC') AT TIME ZONE '{name}')::DATE"


def local_time(when: datetime) -> datetime:
    """`when` (naive: UTC, as stored) on the organization's clock, aware."""
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(_zone)


def clock(when: datetime, with_seconds: bool = False) -> str:
    """`when` (naive: UTC) on the organization's clock with the zone's abbreviation at that
    moment, so a time says which clock it is on: '2026-03-07 23:30 EST', a day later
    '2026-03-08 23:30 EDT' (UTC: '… UTC'). How every message and page writes a time."""
    at = local_time(when)
    return f"{at:%Y-%m-%d %H:%M{':%S' if with_seconds else ''}} {at.tzname()}"


def local_day(now: datetime) -> date:
    """The organization's calendar day holding `now` (naive times are UTC)."""
    return local_time(now).date()


def as_utc(when: datetime) -> datetime:
    """`when` as an aware UTC instant; a naive `when` is the organization's wall-clock time
    (what a person types in a date or date-time box)."""
    return (when if when.tzinfo else when.replace(tzinfo=_zone)).astimezone(UTC)


def start_day(period: str, now: datetime) -> date:
    """The organization's local date the period holding `now` starts on."""
    day = local_day(now)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}; expected one of {', '.join(PERIODS)}")


def day_start(day: date) -> datetime:
    """The instant the organization's `day` begins, in UTC: the boundary by which raw
    requests (`ts`) are cut into the same days as the rollups (day_sql)."""
    return datetime.combine(day, time(0), _zone).astimezone(UTC)


def period_start(period: str, now: datetime) -> datetime:
    return day_start(start_day(period, now))


def period_end(period: str, now: datetime) -> datetime:
    """The first instant of the next period: when a cap of this period resets."""
    start = start_day(period, now)
    if period == "daily":
        return day_start(start + timedelta(days=1))
    if period == "weekly":
        return day_start(start + timedelta(days=7))
    return day_start((start + timedelta(days=32)).replace(day=1))


def period_tag(period: str, now: datetime) -> str:
    """Short stable name of the period holding `now`, used in counter keys: d:2026-11-28
    (the organization's local date the period starts on)."""
    return f"{_TAG[period]}:{start_day(period, now):%Y-%m-%d}"
