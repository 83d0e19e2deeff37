"""Mid-stream `event: error`s of an Anthropic-format SSE stream, rewritten with the public text.

A provider that answers in Anthropic SSE (Vertex) can fail after the stream began; its error
event's message may quote what it was sent. `PublicErrors` relays the stream as it comes and
holds back only what it must: the start of an event until its `event:` line names it (the
first line, in the API's layout), and an error event until its blank line, which is then sent
with `public_message`'s text and the same `error.type`, so the meter reads what it read before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from proxy.envelope import error_body
from proxy.meter import MAX_EVENT_BYTES, error_type_of
from proxy.providers.base import public_message

SSE = "text/event-stream"
_UNNAMED, _PASS, _ERROR = range(3)
_BOM = b"\xef\xbb\xbf"


class PublicErrors:
    """Feed SSE bytes split anywhere; each `feed` returns the bytes to send on now. Lines
    ending in \\r\\n or \\r are sent ending in \\n (a raw \\r cannot occur in an event's JSON)."""

    __slots__ = ("_cr", "_held", "_nl", "_start", "_state", "provider")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._state = _UNNAMED  # of the event the stream is in
        self._held = b""  # the bytes of it not sent yet (_UNNAMED, _ERROR)
        self._nl = False  # the last byte sent, in _PASS, ended a line
        self._cr = False  # the previous chunk ended in \r: a \n starting this one is its CRLF
        self._start = True  # no line read yet

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._cr = False
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[bytes] = []
        while chunk:
            if self._state == _PASS:
                if self._nl and chunk[0] == 10:
                    end = 1  # the blank line that ends the event starts this chunk
                else:
                    end = chunk.find(b"\n\n") + 2
                    if end == 1:  # none: the event goes on in the next chunk
                        out.append(chunk)
                        self._nl = chunk[-1] == 10
                        break
                out.append(chunk[:end])
                chunk, self._state, self._nl = chunk[end:], _UNNAMED, False
            else:
                chunk = self._held + chunk
                self._held = b""
                chunk = self._unheld(chunk, out)
        return b"".join(out)

    def _unheld(self, buf: bytes, out: list[bytes]) -> bytes:
        """Read the held event's complete lines in `buf`: what follows a decision is returned
        to `feed`; bytes that cannot be decided yet are held."""
        pos = 0
        while True:
            eol = buf.find(b"\n", pos)
            if eol < 0:
                self._held = buf
                if len(buf) > MAX_EVENT_BYTES:
                    if self._state == _ERROR:  # its text is kept to a MiB, as the meter's
                        self._held = buf[:MAX_EVENT_BYTES] + buf[-1:]  # its end still seen
                    else:  # no name in a MiB: relayed rather than held
                        out.append(buf)
                        self._held, self._state, self._nl = b"", _PASS, buf[-1] == 10
                return b""
            line = buf[pos:eol]
            if self._start:  # the stream may start with a BOM, as the meter reads it
                line, self._start = line.removeprefix(_BOM), False
            if not line:  # the blank line: the event ends here
                event, rest = buf[:eol + 1], buf[eol + 1:]
                out.append(self._public(event) if self._state == _ERROR else event)
                self._state = _UNNAMED
                return rest
            pos = eol + 1
            if self._state == _UNNAMED and line.startswith(b"event:"):
                name = line[6:].removeprefix(b" ")
                if name != b"error":
                    out.append(buf[:pos])
                    self._state, self._nl = _PASS, True
                    return buf[pos:]
                self._state = _ERROR

    def _public(self, event: bytes) -> bytes:
        """An error event as the client sees it."""
        data = b"\n".join(line[5:].removeprefix(b" ") for line in event.split(b"\n")
                          if line.startswith(b"data:"))
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            kind = error_type_of(doc)  # as the meter reads it
            error = doc.get("error")
            text = error.get("message") if isinstance(error, dict) else None
        else:
            kind, text = "api_error", None
        if not isinstance(text, str):
            text = data.decode("utf-8", "replace")
        message = public_message(self.provider, "failed mid-stream", kind, text)
        return b"event: error\ndata: " + error_body(kind, message) + b"\n\n"

    def finish(self) -> bytes:
        """What is held when the stream ends: an event without its blank line, which no
        client dispatches nor the meter reads; an error event's text is made public all the
        same, and sent without its blank line too."""
        held, self._held = self._held, b""
        return self._public(held)[:-1] if self._state == _ERROR else held


async def public_errors(provider: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` of an SSE stream with its error events' text made public."""
    errors = PublicErrors(provider)
    async for chunk in chunks:
        out = errors.feed(chunk)
        if out:
            yield out
    tail = errors.finish()
    if tail:
        yield tail
