"""addon.header_fields answers exactly what mitmproxy's own header lookups answer."""

from __future__ import annotations

import gzip

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addon.header_fields import content_of, header, header_all, host_header, pop_header, set_content

FIELDS = [
    (b"Host", b"api.openai.com"),
    (b"Content-Type", b"application/json"),
    (b"authorization", b"Bearer sk-one"),
    (b"AUTHORIZATION", b"Bearer sk-two"),
    (b"X-Metering-Tags", b'{"env": "staging"}'),
    (b"x-odd", b"caf\xc3\xa9 \xff"),  # UTF-8 and a byte that is not
    (b"x-empty", b""),
]
NAMES = ["host", "content-type", "authorization", "x-metering-tags", "x-odd", "x-empty", "missing"]


@pytest.mark.parametrize("name", NAMES)
def test_lookups_match_mitmproxy(name: str) -> None:
    headers = http.Headers(FIELDS)
    assert header(headers, name.encode()) == headers.get(name)
    assert header_all(headers, name.encode()) == headers.get_all(name)


@pytest.mark.parametrize("name", NAMES)
def test_pop_matches_mitmproxy(name: str) -> None:
    ours, theirs = http.Headers(FIELDS), http.Headers(FIELDS)
    assert pop_header(ours, name.encode()) == theirs.pop(name, None)
    assert ours.fields == theirs.fields


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/2.0", "HTTP/3"])
@pytest.mark.parametrize("authority", ["", "api.openai.com:443"])
@pytest.mark.parametrize("host", [None, "other.example"])
def test_host_header_matches_mitmproxy(version: str, authority: str, host: str | None) -> None:
    request = tutils.treq(http_version=version.encode(), authority=authority.encode())
    request.headers = http.Headers([(b"Host", host.encode())] if host is not None else [])
    assert host_header(request) == request.host_header


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        (None, b'{"a": 1}'),
        ("", b'{"a": 1}'),
        ("identity", b'{"a": 1}'),
        ("gzip", gzip.compress(b'{"a": 1}')),
        ("gzip", b"not gzip"),
        ("nonsense", b"x"),
    ],
)
def test_content_matches_mitmproxy(encoding: str | None, raw: bytes) -> None:
    response = tutils.tresp()
    response.headers = http.Headers(
        [(b"content-encoding", encoding.encode())] if encoding is not None else []
    )
    response.raw_content = raw
    try:
        expected: bytes | type[Exception] | None = response.get_content()
    except ValueError:
        expected = ValueError
    try:
        got: bytes | type[Exception] | None = content_of(response)
    except ValueError:
        got = ValueError
    assert got == expected
    response.raw_content = None
    assert content_of(response) is None


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"Content-Length", b"3"), (b"x-a", b"1")],
        [(b"content-length", b"3"), (b"CONTENT-LENGTH", b"4")],
        [(b"Transfer-Encoding", b"chunked")],
        [(b"transfer-encoding", b"")],
        [(b"Content-Encoding", b"gzip"), (b"Content-Length", b"3")],
        [(b"content-encoding", b""), (b"content-length", b"3")],
        [(b"content-encoding", b"nonsense")],
    ],
)
def test_set_content_matches_mitmproxy(fields: list[tuple[bytes, bytes]]) -> None:
    ours, theirs = tutils.treq(), tutils.treq()
    ours.headers, theirs.headers = http.Headers(fields), http.Headers(fields)
    set_content(ours, b'{"stream": true}')
    theirs.content = b'{"stream": true}'
    assert ours.headers.fields == theirs.headers.fields
    assert ours.raw_content == theirs.raw_content
