"""Usage extraction from upstream responses, on the proxy's hot path.

`StreamMeter` is fed the SSE bytes of a streamed response as they are relayed and reads only
the events that carry usage (`message_start`, `message_delta`, `error`) plus the character
count of `content_block_delta`s, which prices a stream that is cut before its final usage,
and notes `message_stop` (from there the client holds the whole answer: the proxy settles).
`meter_body` reads a non-streamed JSON response.

Speed: text deltas are nearly every event, so those in the API's exact layout are counted and
removed in one regex pass per chunk (or one match when a chunk is a single delta), with the
pings and block starts and stops that carry nothing; the other events are found with
`bytes.find` and only the four kinds that matter are parsed (orjson).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ledger.usage import Usage

__all__ = ["Metered", "StreamMeter", "meter_body"]

# An event larger than this is not buffered: its bytes are dropped as they arrive and, for a
# content_block_delta, its characters are still counted (approximately, see `_oversized`).
MAX_EVENT_BYTES = 1 << 20

_START, _DELTA, _USAGE, _ERROR, _STOP = range(5)
# Events are dispatched by their `event:` name, as the Anthropic SDKs do. Anything not listed
# (ping, content_block_start/stop, unknown or unnamed events) is skipped unparsed.
_KINDS: dict[bytes, int] = {
    b"message_start": _START,
    b"content_block_delta": _DELTA,
    b"message_delta": _USAGE,
    b"error": _ERROR,
    b"message_stop": _STOP,
}
# The delta types whose text is output the client has already received.
_TEXT_FIELDS = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}
# A text/JSON/thinking delta in the API's exact (compact) layout, with the blank line that ends
# the event before it. Group 1 is the JSON string body; it holds no control character, so a match
# never runs into another event. It matches only events that the per-event path would read the
# same text from; deltas in any other layout take that path.
_DELTA_EVENT = (
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta",'
    rb'"index":(?:0|[1-9][0-9]{0,8}),"delta":\{"type":"(?:text_delta","text'
    rb'|input_json_delta","partial_json|thinking_delta","thinking)":'
    rb'"([^"\\\x00-\x1f]*+(?:\\.[^"\\\x00-\x1f]*+)*+)"\}\}'
)
# An event of a kind that carries nothing to meter, in the same exact layout (one data line of
# a bounded size): skipped in the same pass. Group 1 does not take part: None in a split.
_SKIPPED_EVENT = (
    rb"event: (?:ping|content_block_start|content_block_stop)\ndata: [^\n]{0,4096}"
)
_TEXT_DELTA = re.compile(rb"\n\n(?:" + _DELTA_EVENT + rb"|" + _SKIPPED_EVENT + rb")(?=\n\n)")
# The same, as a whole chunk: an upstream that flushes every event is often read one at a time.
_ONE_TEXT_DELTA = re.compile(_DELTA_EVENT + rb"\n\n")
_BOM = b"\xef\xbb\xbf"
# Every byte except UTF-8 continuation bytes: deleting them leaves one byte per continuation.
_NOT_CONTINUATION = bytes(b for b in range(256) if not 0x80 <= b < 0xC0)
_NAME_PEEK = 256


@dataclass(slots=True)
class Metered:
    """What one response used, and how sure we are of it."""

    usage: Usage
    # True when the final usage never arrived and output was estimated (or, without even a
    # message_start or a readable body, is unknown and billed as zero).
    estimated: bool
    # "" if fine; the `error.type` of an SSE `error` event or of a JSON error body;
    # "stream_incomplete" when the stream ended before its final usage;
    # "unparseable_response" for a body that is not a Messages response.
    error_type: str
    model: str  # reported by the upstream (message_start.message.model / body.model), or ""


class StreamMeter:
    """Feed SSE bytes as they are relayed; call finish() once at the end (also after an abort)."""

    __slots__ = (
        "_at_start",
        "_chars",
        "_cr",
        "_drop_chars",
        "_drop_kind",
        "_dropping",
        "_error",
        "_model",
        "_pending",
        "_pending_len",
        "_start",
        "_tail_nl",
        "_usage",
        "complete",
        "oversized_events",
    )

    def __init__(self) -> None:
        self._at_start = True  # no byte seen yet, or fewer than a BOM's worth (held in _pending)
        self._cr = False  # the previous chunk ended in \r: a \n starting this one is its CRLF
        self._pending: list[bytes] = []  # bytes of the unfinished event, \n line endings
        self._pending_len = 0
        self._tail_nl = False  # the last byte of the unfinished event is \n
        self._dropping = False  # the unfinished event is oversized and being discarded
        self._drop_kind: int | None = None
        self._drop_chars = 0
        self._start: dict[str, Any] | None = None  # message_start.message.usage
        self._usage: dict[str, Any] | None = None  # the message_delta usages, folded
        self._model = ""
        self._error = ""
        self._chars = 0  # characters of text/partial_json/thinking deltas received
        # A whole `message_stop` event was fed: once these bytes are relayed, the client has
        # the whole answer, whether or not the provider has closed the stream yet.
        self.complete = False
        self.oversized_events = 0

    def feed(self, chunk: bytes) -> None:
        """Account for the next chunk of the stream, split anywhere."""
        if self._at_start:
            chunk = self._strip_bom(chunk)
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            # SSE lines end in \r\n, \n or \r; reduce all three to \n. A raw \r cannot occur
            # inside an event's JSON, so this never changes a payload.
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return
        if not (self._pending or self._dropping):
            one = _ONE_TEXT_DELTA.fullmatch(chunk)
            if one is None:
                self._scan(chunk)
            else:
                self._chars += _text_chars([one[1]])
            return
        if self._tail_nl and chunk[0] == 10:
            cut = -1  # the blank line that ends the held event starts in the previous chunk
        else:
            cut = chunk.find(b"\n\n")
            if cut < 0:
                self._hold(chunk)
                return
        if self._dropping:
            self._drop_chars += _codepoints(chunk[:cut]) if cut > 0 else cut
            self._end_drop()
            self._scan(chunk[cut + 2 :])
        else:
            pending = self._pending
            pending.append(chunk)
            buf = b"".join(pending)
            pending.clear()
            self._pending_len = 0
            self._scan(buf)

    def finish(self) -> Metered:
        """The usage of the stream so far; estimated if its final usage never arrived."""
        if self._usage is not None:
            final = {**self._start, **self._usage} if self._start else self._usage
            return Metered(Usage.from_api(final), False, self._error, self._model)
        error = self._error or "stream_incomplete"
        if self._start is None:
            return Metered(Usage(), True, error, self._model)
        usage = Usage.from_api(self._start)
        # About 4 characters of text or JSON per token; never less than the start reported.
        usage.output_tokens = max(usage.output_tokens, -(-self._chars // 4))
        return Metered(usage, True, error, self._model)

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Drop a leading UTF-8 BOM, as the SSE spec asks, even when it is split across chunks."""
        head = b"".join(self._pending) + chunk if self._pending else chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._pending = [head]
            return b""
        self._pending = []
        self._at_start = False
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _scan(self, buf: bytes) -> None:
        """Handle every complete event in buf (an event start, \n line endings); hold the rest."""
        pos = 0
        if len(buf) <= MAX_EVENT_BYTES:
            # Most events are text deltas in the API's exact layout: one regex pass counts and
            # removes them all, and the pings and block starts and stops that carry nothing
            # (it never matches the unfinished tail: no blank line follows it). Only the rest
            # is walked event by event.
            parts = _TEXT_DELTA.split(b"\n\n" + buf)
            if len(parts) > 1:
                self._chars += _text_chars([text for text in parts[1::2] if text])
                buf = b"".join(parts[0::2])
                if len(buf) == 2:
                    return
            else:
                buf = parts[0]
            pos = 2  # past the blank line put in front
        find = buf.find
        startswith = buf.startswith
        while (end := find(b"\n\n", pos)) >= 0:
            if end - pos > MAX_EVENT_BYTES:
                self._oversized(buf[pos:end])
            elif startswith(b"event: ", pos):
                # The shape every Anthropic event has: `event: NAME\ndata: JSON`.
                nl = find(b"\n", pos, end)
                if nl > 0 and startswith(b"data: ", nl + 1) and find(b"\n", nl + 1, end) < 0:
                    kind = _KINDS.get(buf[pos + 7 : nl])
                    if kind is not None:
                        self._dispatch(kind, buf[nl + 7 : end])
                else:
                    self._parse_block(buf[pos:end])
            elif pos != end:
                self._parse_block(buf[pos:end])
            pos = end + 2
        if pos < len(buf):
            self._hold(buf[pos:] if pos else buf)

    def _hold(self, piece: bytes) -> None:
        """Keep part of an unfinished event, or only count it once the event is oversized."""
        self._tail_nl = piece[-1] == 10
        if self._dropping:
            self._drop_chars += _codepoints(piece)
            return
        self._pending.append(piece)
        self._pending_len += len(piece)
        # A trailing \n may yet turn out to start the blank line that ends the event.
        if self._pending_len - self._tail_nl > MAX_EVENT_BYTES:
            held = b"".join(self._pending)
            self._pending.clear()
            self._pending_len = 0
            self._dropping = True
            self._drop_kind = _name_kind(held)
            self._drop_chars = _codepoints(held)

    def _end_drop(self) -> None:
        self._dropping = False
        self._account_oversized(self._drop_kind, self._drop_chars)

    def _oversized(self, block: bytes) -> None:
        self._account_oversized(_name_kind(block), _codepoints(block))

    def _account_oversized(self, kind: int | None, chars: int) -> None:
        # The content is gone; a delta's characters are approximated by those of the whole
        # event (about 100 more than the text in an event of over a million).
        self.oversized_events += 1
        if kind == _DELTA:
            self._chars += chars

    def _parse_block(self, block: bytes) -> None:
        """The general SSE field parser, for events not in the usual two-line shape."""
        name = b""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if not line or line[0] == 58:  # empty or a `:` comment
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value
        kind = _KINDS.get(name)
        if kind is not None and data:
            self._dispatch(kind, b"\n".join(data))

    def _dispatch(self, kind: int, data: bytes) -> None:
        if kind == _STOP:
            self.complete = True
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if kind == _DELTA:
            delta = event.get("delta")
            if isinstance(delta, dict):
                dtype = delta.get("type")
                field = _TEXT_FIELDS.get(dtype) if isinstance(dtype, str) else None
                text = delta.get(field) if field else None
                if isinstance(text, str):
                    self._chars += len(text)
        elif kind == _USAGE:
            usage = event.get("usage")
            if isinstance(usage, dict):
                # Cumulative: each delta's non-null fields override the start values and earlier
                # deltas, nested objects whole (as the Anthropic SDKs fold them into a message).
                if self._usage is None:
                    self._usage = {}
                self._usage.update((k, v) for k, v in usage.items() if v is not None)
        elif kind == _START:
            message = event.get("message")
            if isinstance(message, dict):
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._start = usage
                model = message.get("model")
                if isinstance(model, str):
                    self._model = model
        elif not self._error:
            self._error = error_type_of(event)


def meter_body(body: bytes) -> Metered:
    """Usage of a non-streamed JSON response: a message, or an error envelope."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return Metered(Usage(), True, "unparseable_response", "")
    model = doc.get("model")
    model = model if isinstance(model, str) else ""
    if doc.get("type") == "error" or "error" in doc:
        return Metered(Usage(), False, error_type_of(doc), model)
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return Metered(Usage(), True, "unparseable_response", model)
    return Metered(Usage.from_api(usage), False, "", model)


def error_type_of(envelope: dict[str, Any]) -> str:
    """The `error.type` of an error envelope, as metered ("error" when it names none)."""
    error = envelope.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) and kind else "error"


def _text_chars(bodies: list[bytes]) -> int:
    """Characters in JSON string bodies; one that is not valid JSON counts zero, as its event."""
    joined = b"".join(bodies)
    if joined.isascii() and b"\\" not in joined:
        return len(joined)  # printable ASCII without escapes: one byte, one character
    try:
        if len(bodies) == 1 or b"\\u" not in joined:
            return len(orjson.loads(b'"' + joined + b'"'))
        # Parsed apart, so that two halves of a surrogate pair cannot meet in the join.
        return sum(map(len, orjson.loads(b'["' + b'","'.join(bodies) + b'"]')))
    except orjson.JSONDecodeError:
        if len(bodies) == 1:
            return 0
        return sum(_text_chars([body]) for body in bodies)


def _codepoints(data: bytes) -> int:
    """Characters in UTF-8 bytes; additive, so a character split across chunks counts once."""
    return len(data) - len(data.translate(None, _NOT_CONTINUATION))


def _name_kind(block: bytes) -> int | None:
    """The kind of an oversized event, from an `event:` first line."""
    line = block[:_NAME_PEEK].split(b"\n", 1)[0]
    field, _, value = line.partition(b":")
    if field != b"event":
        return None
    return _KINDS.get(value[1:] if value[:1] == b" " else value)
