"""mitmproxy header lookups in one pass over the fields, for the per-call path.

mitmproxy's ``Headers.get`` / ``get_all`` / ``pop`` lower the name of every field through two
method calls on each lookup, and ``get`` and ``pop`` of a missing header raise and catch a
``KeyError`` inside: about 2 us a lookup with 3 headers, 4.5 with an SDK's 16. These read
``headers.fields`` (its public ``(name, value)`` byte pairs) directly and answer exactly what
mitmproxy's would: names compared ASCII-lowercased (``bytes.lower``, as ``Headers._kconv``),
values decoded as ``Headers`` decodes them, repeated fields joined with ``", "`` as ``get`` folds
them. About 0.4 us with 3 headers, 1 with 16.

``name`` is always given in lower case, as bytes.
"""

from __future__ import annotations

from mitmproxy import http

from addon.content_decoding import BodyNotDecodable, decode_failure


def _native(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")  # as mitmproxy.http._native


def header_all(headers: http.Headers, name: bytes) -> list[str]:
    """``headers.get_all(name)``."""
    return [_native(value) for key, value in headers.fields if key.lower() == name]


def header(headers: http.Headers, name: bytes) -> str | None:
    """``headers.get(name)``: None when absent, repeated fields folded with ``", "``."""
    values = [value for key, value in headers.fields if key.lower() == name]
    if not values:
        return None
    if len(values) == 1:
        return _native(values[0])
    return ", ".join([_native(value) for value in values])


def pop_header(headers: http.Headers, name: bytes) -> str | None:
    """``headers.pop(name, None)``: the folded value, every field of that name removed."""
    value = header(headers, name)
    if value is not None:
        headers.fields = tuple(field for field in headers.fields if field[0].lower() != name)
    return value


def host_header(request: http.Request) -> str | None:
    """``request.host_header``: HTTP/2 and 3's authority, else the Host header."""
    if request.is_http2 or request.is_http3:
        return request.authority or header(request.headers, b"host")
    return header(request.headers, b"host")


def content_of(message: http.Message) -> bytes | None:
    """``message.get_content()``: a body without a Content-Encoding is its raw bytes; one with
    any is decoded by mitmproxy. Whatever that raises (ValueError, whose text may quote the whole
    body; TypeError for a str-to-str codec such as ``rot13``) becomes ``BodyNotDecodable`` (a
    ValueError), its text and traceback free of the body."""
    raw = message.raw_content
    encoding = header(message.headers, b"content-encoding")
    if raw is None or not encoding:
        return raw
    try:
        return message.get_content()
    except Exception as exc:  # any codec's failure: the body cannot be read
        raise BodyNotDecodable(decode_failure(encoding, exc)) from None


def set_content(message: http.Message, value: bytes) -> None:
    """``message.content = value``: without a Content-Encoding the bytes go in as they are and
    Content-Length follows them (unless a Transfer-Encoding is set), as mitmproxy's
    ``set_content`` does; with one, mitmproxy encodes them."""
    if header(message.headers, b"content-encoding"):
        message.content = value
        return
    message.raw_content = value
    if header(message.headers, b"transfer-encoding") is None:
        message.headers["content-length"] = str(len(value))
