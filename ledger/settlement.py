"""The settlement: what one metered request used and cost, in the one shape every step of
the money path shares.

The path of a dollar: the provider's usage is read by the proxy's meter (`ledger.usage.Usage`),
priced (`ledger.pricing.Cost`), and made a `Settlement` by `Settlement.of`, the one place that
names its fields' sources. `Gate.settle` adds `counted()` to the spend counters and appends
`packed()` to the event stream (settle.lua); the rollup reads the stream into the `requests`
table (ledger/history.sql), whose columns are the settlement's fields but two: `ts` holds the
time of `ts_ms`, and `cache_saved_micros` is priced at the rollup, with the admin's price table.

A settlement travels as ONE stream field holding its values in field order, joined by the ASCII
unit separator. Reading one field per entry back is many times cheaper for the rollup than one
field per value (see bench/rollup_bench.py), and settlement sends fewer arguments. A line
written by an older meterd that had fewer fields reads with the missing ones at their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Annotated, NamedTuple, get_type_hints

from ledger.pricing import Cost
from ledger.usage import Usage

if TYPE_CHECKING:
    from ledger.gate import Ticket

# DuckDB types of the integer fields that are not BIGINT. Flags travel as 0/1.
INTEGER, BOOLEAN = "INTEGER", "BOOLEAN"
Flag = Annotated[int, BOOLEAN]
Int32 = Annotated[int, INTEGER]


class Settlement(NamedTuple):
    """One finished request. Defaults are what the rollup assumes for a value missing or
    malformed in the stream. Build one with `Settlement.of`."""

    id: str = ""  # the gateway's request id: settles exactly once
    ts_ms: int = 0  # when the request started (ms since the epoch): decides its periods
    developer_id: str = ""
    team_id: str = ""
    key_id: str = ""
    model: str = ""
    provider: str = ""
    status: Int32 = 0  # HTTP status from the provider (or meterd's 502/504)
    stream: Flag = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    web_search: int = 0
    cost_micros: int = 0
    price_row: str = ""
    price_version: str = ""
    priced: Flag = 1  # 0: an unknown model priced at the fallback row
    latency_ms: Int32 = 0
    ttfb_ms: Int32 = -1  # -1 when no byte came back
    estimated: Flag = 0  # output estimated: the answer ended before its usage
    error_type: str = ""  # '' when the request succeeded
    service_tier: str = ""
    speed: str = ""
    inference_geo: str = ""
    session_id: str = ""  # Claude Code's headers, '' when absent
    agent_id: str = ""
    parent_agent_id: str = ""
    request_class: str = ""
    prompt_id: str = ""
    # The project the request was for: the value of the `billing_group_tag` tag in its body
    # (Claude Code's `attributionProject`), '' when none.
    project: str = ""
    # The provider's own id of the request (its `request-id` header), '' when it gave none:
    # what Claude Code's telemetry names the request by (ledger/bought.py reconciles on it).
    # A column added to old ledgers.
    upstream_request_id: str = ""
    # What refused the request, in words ('budget: developer Ada, daily $5.00 · until ...'),
    # '' for a request the gateway let through. A refusal costs nothing, is never counted
    # toward spend and stays out of the usage rollups: it is a row of the request log only.
    # Last: a column added to old ledgers.
    refusal: str = ""

    @classmethod
    def of(cls, ticket: Ticket, usage: Usage, cost: Cost, *, model: str = "",
           provider: str = "", status: int = 0, stream: bool = False, estimated: bool = False,
           latency_ms: int = 0, ttfb_ms: int = -1, error_type: str = "",
           session_id: str = "", agent_id: str = "", parent_agent_id: str = "",
           request_class: str = "", prompt_id: str = "", project: str = "",
           upstream_request_id: str = "") -> Settlement:
        """The settlement of `ticket`'s request: who (the ticket), what it used (`usage`),
        what that cost (`cost`), and how it went. Free text (client headers, model names,
        what the provider wrote: any bytes, any length) is cleaned, so the settlement packs,
        spools and logs whatever arrived."""
        p = ticket.principal
        return cls(
            ticket.request_id, int(ticket.at.timestamp() * 1000), p.developer_id, p.team_id,
            p.key_id, clean_text(model), provider, status, int(stream), usage.input_tokens,
            usage.output_tokens, usage.cache_write_5m, usage.cache_write_1h, usage.cache_read,
            usage.web_search, cost.micros, cost.row, cost.version, int(cost.known), latency_ms,
            ttfb_ms, int(estimated), clean_text(error_type), clean_text(usage.service_tier),
            clean_text(usage.speed), clean_text(usage.inference_geo), clean_text(session_id),
            clean_text(agent_id), clean_text(parent_agent_id), clean_text(request_class),
            clean_text(prompt_id), clean_text(project), clean_text(upstream_request_id))

    @classmethod
    def refused(cls, ticket: Ticket, refusal: str, *, model: str = "", status: int = 429,
                error_type: str = "", session_id: str = "", agent_id: str = "",
                project: str = "") -> Settlement:
        """The zero-cost event of a request the gateway refused (`Gate.refuse`)."""
        p = ticket.principal
        return cls(
            ticket.request_id, int(ticket.at.timestamp() * 1000), p.developer_id, p.team_id,
            p.key_id, clean_text(model), status=status, priced=1, error_type=error_type,
            session_id=clean_text(session_id), agent_id=clean_text(agent_id),
            project=clean_text(project), refusal=clean_text(refusal))

    @property
    def rate_input(self) -> int:
        """Input tokens as input-tokens-per-minute limits count them: input plus cache writes."""
        return self.input_tokens + self.cache_write_5m + self.cache_write_1h

    def counted(self) -> tuple[int, ...]:
        """What settle.lua adds to the counters: cost_micros, then the TOKEN_COUNTERS values."""
        return _COUNTED(self)

    def packed(self) -> str:
        """The values in field order as one stream line that encodes as UTF-8. Separators
        inside a value (a model name or header is client input) become spaces, so the
        columns never shift."""
        text = US.join(map(str, self))
        if not text.isascii() or text.count(US) != len(FIELDS) - 1 or RS in text:
            text = US.join([clean_text(str(value)) for value in self])
        return text


FIELDS: tuple[str, ...] = Settlement._fields
STREAM_FIELD = "e"  # the stream entry's one field
US, RS = "\x1f", "\x1e"  # between values; between settlements (in a rollup batch)

# Counter hash fields. Every counter adds up spend and holds what admission reserved; daily
# ones also count tokens: hash field → settlement field. The Lua scripts get these names from
# `lua_prelude`; Python (the rebuild, live balances) imports them from here.
SPENT, HELD = "spent", "held"
TOKEN_COUNTERS = {"in": "input_tokens", "out": "output_tokens", "cw5": "cache_write_5m",
                  "cw1": "cache_write_1h", "cr": "cache_read", "ws": "web_search",
                  "est": "estimated"}
_COUNTED = itemgetter(*(FIELDS.index(f) for f in ("cost_micros", *TOKEN_COUNTERS.values())))


def lua_prelude() -> str:
    """The counter field names as a Lua script's first lines (settle.lua's token amounts
    come in ARGV in `counted()` order)."""
    tokens = ", ".join(f"'{name}'" for name in TOKEN_COUNTERS)
    return f"local SPENT, HELD = '{SPENT}', '{HELD}'\nlocal TOKEN_FIELDS = {{{tokens}}}\n"


def _sql_columns() -> tuple[tuple[str, str, str], ...]:
    hints = get_type_hints(Settlement, include_extras=True)
    columns = []
    for name in FIELDS:
        hint, default = hints[name], Settlement._field_defaults[name]
        kind = hint.__metadata__[0] if hasattr(hint, "__metadata__") else \
            "VARCHAR" if hint is str else "BIGINT"
        columns.append((name, kind, f"'{default}'" if isinstance(default, str) else str(default)))
    return tuple(columns)


# Per field: name, DuckDB type, SQL value when missing or malformed (the rollup's reading).
SQL_COLUMNS = _sql_columns()
# The columns of `requests`, in order: the fields, with `ts` for `ts_ms` and the saving the
# rollup prices after the cost.
REQUEST_COLUMNS = tuple(
    col for name in FIELDS
    for col in ({"ts_ms": ("ts",), "cost_micros": (name, "cache_saved_micros")}.get(name, (name,))))

MAX_TEXT = 256  # characters a settlement keeps of a free-text value (a header, a model name)
_SEPARATORS = str.maketrans({US: " ", RS: " "})


def clean_text(value: str) -> str:
    """Free text (client headers, model names: any bytes, any length) as a settlement keeps
    it: text that encodes as UTF-8, bytes that were not UTF-8 (aiohttp hands them over as lone
    surrogates) as U+FFFD, at most MAX_TEXT characters, separators as spaces."""
    if len(value) <= MAX_TEXT and value.isascii() and value.isprintable():
        return value  # the usual case, three checks in C
    if not value.isascii():
        try:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a surrogate that is not an escaped byte
            value = value.encode("utf-8", "replace").decode()
    return value[:MAX_TEXT].translate(_SEPARATORS)


def entry_values(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """The values of a stream entry in field order (missing trailing values are empty)."""
    values = fields.get(STREAM_FIELD.encode(), b"").split(US.encode())[:len(FIELDS)]
    return values + [b""] * (len(FIELDS) - len(values))


def unpack_entry(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """A stream entry as a field → value mapping (tests, tools)."""
    return dict(zip(FIELDS, (v.decode() for v in entry_values(fields)), strict=True))
