"""Amounts of money: integer micro-USD (µ$) inside, dollars and cents at the edges."""

from __future__ import annotations

import re

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000
_USD = re.compile(r"^\$?\s*(\d{1,12})(?:\.(\d{1,6}))?$")


def parse_usd(text: str | int) -> int:
    """'12.50', '$12.5' or 12 → µ$. At most six decimals; no floats on the way."""
    raw = str(text).strip().replace(",", "")
    match = _USD.match(raw)
    if not match:
        raise ValueError(f"{text!r} is not an amount in dollars (e.g. 250 or 99.50)")
    whole, frac = match.group(1), (match.group(2) or "")
    return int(whole) * MICROS_PER_USD + int(frac.ljust(6, "0"))


def parse_cents(text: str | int) -> int:
    """Whole cents, as Anthropic's Admin API speaks them ('5000' = $50.00) → µ$."""
    raw = str(text).strip()
    if not raw.isdigit():
        raise ValueError(f"{text!r} is not a whole number of cents")
    return int(raw) * MICROS_PER_CENT


def format_usd(micros: int, exact: bool = False) -> str:
    """µ$ → '$1,234.56' (cents, rounded half up) or, exact, every µ$ digit."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    if exact:
        return f"{sign}${micros // MICROS_PER_USD:,}.{micros % MICROS_PER_USD:06d}"
    cents = (micros + MICROS_PER_CENT // 2) // MICROS_PER_CENT
    return f"{sign}${cents // 100:,}.{cents % 100:02d}"
