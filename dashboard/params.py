"""Query-string parameters: declared on each handler, parsed in one place, with bounds.

A handler declares what it reads from the query string with `@query(...)`, as it declares who
may call it with `@allow(...)`; the wrapper parses every declared parameter before the handler
runs and passes the values in. A value a parameter does not take (not a whole number, out of
bounds, not a date, too long) raises ValueError, which dashboard.auth answers with a 400: the
Anthropic error envelope on the admin API, the error page on the dashboard. Dates and numbers
are bounded so nothing downstream (date arithmetic, DuckDB's BIGINT) can overflow into a 500.

Nothing else reads `request.query`, so tests/test_hostile_input.py, which feeds hostile values
to every declared parameter of every route in the router, covers a new route as it is added.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from ledger.periods import as_utc

# Far enough from date.min and date.max that a day after, a week's Monday or a month's end is
# still a date, and wide enough for anything meterd recorded or will record.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2999, 12, 31)
# Offsets and page numbers: far below DuckDB's BIGINT, far above any request log.
MAX_OFFSET = 10**12
_WHOLE = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: int() also takes "١٢" and "1_0"

Query = Mapping[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QueryHandler = Callable[[web.Request, Query], Awaitable[web.StreamResponse]]
_PARAMS_ATTR = "__meterd_params__"


class BadQuery(ValueError):
    """A query parameter's value that it does not take: a 400 (dashboard.auth answers it as
    any ValueError; the sign-in pages of dashboard.oauth, which have no auth, answer this)."""


def parse_int(text: str, what: str, low: int, high: int) -> int:
    """A whole number from `low` to `high`; ValueError naming `what` otherwise."""
    if not _WHOLE.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"{what} must be a whole number from {low:,} to {high:,}")
    return int(text)


def _in_range(day: date, text: str, what: str) -> None:
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"{what} {text!r} is out of range: dates run from {FIRST_DAY} to "
                         f"{LAST_DAY}")


def parse_day(text: str, what: str = "date") -> date:
    """A day of the organization's calendar like 2026-12-31, from FIRST_DAY to LAST_DAY."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a date like 2026-12-31") from None
    _in_range(day, text, what)
    return day


def _moment(text: str, what: str) -> datetime:
    """A date or date-time (ISO 8601), naive unless it has an offset, its day from FIRST_DAY
    to LAST_DAY."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a time like 2026-12-31 or "
                         "2026-12-31T18:00") from None
    _in_range(when.date(), text, what)  # before converting: near the ends that overflows
    return when


def parse_time(text: str, what: str = "time") -> datetime:
    """A date or date-time (ISO 8601) as an aware UTC datetime, its day from FIRST_DAY to
    LAST_DAY. Without an offset it is the organization's wall-clock time (its `timezone`):
    a date is the instant its day begins there, so a date filter over raw requests cuts at
    the same boundaries as the rollups' days (ledger.periods.day_sql)."""
    return as_utc(_moment(text, what))


def parse_expiry(text: str) -> datetime:
    """When a key expires: a date means the end of that UTC day (the key works all of it,
    until 23:59:59), a date-time means that instant (UTC without an offset). The one reading
    of `meterd key issue --expires` and `key expire --at`, the dashboard's date box and the
    API's `expires_at`; UTC because the CLI reads it without the organization's settings."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        when = _moment(text, "expiry")
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    _in_range(day, text, "expiry")
    return datetime.combine(day, time(23, 59, 59), UTC)


@dataclass(frozen=True)
class Param:
    """One query parameter: its name, what it takes, and its value when absent or empty."""

    name: str
    kind: str  # int | day | time | text | choice | list
    default: Any = None
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()
    limit: int = 200  # characters of a text value

    def parse(self, query: MultiMapping[str]) -> Any:
        if self.kind == "list":
            values = query.getall(self.name, [])
            for value in values:
                self._text(value)
            return values
        raw = query.get(self.name, "")
        if raw == "":
            return self.default
        if self.kind == "int":
            return parse_int(raw, self.name, self.low, self.high)
        if self.kind == "day":
            return parse_day(raw, self.name)
        if self.kind == "time":
            return parse_time(raw, self.name)
        if self.kind == "choice" and raw not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}")
        return self._text(raw)

    def _text(self, value: str) -> str:
        if len(value) > self.limit:
            raise ValueError(f"{self.name} is longer than {self.limit} characters")
        return value


def whole(name: str, default: int, low: int, high: int) -> Param:
    return Param(name, "int", default, low=low, high=high)


def day(name: str) -> Param:
    return Param(name, "day")


def moment(name: str) -> Param:
    return Param(name, "time")


def text(name: str, limit: int = 200) -> Param:
    return Param(name, "text", limit=limit)


def choice(name: str, choices: tuple[str, ...], default: str | None = None) -> Param:
    return Param(name, "choice", default, choices=choices)


def many(name: str) -> Param:
    """Every value of a repeated parameter (?a=x&a=y)."""
    return Param(name, "list")


def query(*params: Param) -> Callable[[QueryHandler], Handler]:
    """Declare and parse the query parameters a handler reads; it gets them as a mapping."""
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"a parameter is declared twice: {names}")

    def wrap(handler: QueryHandler) -> Handler:
        @functools.wraps(handler)
        async def parsed(request: web.Request) -> web.StreamResponse:
            try:
                values = {p.name: p.parse(request.query) for p in params}
            except ValueError as exc:
                raise BadQuery(str(exc)) from None
            return await handler(request, values)
        setattr(parsed, _PARAMS_ATTR, params)
        return parsed
    return wrap


def params_of(handler: Any) -> tuple[Param, ...]:
    """The query parameters a handler declared (none when it reads none)."""
    found = getattr(handler, _PARAMS_ATTR, ())
    return found if isinstance(found, tuple) else ()
