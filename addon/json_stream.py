"""Incremental splitter for a streamed JSON array (Gemini's ``streamGenerateContent`` without ``alt=sse``).

Bytes go in split anywhere; each complete top-level element comes out as its exact
JSON text (``b'{...}'``), without the separating commas and whitespace. A top-level
value that is not an array (an error object sent instead of the array) comes out as
one element. Work is O(n) over the whole stream: a regular expression skips from one
bracket to the next (whole strings at once), string and nesting state is kept between
chunks, and nothing already scanned is scanned again.
"""

from __future__ import annotations

import re

_WS = b" \t\r\n"
# Outside strings: skip everything but brackets, whole strings included, in one step; it stops
# at a bracket, at the opening quote of a string not complete yet, or at the end of the buffer.
_SKIP = re.compile(rb'(?:[^"{}\[\]]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
_STRING = re.compile(rb'["\\]')  # inside strings: the end, or an escape
_SCALAR_END = re.compile(rb"[,\]\s]")  # a bare number / true / false / null ends here
_BOM = b"\xef\xbb\xbf"

# states
_START = 0  # before the top-level value
_BETWEEN = 1  # inside the top-level array, between elements
_ELEMENT = 2  # inside a nested object / array / string element
_SCALAR = 3  # inside a bare top-level scalar element
_END = 4  # after the top-level value: the rest is ignored


class JSONArrayDecoder:
    """Split a streamed top-level JSON array into its elements."""

    __slots__ = ("_buf", "_depth", "_elem_start", "_escape", "_in_string", "_pos", "_single", "_state")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte of _buf to look at
        self._state = _START
        self._elem_start = 0  # where the current element starts in _buf
        self._depth = 0  # nesting depth inside the current element
        self._in_string = False
        self._escape = False  # the previous byte was a backslash inside a string
        self._single = False  # the top-level value is not an array: it is the one element

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the elements they complete (the incomplete tail is kept)."""
        if not chunk:
            return []
        self._buf += chunk
        return self._run()

    def close(self) -> list[bytes]:
        """End of input: a finished bare scalar, or the unterminated tail of an element, if any."""
        out = self._run()
        tail = (
            bytes(self._buf[self._elem_start :]).strip(_WS + b",")
            if self._state in (_ELEMENT, _SCALAR)
            else b""
        )
        if tail:
            out.append(tail)
        self._buf = bytearray()
        self._pos = self._elem_start = self._depth = 0
        self._in_string = self._escape = False
        self._state = _END
        return out

    def _run(self) -> list[bytes]:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        out: list[bytes] = []
        while pos < n:
            state = self._state
            if state == _ELEMENT:
                pos = self._scan_element(buf, pos, n, out)
            elif state == _BETWEEN:
                byte = buf[pos]
                if byte in _WS or byte == 0x2C:  # whitespace or ","
                    pos += 1
                elif byte == 0x5D:  # "]": the array is finished
                    self._state = _END
                    pos += 1
                else:
                    pos = self._begin(buf, pos)
            elif state == _START:
                if buf.startswith(_BOM, pos):
                    pos += len(_BOM)
                    continue
                if n - pos < len(_BOM) and _BOM.startswith(buf[pos:n]):
                    break  # maybe the start of a BOM: wait for more bytes
                byte = buf[pos]
                if byte in _WS:
                    pos += 1
                elif byte == 0x5B:  # "[": the expected array
                    self._state = _BETWEEN
                    pos += 1
                else:  # any other value: it is the one element
                    self._single = True
                    pos = self._begin(buf, pos)
            elif state == _SCALAR:
                m = _SCALAR_END.search(buf, pos)
                if m is None:
                    pos = n
                else:
                    pos = m.start()
                    self._emit(buf, pos, out)
            else:  # _END: trailing bytes are ignored
                pos = n
        # drop what is consumed; keep the unfinished element, which then starts at 0
        keep = self._elem_start if self._state in (_ELEMENT, _SCALAR) else pos
        if keep:
            del buf[:keep]
            pos -= keep
        self._elem_start = 0
        self._pos = pos
        return out

    def _begin(self, buf: bytearray, pos: int) -> int:
        """Start an element at ``pos``; return where to continue."""
        self._elem_start = pos
        byte = buf[pos]
        if byte == 0x7B or byte == 0x5B:  # "{" or "["
            self._state = _ELEMENT
            self._depth = 1
            self._in_string = False
        elif byte == 0x22:  # '"'
            self._state = _ELEMENT
            self._depth = 0
            self._in_string = True
        else:
            self._state = _SCALAR
        return pos + 1

    def _scan_element(self, buf: bytearray, pos: int, n: int, out: list[bytes]) -> int:
        """Advance through an object / array / string element; emit it when it closes."""
        while pos < n:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                m = _STRING.search(buf, pos)
                if m is None:
                    return n
                pos = m.end()
                if buf[m.start()] == 0x5C:  # backslash: skip the escaped byte (maybe in the next chunk)
                    self._escape = True
                    continue
                self._in_string = False
                if self._depth == 0:  # a top-level string element
                    self._emit(buf, pos, out)
                    return pos
                continue
            m = _SKIP.match(buf, pos)  # always matches (maybe nothing)
            if m is not None:
                pos = m.end()
            if pos >= n:
                return n
            byte = buf[pos]
            pos += 1
            if byte == 0x22:  # an unfinished string: scan it incrementally
                self._in_string = True
            elif byte == 0x7B or byte == 0x5B:
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._emit(buf, pos, out)
                    return pos
        return pos

    def _emit(self, buf: bytearray, end: int, out: list[bytes]) -> None:
        """Output ``buf[elem_start:end]`` and return to the array (or to the end)."""
        out.append(bytes(buf[self._elem_start : end]))
        self._elem_start = end
        self._state = _END if self._single else _BETWEEN
