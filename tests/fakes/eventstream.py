"""AWS event-stream frames (application/vnd.amazon.eventstream), as Bedrock sends them.

The frames are encoded by meterd's encoder (`proxy.providers.eventstream`), and the tests check
every frame round-trips through botocore's decoder, which verifies both CRCs.
"""

from __future__ import annotations

import base64

import orjson

from proxy.providers.eventstream import encode_message


def chunk_frame(event: dict[str, object]) -> bytes:
    """A `chunk` event carrying one Anthropic event, base64 in `bytes` (with Bedrock's `p`
    padding field)."""
    inner = orjson.dumps(event)
    payload = orjson.dumps({"bytes": base64.b64encode(inner).decode(), "p": "abcdefghij"})
    return encode_message({":event-type": "chunk", ":content-type": "application/json",
                           ":message-type": "event"}, payload)


def exception_frame(kind: str, message: str) -> bytes:
    """A stream exception (e.g. `throttlingException`), as Bedrock sends mid-stream."""
    return encode_message({":exception-type": kind, ":content-type": "application/json",
                           ":message-type": "exception"}, orjson.dumps({"message": message}))
