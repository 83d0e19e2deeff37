"""The usage event: one per metered request, appended to the Redis stream by settlement and
rolled up into DuckDB.

An event travels as ONE stream field holding its values in EVENT_COLUMNS order, joined by the
ASCII unit separator. Reading one field per entry back is many times cheaper for the rollup
than one field per value (see bench/rollup_bench.py), and settlement sends fewer arguments.
"""

from __future__ import annotations

from collections.abc import Mapping

# Event fields in order: name, DuckDB type, value when missing or malformed.
# The types marked BOOLEAN arrive as 0/1.
EVENT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "VARCHAR", "''"),
    ("ts_ms", "BIGINT", "0"),
    ("developer_id", "VARCHAR", "''"),
    ("team_id", "VARCHAR", "''"),
    ("key_id", "VARCHAR", "''"),
    ("model", "VARCHAR", "''"),
    ("provider", "VARCHAR", "''"),
    ("status", "INTEGER", "0"),
    ("stream", "BOOLEAN", "0"),
    ("input_tokens", "BIGINT", "0"),
    ("output_tokens", "BIGINT", "0"),
    ("cache_write_5m", "BIGINT", "0"),
    ("cache_write_1h", "BIGINT", "0"),
    ("cache_read", "BIGINT", "0"),
    ("web_search", "BIGINT", "0"),
    ("cost_micros", "BIGINT", "0"),
    ("price_row", "VARCHAR", "''"),
    ("price_version", "VARCHAR", "''"),
    ("priced", "BOOLEAN", "1"),
    ("latency_ms", "INTEGER", "0"),
    ("ttfb_ms", "INTEGER", "-1"),
    ("estimated", "BOOLEAN", "0"),
    ("error_type", "VARCHAR", "''"),
    ("service_tier", "VARCHAR", "''"),
    ("speed", "VARCHAR", "''"),
    ("inference_geo", "VARCHAR", "''"),
    ("session_id", "VARCHAR", "''"),
    ("agent_id", "VARCHAR", "''"),
    ("parent_agent_id", "VARCHAR", "''"),
    ("request_class", "VARCHAR", "''"),
    ("prompt_id", "VARCHAR", "''"),
)
EVENT_NAMES = tuple(name for name, _, _ in EVENT_COLUMNS)
EVENT_FIELD = "e"
US, RS = "\x1f", "\x1e"  # between values; between events (in a rollup batch)


MAX_TEXT = 256  # characters an event keeps of a free-text value (a header, a model name)
_SEPARATORS = str.maketrans({US: " ", RS: " "})


def clean_text(value: str) -> str:
    """Free text (client headers, model names: any bytes, any length) as an event keeps it:
    text that encodes as UTF-8, bytes that were not UTF-8 (aiohttp hands them over as lone
    surrogates) as U+FFFD, at most MAX_TEXT characters, separators as spaces."""
    if len(value) <= MAX_TEXT and value.isascii() and value.isprintable():
        return value  # the usual case, three checks in C
    if not value.isascii():
        try:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a surrogate that is not an escaped byte
            value = value.encode("utf-8", "replace").decode()
    return value[:MAX_TEXT].translate(_SEPARATORS)


def pack_event(event: Mapping[str, object]) -> str:
    """The event's values in EVENT_COLUMNS order as one string that encodes as UTF-8.
    Separators inside a value (a model name or header is client input) become spaces, so
    the columns never shift."""
    values = [str(event.get(name, "")) for name in EVENT_NAMES]
    text = US.join(values)
    if not text.isascii() or text.count(US) != len(EVENT_NAMES) - 1 or RS in text:
        text = US.join([clean_text(value) for value in values])
    return text


def event_values(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """The EVENT_COLUMNS values of a stream entry (missing trailing values are empty)."""
    values = fields.get(EVENT_FIELD.encode(), b"").split(US.encode())[:len(EVENT_NAMES)]
    return values + [b""] * (len(EVENT_NAMES) - len(values))


def unpack_event(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """A stream entry as a name → value mapping (tests, tools)."""
    return dict(zip(EVENT_NAMES, (v.decode() for v in event_values(fields)), strict=True))
