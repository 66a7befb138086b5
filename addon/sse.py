"""Incremental, lossless Server-Sent Events decoder.

Bytes go in split anywhere; complete events come out. Each event keeps the exact
bytes it was made of (``raw``, terminating blank line included), so a caller that
forwards ``raw`` of every event returned by ``feed`` and ``close`` forwards the
input unchanged. Work is O(n) over the whole stream: every byte is scanned for a
line ending once.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LINE_END = re.compile(rb"\r\n?|\n")
_CR = 0x0D
_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One event block: its ``event:`` name, its joined ``data:`` lines and its exact bytes.

    A named tuple: made once per event of every stream, it costs a third of a frozen dataclass.
    """

    event: str | None
    data: bytes
    raw: bytes


class SSEDecoder:
    """Split a byte stream into SSE events (``\\n``, ``\\r\\n`` and ``\\r`` line endings).

    A ``\\r`` that is the last byte seen so far is held back until the next byte (or
    ``close``) says whether it starts a ``\\r\\n``; so with ``\\r``-only line endings an
    event is released one chunk late. Blocks holding only comments, and stray blank
    lines, come out as events with ``event=None`` and ``data=b""``.
    """

    __slots__ = ("_buf", "_cr", "_data", "_event", "_line_start", "_scan", "_seen_line")

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes of the unfinished event
        self._line_start = 0  # where the unfinished line starts in _buf
        self._scan = 0  # where to resume looking for a line ending in _buf
        self._event: str | None = None
        self._data: list[bytes] = []
        self._seen_line = False  # a first line was parsed (BOM handling)
        # A "\r" was ever fed: only then are "\r" line endings looked for. Checked on each new
        # chunk, not on the held buffer, which a large event (a base64 image) makes megabytes long.
        self._cr = False

    @property
    def idle(self) -> bool:
        """Between events: no bytes held, no event begun (a chunk of whole events may go by)."""
        return not self._buf and not self._data and self._event is None and self._seen_line

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events they complete (the incomplete tail is kept)."""
        if not chunk:
            return []
        self._buf += chunk
        if not self._cr and b"\r" in chunk:
            self._cr = True
        return self._run(final=False)

    def close(self) -> list[SSEEvent]:
        """End of input: return the unterminated tail, if any, as a final event."""
        events = self._run(final=True)
        buf = self._buf
        if buf:
            if self._line_start < len(buf):
                self._field(bytes(buf[self._line_start :]))
            events.append(self._dispatch(bytes(buf)))
        self._buf = bytearray()
        self._line_start = self._scan = 0
        return events

    def _run(self, final: bool) -> list[SSEEvent]:
        """Parse the complete lines in the buffer; cut off the events they finish."""
        buf = self._buf
        n = len(buf)
        pos = self._scan
        line_start = self._line_start
        start = 0  # start of the current event in buf
        events: list[SSEEvent] = []
        if not self._cr:  # "\n" line endings only (nearly every stream): bytes.find, no regex
            find = buf.find
            while (line_end := find(b"\n", pos)) >= 0:
                end = line_end + 1
                if line_end == line_start:
                    events.append(self._dispatch(bytes(buf[start:end])))
                    start = end
                else:
                    self._field(bytes(buf[line_start:line_end]))
                line_start = pos = end
            pos = n
            return self._cut(buf, start, pos, line_start, events)
        search = _LINE_END.search
        while True:
            m = search(buf, pos)
            if m is None:
                pos = n
                break
            end = m.end()
            if end == n and buf[n - 1] == _CR and not final:
                pos = m.start()  # maybe the first half of a \r\n: wait for the next byte
                break
            line_end = m.start()
            if line_end == line_start:
                events.append(self._dispatch(bytes(buf[start:end])))
                start = end
            else:
                self._field(bytes(buf[line_start:line_end]))
            line_start = pos = end
        return self._cut(buf, start, pos, line_start, events)

    def _cut(
        self, buf: bytearray, start: int, pos: int, line_start: int, events: list[SSEEvent]
    ) -> list[SSEEvent]:
        """Drop the bytes of the events cut off (before ``start``); remember where to resume."""
        if start:
            del buf[:start]
            pos -= start
            line_start -= start
        self._scan = pos
        self._line_start = line_start
        return events

    def _field(self, line: bytes) -> None:
        """Apply one non-blank line to the current event."""
        if not self._seen_line:
            self._seen_line = True
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if line[:1] == b":" or not line:
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _dispatch(self, raw: bytes) -> SSEEvent:
        """Finish the current event."""
        self._seen_line = True
        data = self._data
        event = SSEEvent(
            event=self._event,
            data=data[0] if len(data) == 1 else b"\n".join(data),
            raw=raw,
        )
        self._event = None
        self._data = []
        return event
