"""AWS event-stream frames (application/vnd.amazon.eventstream), the encoding direction.

botocore ships only the decoder (`botocore.eventstream.EventStreamBuffer`); meterd re-encodes
a Bedrock stream's exception frames with the text a client may see, and the test fakes
encode whole streams, both here.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Mapping

_STRING = 7  # header value type: UTF-8 string


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """String-valued headers in the frame's header encoding."""
    return b"".join(
        struct.pack("!B", len(name.encode()))
        + name.encode()
        + struct.pack("!BH", _STRING, len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )


def encode_frame(headers: bytes, payload: bytes) -> bytes:
    """One frame from encoded headers: prelude (total length, headers length, CRC),
    headers, payload, CRC of all before it."""
    prelude = struct.pack("!II", 12 + len(headers) + len(payload) + 4, len(headers))
    head = prelude + struct.pack("!I", binascii.crc32(prelude))
    body = head + headers + payload
    return body + struct.pack("!I", binascii.crc32(body))


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One frame with string-valued headers."""
    return encode_frame(encode_headers(headers), payload)
