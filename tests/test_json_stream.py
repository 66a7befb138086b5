"""JSONArrayDecoder: a streamed JSON array split at every byte, strings with escapes, O(n)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from addon.json_stream import JSONArrayDecoder

FIXTURES = Path(__file__).parent / "fixtures"

# Brackets, braces, commas and escaped quotes / backslashes inside strings; CRLF between elements.
TRICKY = (
    b'[{"a": "x\\"]}[{,", "b": [1, {"c": "\\\\"}], "d": "\\\\\\""},\r\n'
    b'{"e": "\\u00e9 \xc3\xa9"}\n, "str\\"ing", 12, -3.5e+2, true, null, [1, [2, []]] ,{}]'
)
TRICKY_ELEMENTS = [
    b'{"a": "x\\"]}[{,", "b": [1, {"c": "\\\\"}], "d": "\\\\\\""}',
    b'{"e": "\\u00e9 \xc3\xa9"}',
    b'"str\\"ing"',
    b"12",
    b"-3.5e+2",
    b"true",
    b"null",
    b"[1, [2, []]]",
    b"{}",
]


def split(pieces: Iterable[bytes]) -> list[bytes]:
    decoder = JSONArrayDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.close()


def test_elements_are_the_exact_json_texts() -> None:
    assert split([TRICKY]) == TRICKY_ELEMENTS
    assert [json.loads(e) for e in TRICKY_ELEMENTS][:3] == [
        {"a": 'x"]}[{,', "b": [1, {"c": "\\"}], "d": '\\"'},
        {"e": "é é"},
        'str"ing',
    ]


def test_split_in_two_at_every_byte_and_one_byte_at_a_time() -> None:
    for i in range(len(TRICKY) + 1):
        assert split([TRICKY[:i], TRICKY[i:]]) == TRICKY_ELEMENTS, i
    assert split(TRICKY[i : i + 1] for i in range(len(TRICKY))) == TRICKY_ELEMENTS


def test_gemini_fixture_split_at_every_byte() -> None:
    data = (FIXTURES / "gemini_stream.json").read_bytes()
    assert data.startswith(b"[{\n") and data.count(b"},\r\n{") == 2
    expected = split([data])
    assert len(expected) == 3
    assert [json.loads(e)["usageMetadata"]["totalTokenCount"] for e in expected] == [145, 154, 167]
    for i in range(len(data) + 1):
        assert split([data[:i], data[i:]]) == expected, i
    assert split(data[i : i + 1] for i in range(len(data))) == expected


def test_elements_come_out_as_soon_as_they_close() -> None:
    decoder = JSONArrayDecoder()
    assert decoder.feed(b'[{"a":1}') == [b'{"a":1}']
    assert decoder.feed(b',\r\n{"b":') == []
    assert decoder.feed(b"2}") == [b'{"b":2}']
    assert decoder.feed(b"]") == []
    assert decoder.close() == []


def test_a_bare_scalar_ends_at_the_next_separator_or_at_close() -> None:
    decoder = JSONArrayDecoder()
    assert decoder.feed(b"[12") == []
    assert decoder.feed(b"34") == []
    assert decoder.feed(b" ,5") == [b"1234"]
    assert decoder.close() == [b"5"]


@pytest.mark.parametrize(
    ("data", "elements"),
    [
        (b"", []),
        (b"[]", []),
        (b"  [ ]  ", []),
        (b"\xef\xbb\xbf[1]", [b"1"]),
        (
            b'{"error": {"code": 400, "message": "bad [key]"}}',
            [b'{"error": {"code": 400, "message": "bad [key]"}}'],
        ),
        (b'[{"a":1}] trailing {"b":2}', [b'{"a":1}']),
        (b'[{"a":1},{"b":', [b'{"a":1}', b'{"b":']),  # a cut stream: the tail comes out unterminated
        (b'[{"a":"\\', [b'{"a":"\\']),
        (b"[,,{},,]", [b"{}"]),
    ],
)
def test_edge_cases(data: bytes, elements: list[bytes]) -> None:
    assert split([data]) == elements
    assert split(data[i : i + 1] for i in range(len(data))) == elements


def test_work_is_linear_in_the_input() -> None:
    # One huge element fed in small chunks must not be rescanned on every chunk.
    element = json.dumps({"text": 'x"\\' * 50_000, "parts": [{"n": i} for i in range(20_000)]}).encode()
    data = b"[" + element + b",\r\n" + element + b"]"

    def timed(chunk: int) -> float:
        decoder = JSONArrayDecoder()
        start = time.thread_time()  # this thread's CPU: a loaded machine does not count
        out: list[bytes] = []
        for i in range(0, len(data), chunk):
            out += decoder.feed(data[i : i + chunk])
        assert out == [element, element]
        return time.thread_time() - start

    whole = min(timed(len(data)) for _ in range(3))
    small = min(timed(64) for _ in range(3))
    # 64-byte chunks cost per-call overhead, but a quadratic rescan would be ~10,000x slower.
    assert small < whole * 40 + 0.05
