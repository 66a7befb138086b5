"""Incremental HTTP content decoding (Content-Encoding) for streamed bodies, and what a failure to
decode a whole body (mitmproxy's) is called on a row, a log line or a refusal."""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from backports import zstd  # type: ignore[no-redef]
    except ImportError:
        zstd = None  # type: ignore[assignment]


class DecodeError(Exception):
    """Unsupported content-encoding, or corrupt compressed data."""


class BodyNotDecodable(ValueError):
    """A body whose Content-Encoding could not be undone. Its text is ``decode_failure``'s: the
    encoding and the error's type, never a byte of the body."""


_ENCODING_SHOWN = 40  # characters of a Content-Encoding named in a failure (a header: any length)


def decode_failure(encoding: str | None, exc: BaseException) -> str:
    """What a failure to undo ``encoding`` was, without content: "content-encoding 'utf-8' not
    decodable (UnicodeDecodeError)". Never the exception's text: for a text codec (``ascii``,
    ``utf-8``, ``utf-16``, ``idna``...) mitmproxy's ValueError quotes the repr of the
    UnicodeDecodeError, which holds the whole body. For mitmproxy's ValueError the type named is
    that of the error it wraps (raised while handling it); another (``rot13``'s TypeError, raised
    after a lookup's KeyError) is named as it is."""
    shown = encoding or ""
    if len(shown) > _ENCODING_SHOWN:
        shown = shown[:_ENCODING_SHOWN] + "..."
    cause = exc.__context__ if type(exc) is ValueError and exc.__context__ is not None else exc
    return f"content-encoding {shown!r} not decodable ({type(cause).__name__})"


class _Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


_GZIP_MAGIC = b"\x1f\x8b"


class _Gzip:
    """gzip, several members allowed, with NUL padding between them (as ``gzip.decompress``).

    Bytes after a member that cannot start another (a stray CRLF) end the body, as HTTP
    clients such as urllib3 read it: ignored, not an error.
    """

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._ended = False

    def decode(self, data: bytes) -> bytes:
        out = b""
        while data and not self._ended:
            if self._obj.eof:
                data = data.lstrip(b"\x00")
                if not data:
                    break
                if not _GZIP_MAGIC.startswith(data[:2]):
                    self._ended = True
                    break
                self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += self._obj.decompress(data)
            data = self._obj.unused_data if self._obj.eof else b""
        return out

    def flush(self) -> bytes:
        return self._obj.flush()


class _Deflate:
    """HTTP "deflate": zlib-wrapped as the RFC says, or raw deflate as some servers send it."""

    def __init__(self) -> None:
        self._obj: zlib._Decompress | None = None
        self._head = b""

    def decode(self, data: bytes) -> bytes:
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            is_zlib = b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        if self._obj.eof:
            return b""  # trailing bytes after the stream: ignored
        return self._obj.decompress(data)

    def flush(self) -> bytes:
        return b"" if self._obj is None else self._obj.flush()


class _Brotli:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def decode(self, data: bytes) -> bytes:
        if not data or self._obj.is_finished():
            return b""  # trailing bytes after the stream: ignored
        return self._obj.process(data)

    def flush(self) -> bytes:
        return b""


class _Zstd:
    """zstd, several frames allowed."""

    def __init__(self) -> None:
        if zstd is None:
            raise DecodeError("zstd content-encoding needs backports.zstd (Python < 3.14)")
        self._obj = zstd.ZstdDecompressor()

    def decode(self, data: bytes) -> bytes:
        out = b""
        while data:
            if self._obj.eof:
                self._obj = zstd.ZstdDecompressor()
            out += self._obj.decompress(data)
            data = self._obj.unused_data if self._obj.eof else b""
        return out

    def flush(self) -> bytes:
        return b""


_DECODERS: dict[str, type[_Decoder]] = {
    "gzip": _Gzip,
    "x-gzip": _Gzip,
    "deflate": _Deflate,
    "br": _Brotli,
    "zstd": _Zstd,
}
_ERRORS: tuple[type[Exception], ...] = (zlib.error, brotli.error, EOFError) + (
    (zstd.ZstdError,) if zstd is not None else ()
)


class StreamDecoder:
    """Decode a body chunk by chunk. ``"gzip, br"`` is undone in reverse order (br, then gzip)."""

    def __init__(self, content_encoding: str | None) -> None:
        names = [n.strip().lower() for n in (content_encoding or "").split(",")]
        chain: list[_Decoder] = []
        for name in reversed(names):
            if name in ("", "identity"):
                continue
            factory = _DECODERS.get(name)
            if factory is None:
                raise DecodeError(f"unsupported content-encoding: {name!r}")
            chain.append(factory())
        self._chain = chain

    @property
    def passthrough(self) -> bool:
        """True when the body is not encoded (``decode`` returns its input)."""
        return not self._chain

    def decode(self, chunk: bytes) -> bytes:
        """Decode the next piece of the body; raise ``DecodeError`` on corrupt data."""
        try:
            for d in self._chain:
                if not chunk:
                    return b""
                chunk = d.decode(chunk)
        except _ERRORS as e:
            raise DecodeError(f"corrupt encoded body: {e}") from e
        return chunk

    def flush(self) -> bytes:
        """End of body: return whatever the decoders still hold (a truncated body is not an error)."""
        data = b""
        try:
            for d in self._chain:
                data = (d.decode(data) if data else b"") + d.flush()
        except _ERRORS as e:
            raise DecodeError(f"corrupt encoded body: {e}") from e
        return data
