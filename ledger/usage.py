"""Token usage of one request, in the categories that are priced differently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Entries of `usage.iterations` are billed outside the top-level totals when they are an
# advisor call (advisor-tool-2026-03-01: a sub-inference of the advisor model, at its rates)
# or a compaction (the request's model summarising the context). The other types ("message",
# "fallback_message") are parts of the top-level totals.
_NO_MODEL = "advisor (model not reported)"  # an unknown model: the fallback prices it


def _int(value: Any) -> int:
    """A token count from the API; null, missing or malformed counts as zero."""
    return value if isinstance(value, int) and value > 0 else 0


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    web_search: int = 0
    service_tier: str = ""
    speed: str = ""
    inference_geo: str = ""
    # The sub-inferences billed apart from the totals above: (model, usage), model "" for the
    # request's own.
    apart: tuple[tuple[str, Usage], ...] = ()

    @classmethod
    def from_api(cls, usage: dict[str, Any]) -> Usage:
        """Read an Anthropic `usage` object.

        `cache_creation_input_tokens` is the total written to the cache; the optional
        `cache_creation` object splits it by TTL. Whatever the split does not account for
        is priced as a 5-minute write, the API's default TTL.
        """
        split = usage.get("cache_creation") or {}
        if not isinstance(split, dict):
            split = {}
        write_1h = _int(split.get("ephemeral_1h_input_tokens"))
        write_5m = _int(split.get("ephemeral_5m_input_tokens"))
        total = _int(usage.get("cache_creation_input_tokens"))
        write_5m += max(0, total - write_5m - write_1h)
        tools = usage.get("server_tool_use") or {}
        iterations = usage.get("iterations")
        return cls(
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            cache_write_5m=write_5m,
            cache_write_1h=write_1h,
            cache_read=_int(usage.get("cache_read_input_tokens")),
            web_search=_int(tools.get("web_search_requests")) if isinstance(tools, dict) else 0,
            service_tier=_str(usage.get("service_tier")),
            speed=_str(usage.get("speed")),
            inference_geo=_str(usage.get("inference_geo")),
            apart=_apart(iterations) if iterations and isinstance(iterations, list) else (),
        )

    @property
    def prompt_tokens(self) -> int:
        """Every input-side token: what prompt-size price tiers are chosen by."""
        return self.input_tokens + self.cache_write_5m + self.cache_write_1h + self.cache_read

    @property
    def rate_input_tokens(self) -> int:
        """Input tokens as input-tokens-per-minute limits count them: input plus cache writes."""
        return self.input_tokens + self.cache_write_5m + self.cache_write_1h


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _apart(iterations: list[Any]) -> tuple[tuple[str, Usage], ...]:
    found = []
    for entry in iterations:
        if not isinstance(entry, dict):
            continue
        kind = entry.get("type")
        if kind == "advisor_message":
            model = _str(entry.get("model")) or _NO_MODEL
        elif kind == "compaction":
            model = ""
        else:
            continue
        found.append((model, Usage.from_api(entry)))
    return tuple(found)
