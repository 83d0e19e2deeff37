"""Request bodies for the benchmarks: a small Messages request and a Claude Code-like one.

Claude Code sends a long system prompt and a few dozen tool definitions (JSON Schemas) with
every request, so its bodies are 50-100 KB; `large_body()` imitates that shape at ~60 KB.
Both are deterministic, so every run and every target sends the same bytes.
"""

from __future__ import annotations

import orjson

MODEL = "claude-sonnet-4-6"
SESSION_ID = "0b6f6f3c-5f4e-4a57-9a8f-3d1c2b0a9e11"
USER_ID = "user_2f1c0d6e5b4a39281706f5e4d3c2b1a0_account__session_" + SESSION_ID

# What Claude Code sends besides the credential (the gateway forwards every anthropic-* one).
HEADERS = {
    "content-type": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                      "context-management-2025-06-27",
    "user-agent": "claude-cli/2.1.197 (external, cli)",
    "x-app": "cli",
    "x-claude-code-session-id": SESSION_ID,
}

_PROSE = ("You are an interactive CLI tool that helps users with software engineering tasks. "
          "Use the instructions below and the tools available to you to assist the user. "
          "Keep answers short, prefer editing existing files, and never guess file contents. ")


def small_body() -> bytes:
    """A ~400 B streaming request: one short user turn."""
    doc = {
        "model": MODEL,
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Summarise the failing test in tests/test_gate.py and "
                                     "suggest the smallest fix that makes it pass again. Reply in "
                                     "two sentences, then show the diff."}]}],
        "metadata": {"user_id": USER_ID},
    }
    return orjson.dumps(doc)


def _tool(i: int) -> dict[str, object]:
    props = {
        f"param_{j}": {"type": "string" if j % 3 else "integer",
                       "description": f"Parameter {j} of tool {i}: " + _PROSE[: 60 + 7 * j]}
        for j in range(8)
    }
    return {
        "name": f"Tool{i}",
        "description": (f"Tool {i}. " + _PROSE * 3)[:900],
        "input_schema": {"type": "object", "properties": props,
                         "required": ["param_0", "param_1"], "additionalProperties": False,
                         "$schema": "http://json-schema.org/draft-07/schema#"},
    }


def large_body(target: int = 60_000) -> bytes:
    """A ~60 KB streaming request shaped like Claude Code's: system blocks with cache
    control, tool definitions, a few turns, thinking and metadata."""
    system = [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": _PROSE * 60, "cache_control": {"type": "ephemeral"}},
    ]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>" + _PROSE * 4
                                      + "</system-reminder>"},
                                     {"type": "text", "text": "Why does the gate test fail?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look at the test."}]},
        {"role": "user", "content": [{"type": "text", "text": "Go ahead.",
                                      "cache_control": {"type": "ephemeral"}}]},
    ]
    doc: dict[str, object] = {
        "model": MODEL, "max_tokens": 32000, "stream": True, "system": system,
        "messages": messages, "tools": [],
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "metadata": {"user_id": USER_ID},
    }
    tools: list[dict[str, object]] = []
    doc["tools"] = tools
    i = 0
    while len(orjson.dumps(doc)) < target:
        tools.append(_tool(i))
        i += 1
    return orjson.dumps(doc)


if __name__ == "__main__":
    print(len(small_body()), len(large_body()))
