"""How numbers, money and times read on the dashboard (Jinja filters)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from ledger.money import format_usd
from ledger.periods import clock, local_time, zone_name

PERIOD_WORDS = {"daily": "day", "weekly": "week", "monthly": "month"}


def usd(micros: Any, exact: bool = False) -> str:
    return format_usd(int(micros or 0), exact=exact)


def rate(micros_per_mtok: Any) -> str:
    """A price in µ$ per million tokens as dollars, with as many decimals as it needs
    (at least two): 3000000 → '$3.00', 80000 → '$0.08', 75000 → '$0.075'."""
    text = format_usd(int(micros_per_mtok or 0), exact=True)
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def tokens(value: Any) -> str:
    """1234 → '1,234'; 1234567 → '1.23M' (whole numbers below ten thousand)."""
    n = int(value or 0)
    if abs(n) < 10_000:
        return f"{n:,}"
    for size, unit in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(n) >= size:
            whole, rest = divmod(abs(n) * 100 // size, 100)
            sign = "-" if n < 0 else ""
            return f"{sign}{whole:,}.{rest:02d}{unit}"
    return f"{n:,}"  # pragma: no cover - unreachable


def count(value: Any) -> str:
    return f"{int(value or 0):,}"


def percent(part: Any, whole: Any) -> int:
    """Whole percent of part in whole (0 when whole is 0), for bars and labels."""
    p, w = int(part or 0), int(whole or 0)
    if w <= 0:
        return 100 if p > 0 else 0
    return p * 100 // w


def when(value: Any, with_seconds: bool = False) -> str:
    """A time on the organization's clock (its `timezone`; naive times are UTC, as stored) as
    '2026-11-28 14:03'."""
    if value is None or value == "":
        return ""
    if isinstance(value, datetime):
        at = local_time(value)
        return at.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def zoned(value: Any, with_seconds: bool = False) -> str:
    """when() followed by the zone's abbreviation at that moment (ledger.periods.clock)."""
    return clock(value, with_seconds) if isinstance(value, datetime) else when(value)


def day(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.strftime("%Y-%m-%d")
    return str(value or "")


def millis(value: Any) -> str:
    ms = int(value or 0)
    if ms < 0:
        return "–"
    return f"{ms:,} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def amount_box(micros: Any) -> str:
    """µ$ as an amount box takes it back exactly: 500.00, 99.5 stays 99.50, 4000 µ$ 0.004."""
    value = int(micros or 0)
    fraction = f"{value % 1_000_000:06d}".rstrip("0")
    return f"{value // 1_000_000}.{fraction:0<2}"


FILTERS = {"usd": usd, "rate": rate, "tokens": tokens, "count": count, "when": when,
           "zoned": zoned, "day": day, "millis": millis, "amount_box": amount_box}
GLOBALS = {"percent": percent, "period_words": PERIOD_WORDS, "zone_name": zone_name}
