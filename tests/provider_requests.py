"""What the provider tests send through a gateway: one Messages body, and the official SDK
calls that carry it, so each provider's tests differ only in what they check."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.resources import AsyncMessages
from anthropic.types import Message

from tests.conftest import Gateway

BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 1024,
                        "messages": [{"role": "user", "content": "Hello"}]}


def sdk_for(gw: Gateway, key: str) -> anthropic.AsyncAnthropic:
    """The SDK as a developer points it at the gateway; no retries, so each call is one
    request."""
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)


async def ask(messages: AsyncMessages, body: dict[str, Any],
              stream: bool) -> tuple[str, Message]:
    """The answer's text and final message, from a streamed or a plain request. Takes
    `sdk.messages` so Anthropic-, Bedrock- and Vertex-format clients all fit."""
    if stream:
        async with messages.stream(**body) as s:
            text = "".join([t async for t in s.text_stream])
            return text, await s.get_final_message()
    message = await messages.create(**body)
    return message.content[0].text, message  # type: ignore[union-attr]


async def rate_limit_error(gw: Gateway) -> object:
    """The error body the SDK raises for BODY when the provider answers 429."""
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        with pytest.raises(anthropic.RateLimitError) as err:
            await sdk.messages.create(**BODY)
    return err.value.body


async def counted_tokens(gw: Gateway) -> int:
    """What the SDK's count_tokens answers for BODY's messages."""
    key = await gw.developer()
    async with sdk_for(gw, key) as sdk:
        counted = await sdk.messages.count_tokens(model=BODY["model"],
                                                  messages=BODY["messages"])
    return counted.input_tokens
