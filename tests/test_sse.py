"""SSEDecoder: event parsing, lossless raw bytes, any split of the input, line endings."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from addon.sse import SSEDecoder, SSEEvent

FIXTURES = Path(__file__).parent / "fixtures"
STREAMS = sorted(p.name for p in FIXTURES.glob("*.sse"))

# Everything at once: BOM, comments, a comment-only block, named events, multi-line
# data, \n, \r\n and \r endings, a field without a colon, id/retry, stray blank lines.
MIXED = (
    b"\xef\xbb\xbf: hello\n"
    b"\n"
    b": OPENROUTER PROCESSING\r\n\r\n"
    b"event: first\r\n"
    b"id: 7\r\n"
    b"data: one\r\n"
    b"data:two\r\n"
    b"data:  three\r\n"
    b"\r\n"
    b"retry: 100\rdata\rdata: x\r\r\n"  # \r ends the data line, \r\n is the blank line
    b"\n"  # a stray blank line
    b"event:second\n"
    b": inline comment\n"
    b'data: {"usage":null}\n'
    b"\n"
    b"data: tail"
)
MIXED_EVENTS = [
    SSEEvent(None, b"", b"\xef\xbb\xbf: hello\n\n"),
    SSEEvent(None, b"", b": OPENROUTER PROCESSING\r\n\r\n"),
    SSEEvent(
        "first",
        b"one\ntwo\n three",
        b"event: first\r\nid: 7\r\ndata: one\r\ndata:two\r\ndata:  three\r\n\r\n",
    ),
    SSEEvent(None, b"\nx", b"retry: 100\rdata\rdata: x\r\r\n"),
    SSEEvent(None, b"", b"\n"),
    SSEEvent("second", b'{"usage":null}', b'event:second\n: inline comment\ndata: {"usage":null}\n\n'),
    SSEEvent(None, b"tail", b"data: tail"),
]


def decode(pieces: Iterable[bytes]) -> list[SSEEvent]:
    """Feed the pieces, then close; all events in order."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.close()
    return events


def test_mixed_input_in_one_piece() -> None:
    assert decode([MIXED]) == MIXED_EVENTS


def test_data_and_raw_are_bytes() -> None:
    event = decode([b"data: a\n\n"])[0]
    assert type(event.data) is bytes
    assert type(event.raw) is bytes


@pytest.mark.parametrize("i", range(len(MIXED) + 1))
def test_mixed_input_split_in_two_anywhere(i: int) -> None:
    assert decode([MIXED[:i], MIXED[i:]]) == MIXED_EVENTS


def test_mixed_input_one_byte_at_a_time() -> None:
    assert decode(MIXED[i : i + 1] for i in range(len(MIXED))) == MIXED_EVENTS


@pytest.mark.parametrize("name", STREAMS)
def test_fixture_every_split_reassembles_and_parses_the_same(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    whole = decode([data])
    assert b"".join(e.raw for e in whole) == data
    assert all(e.raw.endswith(b"\n\n") for e in whole)
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == whole, i
    assert decode(data[i : i + 1] for i in range(len(data))) == whole


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
@pytest.mark.parametrize("name", STREAMS)
def test_fixture_with_other_line_endings(name: str, eol: bytes) -> None:
    data = (FIXTURES / name).read_bytes()
    expected = [(e.event, e.data) for e in decode([data])]
    converted = data.replace(b"\n", eol)
    for pieces in ([converted], [converted[i : i + 1] for i in range(len(converted))]):
        events = decode(pieces)
        assert [(e.event, e.data) for e in events] == expected
        assert b"".join(e.raw for e in events) == converted


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []  # the second \r may still be followed by \n
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [
        SSEEvent(None, b"a", b"data: a\r\n\r\n"),
        SSEEvent(None, b"b", b"data: b\r\n\r\n"),
    ]
    assert decoder.close() == []


def test_cr_only_event_is_released_by_the_next_byte_or_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.feed(b"d") == [SSEEvent(None, b"a", b"data: a\r\r")]
    assert decoder.feed(b"ata: b\r\r") == []
    assert decoder.close() == [SSEEvent(None, b"b", b"data: b\r\r")]


def test_close_returns_event_truncated_mid_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'event: message_delta\ndata: {"usage": {"output') == []
    assert decoder.close() == [
        SSEEvent("message_delta", b'{"usage": {"output', b'event: message_delta\ndata: {"usage": {"output')
    ]
    assert decoder.close() == []


def test_close_returns_lines_without_terminating_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\ndata: 1\n") == []
    assert decoder.close() == [SSEEvent("x", b"1", b"event: x\ndata: 1\n")]


def test_close_on_empty_decoder() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.close() == []


def test_decoder_is_reusable_after_close() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: partial")
    decoder.close()
    assert decoder.feed(b"data: next\n\n") == [SSEEvent(None, b"next", b"data: next\n\n")]


def test_field_parsing_rules() -> None:
    events = decode(
        [
            b"data\n\n"  # no colon: field with empty value
            b"data:\n\n"  # empty value
            b"data: \n\n"  # one space stripped -> empty
            b"data:   x  \n\n"  # only ONE leading space stripped, trailing kept
            b"event: a\nevent: b\ndata: 1\n\n"  # the last event name wins
            b"Data: no\nDATA: no\n\n"  # field names are case-sensitive
            b"event: \xff\n\n"  # invalid UTF-8 in the name does not raise
        ]
    )
    assert [(e.event, e.data) for e in events] == [
        (None, b""),
        (None, b""),
        (None, b""),
        (None, b"  x  "),
        ("b", b"1"),
        (None, b""),
        ("\ufffd", b""),
    ]


def test_garbage_bytes_do_not_raise_and_reassemble() -> None:
    garbage = bytes((i * 7919 + 13) % 256 for i in range(5000))
    for size in (1, 3, 64, 5000):
        events = decode(garbage[i : i + size] for i in range(0, len(garbage), size))
        assert b"".join(e.raw for e in events) == garbage


def test_long_line_in_many_chunks_is_linear() -> None:
    # A 4 MB data line in 4 KB chunks: rescanning the buffer on every feed would
    # look at ~2 GB (several seconds); a linear decoder needs well under 0.1 s here.
    line = b"data: " + b"x" * (4 << 20) + b"\n\n"
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    start = time.thread_time()  # this thread's CPU: a loaded machine does not count
    for i in range(0, len(line), 4096):
        events += decoder.feed(line[i : i + 4096])
    elapsed = time.thread_time() - start
    assert len(events) == 1
    assert len(events[0].data) == 4 << 20
    assert elapsed < 1.5


def test_a_large_event_costs_the_same_per_byte_however_finely_it_arrives() -> None:
    """An 8 MB event (a base64 image in an image stream) in 4 KiB pieces: each feed looks at the
    new piece, not again at all the decoder holds (which made it quadratic: 275 ms instead of
    20 ms here, on the proxy's event loop)."""
    event = b"event: image_generation.partial_image\ndata: " + b"QUJD" * (2 << 20) + b"\n\n"

    def seconds(piece: int) -> float:
        # This thread's CPU time, not the wall clock: other processes on a loaded machine (CI, a
        # suite beside it) must not make a linear decoder look quadratic.
        best = float("inf")
        for _ in range(2):
            decoder, start = SSEDecoder(), time.thread_time()
            events = [e for i in range(0, len(event), piece) for e in decoder.feed(event[i : i + piece])]
            best = min(best, time.thread_time() - start)
            assert [e.raw for e in events] == [event]
        return best

    # Quadratic, the 4 KiB pieces cost ~14 times the 1 MiB ones; linear, about the same.
    assert seconds(4096) < 5 * seconds(1 << 20) + 0.03
