"""AWS event-stream frames (application/vnd.amazon.eventstream), as Bedrock sends them.

botocore ships only the decoder of this format (`botocore.eventstream.EventStreamBuffer`), so
the fake encodes frames here and the tests check every frame round-trips through botocore's
decoder, which verifies both CRCs.
"""

from __future__ import annotations

import base64
import binascii
import struct

import orjson

_STRING = 7  # header value type: UTF-8 string


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame: prelude (total length, headers length, CRC), headers, payload, CRC."""
    encoded = b"".join(
        struct.pack("!B", len(name)) + name.encode()
        + struct.pack("!BH", _STRING, len(value.encode())) + value.encode()
        for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    head = prelude + struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = head + encoded + payload
    return body + struct.pack("!I", binascii.crc32(body) & 0xFFFFFFFF)


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
