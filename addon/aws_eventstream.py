"""Incremental decoder for AWS's binary event-stream framing (``application/vnd.amazon.eventstream``).

Bedrock's ConverseStream and InvokeModelWithResponseStream answer with it. Each message:

    total length (uint32) | headers length (uint32) | prelude CRC32 (of the 8 bytes before)
    headers: name length (uint8), name (UTF-8), value type (uint8), value
    payload (total - headers - 16 bytes)
    message CRC32 (of everything before it)

All integers are big-endian. Both CRCs are verified; a corrupt or impossible frame
raises ``EventStreamError``. Bytes go in split anywhere; work is O(n) overall (a
message is parsed once, when its last byte has arrived).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

HeaderValue = str | bytes | int | bool

_PRELUDE = struct.Struct(">III")
_PRELUDE_LEN = 12
_MIN_MESSAGE = 16  # prelude + message CRC
MAX_HEADERS = 128 * 1024
MAX_MESSAGE = 24 * 1024 * 1024 + MAX_HEADERS + _MIN_MESSAGE
_FIXED: dict[int, struct.Struct] = {
    2: struct.Struct(">b"),  # byte
    3: struct.Struct(">h"),  # short
    4: struct.Struct(">i"),  # integer
    5: struct.Struct(">q"),  # long
    8: struct.Struct(">q"),  # timestamp, milliseconds since the epoch
}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_UUID_LEN = 16


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (CRC mismatch, impossible lengths, bad headers).

    ``messages`` holds the valid messages the same ``feed`` call decoded before the corrupt one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.messages: list[EventMessage] = []


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One decoded message: its headers (``:event-type``, ``:message-type``...) and raw payload."""

    headers: dict[str, HeaderValue]
    payload: bytes

    @property
    def message_type(self) -> str | None:
        """``event``, ``exception`` or ``error`` (the ``:message-type`` header)."""
        value = self.headers.get(":message-type")
        return value if isinstance(value, str) else None

    @property
    def event_type(self) -> str | None:
        """The ``:event-type`` header (``chunk``, ``contentBlockDelta``, ``metadata``...)."""
        value = self.headers.get(":event-type")
        return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Split a byte stream into ``EventMessage``s.

    After a corrupt frame has raised ``EventStreamError`` once (carrying the valid messages
    decoded before it in that call), the decoder is stopped: later ``feed``/``close`` calls
    return ``[]`` and ``error`` says what went wrong.
    """

    __slots__ = ("_buf", "_need", "error", "messages")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = _PRELUDE_LEN  # bytes needed in _buf before parsing can progress
        self.error: str | None = None
        self.messages = 0  # messages decoded so far

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message held back (a stream cut here lost them)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[EventMessage]:
        """Add bytes; return the messages they complete. Raises ``EventStreamError`` on a corrupt frame."""
        if self.error is not None or not chunk:
            return []
        self._buf += chunk
        if len(self._buf) < self._need:
            return []
        out: list[EventMessage] = []
        try:
            self._run(out)
        except EventStreamError as e:
            self.error = str(e)
            self._buf = bytearray()
            e.messages = out
            raise
        return out

    def close(self) -> list[EventMessage]:
        """End of input. An unfinished message is dropped (``buffered`` tells how many bytes)."""
        return []

    def _run(self, out: list[EventMessage]) -> None:
        """Append the complete messages in the buffer to ``out``; keep the unfinished tail."""
        buf = self._buf
        n = len(buf)
        pos = 0
        self._need = _PRELUDE_LEN
        while n - pos >= _PRELUDE_LEN:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, pos)
            if zlib.crc32(buf[pos : pos + 8]) != prelude_crc:
                raise EventStreamError(
                    f"event stream: prelude CRC mismatch in message {self.messages + 1} "
                    "(not an event stream, or corrupt)"
                )
            if total < _MIN_MESSAGE or total > MAX_MESSAGE:
                raise EventStreamError(f"event stream: impossible message length {total}")
            if headers_len > MAX_HEADERS or headers_len > total - _MIN_MESSAGE:
                raise EventStreamError(f"event stream: impossible headers length {headers_len}")
            if n - pos < total:
                self._need = total  # the buffer will start at this message
                break
            message = bytes(buf[pos : pos + total])
            view = memoryview(message)
            (message_crc,) = _U32.unpack_from(message, total - 4)
            if zlib.crc32(view[:-4]) != message_crc:
                raise EventStreamError(f"event stream: message CRC mismatch in message {self.messages + 1}")
            headers = _parse_headers(view[_PRELUDE_LEN : _PRELUDE_LEN + headers_len])
            out.append(EventMessage(headers, message[_PRELUDE_LEN + headers_len : -4]))
            self.messages += 1
            pos += total
        if pos:
            del buf[:pos]


def _parse_headers(data: memoryview) -> dict[str, HeaderValue]:
    """Decode a message's header block."""
    headers: dict[str, HeaderValue] = {}
    n = len(data)
    pos = 0
    try:
        while pos < n:
            name_len = data[pos]
            pos += 1
            if pos + name_len > n:
                raise EventStreamError("event stream: header name overruns the headers")
            name = bytes(data[pos : pos + name_len]).decode("utf-8")
            pos += name_len
            kind = data[pos]
            pos += 1
            value: HeaderValue
            if kind == 0:
                value = True
            elif kind == 1:
                value = False
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                (value,) = fmt.unpack_from(data, pos)
                pos += fmt.size
            elif kind == 6 or kind == 7:
                (length,) = _U16.unpack_from(data, pos)
                pos += 2
                if pos + length > n:
                    raise EventStreamError(f"event stream: header {name!r} value overruns the headers")
                raw = bytes(data[pos : pos + length])
                pos += length
                value = raw if kind == 6 else raw.decode("utf-8")
            elif kind == 9:
                if pos + _UUID_LEN > n:
                    raise EventStreamError(f"event stream: header {name!r} value overruns the headers")
                value = bytes(data[pos : pos + _UUID_LEN])
                pos += _UUID_LEN
            else:
                raise EventStreamError(f"event stream: header {name!r} has unknown value type {kind}")
            if name in headers:
                raise EventStreamError(f"event stream: duplicate header {name!r}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise EventStreamError(f"event stream: malformed headers ({e})") from e
    return headers
