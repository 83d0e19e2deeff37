"""The Anthropic Messages events of one canned answer, shared by the provider fakes."""

from __future__ import annotations

from typing import Any

WORDS = ("Hello", "from", "the", "fake", "provider:", "canned", "and", "metered.")
DEFAULT_USAGE: dict[str, Any] = {"input_tokens": 1200, "output_tokens": 60,
                                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def message(msg_id: str, model: str, usage: dict[str, Any], text_chunks: int) -> dict[str, Any]:
    """The non-streaming Messages response."""
    text = "".join(WORDS[i % len(WORDS)] + " " for i in range(text_chunks))
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {**DEFAULT_USAGE, **usage}}


def stream_events(msg_id: str, model: str, usage: dict[str, Any],
                  text_chunks: int) -> list[dict[str, Any]]:
    """The streamed events of the same answer: message_start carries the input side,
    message_delta the cumulative usage."""
    full = {**DEFAULT_USAGE, **usage}
    counts = {k: full.get(k, 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                          "cache_read_input_tokens")}
    start_usage: dict[str, Any] = {**counts, "output_tokens": 1}
    if "cache_creation" in full:
        start_usage["cache_creation"] = full["cache_creation"]
    delta_usage: dict[str, Any] = {**counts, "output_tokens": full["output_tokens"]}
    if "server_tool_use" in full:
        delta_usage["server_tool_use"] = full["server_tool_use"]
    start = {"id": msg_id, "type": "message", "role": "assistant", "model": model,
             "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)] + " "}}
          for i in range(text_chunks)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": delta_usage},
        {"type": "message_stop"},
    ]
