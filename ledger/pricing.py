"""Model prices and the exact cost of a request, in integer micro-USD (µ$).

Every rate is an integer number of µ$ per million tokens. A request costs the exact sum of
tokens × rate over its categories (its own and those of the sub-inferences billed apart: advisor
calls at the advisor model's rates, compactions), plus web searches, times any multiplier as an
exact fraction, rounded once to whole µ$, half up. Prices come from the shipped `prices.toml`
plus configuration overrides; an unknown model is priced at a fallback row and flagged,
never free. Floats never enter: prices are parsed from decimal strings, ints or Decimals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from numbers import Rational
from typing import Any

from ledger.usage import Usage

log = logging.getLogger(__name__)

MTOK = 1_000_000  # tokens per rate unit
MICROS_PER_USD = 1_000_000
# The largest context window of any Claude model: no sampling pass reads more input than this.
MAX_CONTEXT_TOKENS = 1_000_000
FALLBACK_ROW = "fallback"
US_GEO_MULTIPLIER = Fraction(11, 10)  # inference_geo "us" on rows flagged us_geo_multiplier
# A regional (not global) Bedrock or Vertex endpoint, on rows flagged regional_premium.
REGIONAL_MULTIPLIER = Fraction(11, 10)
ONE = Fraction(1)
CATEGORIES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
ROW_KEYS = frozenset(
    {*CATEGORIES, "aliases", "match", "long_rates", "long_threshold", "fast_rates",
     "us_geo_multiplier", "regional_premium"}
)
_CACHE_LIMIT = 4096  # distinct model strings remembered; clients choose them, so bound it

_SUFFIX_BRACKET = re.compile(r"\[[^\]]*\]$")  # Claude Code's "[1m]"
_BEDROCK_VERSION = re.compile(r"-v\d+(?::[0-9a-z]+)*$")  # "-v1:0", "-v2:0", "-v1:0:200k"
_LATEST = re.compile(r"-latest$")
_DATE = re.compile(r"-\d{8}$")


class PriceError(ValueError):
    """A price row or price setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class Rates:
    """µ$ per million tokens, per category."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int

    @property
    def max_input_side(self) -> int:
        return max(self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read)


@dataclass(frozen=True)
class PriceRow:
    name: str
    rates: Rates
    long_rates: Rates | None  # above long_threshold prompt tokens (Haiku 5.5)
    long_threshold: int  # 0 = no prompt-size tier
    fast_rates: Rates | None  # usage.speed == "fast"
    us_geo_multiplier: bool  # inference_geo "us" costs 1.1x on every token category
    regional_premium: bool = False  # a regional cloud endpoint costs 1.1x on every category

    def rates_for(self, usage: Usage) -> Rates:
        """The rate set a request is priced at: fast mode, else its prompt-size tier."""
        if self.fast_rates is not None and usage.speed == "fast":
            return self.fast_rates
        if self.long_rates is not None and usage.prompt_tokens > self.long_threshold:
            return self.long_rates
        return self.rates


@dataclass(frozen=True, slots=True)
class ServerTool:
    """A tool the provider runs inside the request (web search, web fetch, code execution,
    the advisor...), as far as the request bounds what it may cost."""

    kind: str  # "web_search" (a fee per use), "advisor" (a sub-inference per use) or "other"
    max_uses: int | None  # None: the request does not bound the uses
    result_tokens: int | None  # the most one use adds to the context; None: not bounded
    model: str = ""  # advisor: the model its calls are billed at
    output_tokens: int = 0  # advisor: the most one call writes


@dataclass(frozen=True)
class Cost:
    micros: int  # µ$
    row: str  # price row used; "fallback" for unknown models
    known: bool  # False when the fallback priced it
    version: str  # PriceTable.version


def usd_to_micros(value: object, what: str) -> int:
    """Whole µ$ in a USD amount given as a decimal string, int or Decimal (never a float).

    Raises PriceError naming `what` for floats, non-numbers, negatives and amounts finer
    than 1 µ$.
    """
    if isinstance(value, float):
        raise PriceError(
            f"{what}: {value!r} is a float; write the price as a string (e.g. \"3.75\") so it "
            "stays exact"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise PriceError(f"{what}: {value!r} is not a price; give USD as a string like \"3.75\"")
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise PriceError(f"{what}: {value!r} is not a decimal number of USD") from None
    if not amount.is_finite() or amount < 0:
        raise PriceError(f"{what}: {value!r} must be a finite, non-negative amount of USD")
    micros = Fraction(amount) * MICROS_PER_USD  # Fraction(Decimal) is exact
    if micros.denominator != 1:
        raise PriceError(
            f"{what}: {value!r} USD is finer than 1 µ$ (0.000001 USD); round it to 6 decimals"
        )
    return int(micros)


def normalise_model_id(model: str) -> str:
    """The bare Anthropic model id in any provider's spelling of it.

    `us.anthropic.claude-sonnet-4-5-20250929-v1:0`, its inference-profile ARN,
    `claude-sonnet-4-5@20250929`, `claude-sonnet-4-5-latest` and `Claude-Sonnet-4-5[1m]`
    all become `claude-sonnet-4-5`.
    """
    s = _SUFFIX_BRACKET.sub("", model.strip().lower())
    s = s.rsplit("/", 1)[-1]  # ARNs and Vertex resource paths end in the model id
    s = s.split("@", 1)[0]  # Vertex version
    if (i := s.find("anthropic.")) >= 0:  # Bedrock, with or without a us./eu./global. prefix
        s = s[i + len("anthropic.") :]
    s = _BEDROCK_VERSION.sub("", s)
    s = _LATEST.sub("", s)
    return _DATE.sub("", s)


class PriceTable:
    """The effective price table: shipped rows, overrides, and the fallback for unknowns."""

    rows: tuple[PriceRow, ...]
    version: str

    def __init__(
        self,
        rows: tuple[PriceRow, ...],
        index: Mapping[str, str],
        fallback: PriceRow,
        web_search_micros_per_1k: int,
    ) -> None:
        self.rows = rows
        self._by_name = {row.name: row for row in rows}
        self._index = dict(index)  # lower-cased alias or normalised id -> row name
        self._fallback = fallback
        self._search_per_1k = web_search_micros_per_1k
        self._cache: dict[str, PriceRow | None] = {}
        # Per row: the highest input-side and output rates over its tiers (worst_case).
        self._worst = {row.name: _worst_rates(row) for row in (*rows, fallback)}
        self.version = self._hash()

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        fallback_input_usd: str = "5",
        fallback_output_usd: str = "25",
        web_search_per_1k_usd: str = "10",
    ) -> PriceTable:
        """The shipped `prices.toml` with `overrides` applied.

        `overrides` maps a row name to the keys of a shipped row (USD per million tokens
        as strings or ints). An override of a shipped row is merged over it key by key (a
        `long_rates`/`fast_rates` table replaces the whole tier; None removes a key); a new
        row must give all five prices. Ids claimed by overrides win over shipped ones.
        Unknown models are priced at the fallback input/output prices, with cache writes
        at 1.25x/2x and cache reads at 0.1x input. Raises PriceError on any bad value.
        """
        shipped = _read_shipped()
        overrides = overrides or {}
        if not isinstance(overrides, Mapping):
            raise PriceError(f"price overrides must be a table of rows, not {overrides!r}")
        specs: dict[str, Mapping[str, Any]] = dict(shipped)
        for name, spec in overrides.items():
            if not isinstance(spec, Mapping):
                raise PriceError(f"price row {name!r}: expected a table of prices, not {spec!r}")
            merged = {**shipped.get(name, {}), **spec}
            specs[name] = {k: v for k, v in merged.items() if v is not None}
        parsed = [(name, *_parse_row(name, spec)) for name, spec in specs.items()]
        index: dict[str, str] = {}
        # Shipped rows claim their ids first, so rows from configuration can take them over;
        # two rows of the same layer claiming one id is an error.
        for layer in (False, True):
            claimed: dict[str, str] = {}
            for name, _, ids in parsed:
                if (name in overrides) != layer:
                    continue
                for key in ids:
                    owner = claimed.setdefault(key, name)
                    if owner != name:
                        raise PriceError(
                            f"price row {name!r}: model id {key!r} is already matched by "
                            f"row {owner!r}"
                        )
                    index[key] = name
        fallback = _fallback_row(fallback_input_usd, fallback_output_usd)
        search = usd_to_micros(web_search_per_1k_usd, "web_search_per_1k_usd")
        return cls(tuple(row for _, row, _ in parsed), index, fallback, search)

    def row_for(self, model: str) -> PriceRow | None:
        """The price row for a model id in any provider's form; None if unknown."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        key = model.strip().lower()
        name = self._index.get(key) or self._index.get(normalise_model_id(key))
        row = self._by_name[name] if name is not None else None
        if row is None:
            log.warning("unknown model %r: priced at the fallback row", model)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = row
        return row

    def cost(self, model: str, usage: Usage, multiplier: Fraction = ONE,
             regional: bool = False) -> Cost:
        """What a request cost, rounded once to µ$, half up.

        `multiplier` is the route's, set by hand. `regional` says a regional (not global)
        Bedrock or Vertex endpoint served it: 1.1x on rows flagged regional_premium. These
        and the US-geography 1.1x apply to the token categories; web searches are a flat
        per-request charge. The sub-inferences of `usage.apart` are priced at their own
        model's row (the request's when they name none), with the request's geography.
        """
        num, den = _ratio(multiplier)
        row = self.row_for(model)
        known = row is not None
        if row is None:
            row = self._fallback
        us = usage.inference_geo.lower() == "us"
        units = _units(row.rates_for(usage), usage) * _hundredths(row, us, regional)
        for sub_model, sub in usage.apart:
            sub_row = self.row_for(sub_model) if sub_model else row
            known = known and sub_row is not None
            sub_row = sub_row or self._fallback
            units += _units(sub_row.rates_for(sub), sub) * \
                _hundredths(sub_row, us, regional)
        # Exactly units / MTOK / 100 × num / den + web_search × per_1k / 1000, over one
        # integer denominator (Fractions cost more than the rest of the request's pricing).
        total = units * num + usage.web_search * self._search_per_1k * (MTOK // 10) * den
        return Cost(_div_half_up(total, MTOK * 100 * den), row.name, known, self.version)

    def worst_case(
        self, model: str, prompt_tokens: int, max_tokens: int, multiplier: Fraction = ONE,
        tools: tuple[ServerTool, ...] = (), regional: bool = False,
    ) -> int:
        """An upper bound in µ$ on any request with at most these prompt and output tokens
        and these server tools.

        Every input token at the row's highest input-side rate over all its tiers, every
        output token at its highest output rate, with the US-geography multiplier if the row
        has one (and the regional premium on a `regional` endpoint); rounded up. Without
        server tools the input is the prompt.

        With server tools the provider runs a sampling loop: each use ends a pass, and the
        next pass reads the whole context again (prompt, output so far, tool results), every
        pass counted in the usage. So a request may take 1 + (all uses) passes, each after the
        first reading at most min(MAX_CONTEXT_TOKENS, prompt + max_tokens + all results).
        Nothing in a request bounds a web search's or code execution's result, so their passes
        are priced at a full context window. A tool without max_uses is bounded by max_tokens:
        each use is a block the model writes, at least one output token. Each web search adds
        its fee (flat, like cost()); each advisor call reads at most one pass's context and
        writes at most its output_tokens, at the advisor model's rates.
        """
        num, den = _ratio(multiplier)
        row = self.row_for(model) or self._fallback
        input_rate, output_rate = self._worst[row.name]
        inputs, searches, advisor_units = prompt_tokens, 0, 0
        if tools:
            uses = [max_tokens if t.max_uses is None else t.max_uses for t in tools]
            context = prompt_tokens + max_tokens
            for tool, used in zip(tools, uses, strict=True):
                if tool.result_tokens is None:
                    context = MAX_CONTEXT_TOKENS
                else:
                    context += used * tool.result_tokens
            context = min(context, MAX_CONTEXT_TOKENS)
            inputs += sum(uses) * context
            for tool, used in zip(tools, uses, strict=True):
                if tool.kind == "web_search":
                    searches += used
                elif tool.kind == "advisor":
                    advisor = self.row_for(tool.model) or self._fallback
                    a_in, a_out = self._worst[advisor.name]
                    advisor_units += used * (context * a_in + tool.output_tokens * a_out) * \
                        _hundredths(advisor, True, regional)
        units = (inputs * input_rate + max_tokens * output_rate) * \
            _hundredths(row, True, regional)
        # In hundredths, for the 1.1x multipliers; the search fee is outside the multipliers.
        total = (units + advisor_units) * num + \
            searches * self._search_per_1k * (MTOK // 10) * den
        return -(-total // (MTOK * 100 * den))

    def estimate(
        self, model: str, prompt_tokens: int, output_tokens: int, multiplier: Fraction = ONE
    ) -> int:
        """The likely cost in µ$: prompt as plain input and output at standard speed.

        The prompt-size tier still applies (it is known from `prompt_tokens`); fast mode and
        US geography do not.
        """
        # What cost() gives for Usage(input_tokens=prompt, output_tokens=output), without
        # building one on every request.
        num, den = _ratio(multiplier)
        row = self.row_for(model) or self._fallback
        r = row.rates
        if row.long_rates is not None and prompt_tokens > row.long_threshold:
            r = row.long_rates
        units = prompt_tokens * r.input + output_tokens * r.output
        return _div_half_up(units * num, MTOK * den)

    def _hash(self) -> str:
        """A short hash of everything that decides a price, to record with each cost."""
        state = {
            "rows": sorted([asdict(row) for row in self.rows], key=lambda d: d["name"]),
            "index": sorted(self._index.items()),
            "fallback": asdict(self._fallback),
            "web_search_per_1k": self._search_per_1k,
        }
        digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
        return f"p-{digest[:8]}"


def _read_shipped() -> dict[str, Mapping[str, Any]]:
    text = resources.files("ledger").joinpath("prices.toml").read_text(encoding="utf-8")
    return tomllib.loads(text, parse_float=Decimal)  # TOML decimals stay exact


def _parse_row(name: object, spec: Mapping[str, Any]) -> tuple[PriceRow, list[str]]:
    """A PriceRow and the lookup keys (aliases, normalised ids) that select it."""
    if not isinstance(name, str) or not name.strip():
        raise PriceError(f"price row name must be a non-empty string, not {name!r}")
    if name.strip().lower() == FALLBACK_ROW:
        raise PriceError(f"price row {name!r}: the name {FALLBACK_ROW!r} is reserved")
    unknown = set(spec) - ROW_KEYS
    if unknown:
        raise PriceError(
            f"price row {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"expected {', '.join(sorted(ROW_KEYS))}"
        )
    what = f"price row {name!r}"
    rates = _parse_rates(spec, what)
    long_rates = _optional_rates(spec, "long_rates", what)
    fast_rates = _optional_rates(spec, "fast_rates", what)
    threshold = spec.get("long_threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise PriceError(f"{what}: long_threshold must be a whole number of tokens >= 0")
    if (long_rates is None) != (threshold == 0):
        raise PriceError(f"{what}: long_rates and a positive long_threshold go together")
    us_geo = spec.get("us_geo_multiplier", False)
    regional = spec.get("regional_premium", False)
    for key, flag in (("us_geo_multiplier", us_geo), ("regional_premium", regional)):
        if not isinstance(flag, bool):
            raise PriceError(f"{what}: {key} must be true or false")
    ids = [normalise_model_id(name)]
    for key in ("match", "aliases"):
        values = spec.get(key, [])
        if not isinstance(values, list | tuple) or not all(
            isinstance(v, str) and v.strip() for v in values
        ):
            raise PriceError(f"{what}: {key} must be a list of model id strings")
        for v in values:
            ids.append(normalise_model_id(v) if key == "match" else v.strip().lower())
    if not all(ids):
        raise PriceError(f"{what}: a model id normalises to nothing")
    row = PriceRow(name, rates, long_rates, threshold, fast_rates, us_geo, regional)
    return row, ids


def _parse_rates(spec: Mapping[str, Any], what: str) -> Rates:
    missing = [c for c in CATEGORIES if c not in spec]
    if missing:
        raise PriceError(
            f"{what}: missing {', '.join(missing)} (USD per million tokens; "
            f"a row needs {', '.join(CATEGORIES)})"
        )
    micros = {c: usd_to_micros(spec[c], f"{what} {c}") for c in CATEGORIES}
    return Rates(**micros)


def _optional_rates(spec: Mapping[str, Any], key: str, what: str) -> Rates | None:
    tier = spec.get(key)
    if tier is None:
        return None
    if not isinstance(tier, Mapping):
        raise PriceError(f"{what}: {key} must be a table of the five prices")
    extra = set(tier) - set(CATEGORIES)
    if extra:
        raise PriceError(f"{what} {key}: unknown key(s) {', '.join(sorted(extra))}")
    return _parse_rates(tier, f"{what} {key}")


def _fallback_row(input_usd: object, output_usd: object) -> PriceRow:
    """Unknown models: the configured input/output prices, cache at the usual multiples.

    The US-geography multiplier applies (only models that charge it report `"us"`), and
    so does the regional premium: an unknown model is never cheaper.
    """
    inp = usd_to_micros(input_usd, "fallback_input_usd")
    out = usd_to_micros(output_usd, "fallback_output_usd")
    rates = Rates(
        input=inp,
        output=out,
        cache_write_5m=-(-inp * 5 // 4),  # rounded up: an unknown model is never cheaper
        cache_write_1h=inp * 2,
        cache_read=-(-inp // 10),
    )
    return PriceRow(FALLBACK_ROW, rates, None, 0, None, True, True)


def _ratio(multiplier: object) -> tuple[int, int]:
    """A valid multiplier as (numerator, denominator) of ints."""
    if multiplier is ONE or (type(multiplier) is int and multiplier == 1):
        return 1, 1
    factor = _check_multiplier(multiplier)
    return factor.numerator, factor.denominator


def _units(r: Rates, usage: Usage) -> int:
    """µ$·tok/MTok of one inference's token categories at the rates `r`."""
    return (usage.input_tokens * r.input
            + usage.output_tokens * r.output
            + usage.cache_write_5m * r.cache_write_5m
            + usage.cache_write_1h * r.cache_write_1h
            + usage.cache_read * r.cache_read)


def _hundredths(row: PriceRow, us: bool, regional: bool) -> int:
    """The US-geography and regional-endpoint multipliers that apply to a row, in hundredths
    (exact: both are 11/10)."""
    return (11 if us and row.us_geo_multiplier else 10) * \
        (11 if regional and row.regional_premium else 10)


def _worst_rates(row: PriceRow) -> tuple[int, int]:
    """The highest input-side and output rates over all of a row's tiers."""
    tiers = [t for t in (row.rates, row.long_rates, row.fast_rates) if t is not None]
    return max(t.max_input_side for t in tiers), max(t.output for t in tiers)


def _check_multiplier(multiplier: object) -> Fraction:
    if isinstance(multiplier, bool) or not isinstance(multiplier, Rational):
        raise TypeError(f"multiplier must be an int or Fraction, not {multiplier!r}")
    factor = Fraction(multiplier)
    if factor < 0:
        raise ValueError(f"multiplier must be >= 0, not {multiplier}")
    return factor


def _div_half_up(numerator: int, denominator: int) -> int:
    """Whole µ$ nearest numerator / denominator (both non-negative), halves rounded up."""
    q, r = divmod(numerator, denominator)
    return q + (2 * r >= denominator)
