"""AWS event-stream framing: known vectors, every split point, CRC checks, corrupt frames."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable
from typing import Any

import pytest

from addon.aws_eventstream import EventMessage, EventStreamDecoder, EventStreamError

# --- a small encoder (the test's own; the addon only decodes) ---------------------------------


def header(name: str, value: Any, kind: int | None = None) -> bytes:
    """One encoded header; the type is inferred from the value unless given."""
    raw_name = name.encode()
    out = bytes([len(raw_name)]) + raw_name
    if kind is None:
        kind = {bool: 0, int: 4, bytes: 6, str: 7}[type(value)]
        if kind == 0 and value is False:
            kind = 1
    out += bytes([kind])
    if kind in (0, 1):
        return out
    if kind in (2, 3, 4, 5, 8):
        return out + struct.pack({2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}[kind], value)
    if kind == 9:
        return out + value
    data = value.encode() if isinstance(value, str) else value
    return out + struct.pack(">H", len(data)) + data


def message(headers: dict[str, Any] | bytes, payload: bytes = b"") -> bytes:
    """An encoded message with both CRCs."""
    block = headers if isinstance(headers, bytes) else b"".join(header(k, v) for k, v in headers.items())
    total = 16 + len(block) + len(payload)
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: bytes) -> bytes:
    return message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, payload
    )


def decode(pieces: Iterable[bytes]) -> list[EventMessage]:
    decoder = EventStreamDecoder()
    out: list[EventMessage] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.close()


# --- vectors from AWS's own event-stream test suite (botocore tests/unit/test_eventstream.py) ---

EMPTY_MESSAGE = b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff"
PAYLOAD_ONE_STR_HEADER = (
    b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10"
    b"application/json{'foo':'bar'}\x8d\x9c\x08\xb1"
)
ALL_HEADER_TYPES = (
    b"\x00\x00\x00\x62\x00\x00\x00\x52\x03\xb5\xcb\x9c"
    b"\x010\x00\x011\x01\x012\x02\x02\x013\x03\x00\x03"
    b"\x014\x04\x00\x00\x00\x04\x015\x05\x00\x00\x00\x00\x00\x00\x00\x05"
    b"\x016\x06\x00\x05bytes\x017\x07\x00\x04utf8"
    b"\x018\x08\x00\x00\x00\x00\x00\x00\x00\x08\x019\x090123456789abcdef"
    b"\x63\x35\x36\x71"
)
NEGATIVE_INT8 = b"\x00\x00\x00\x17\x00\x00\x00\x07)\x86\x01X\x04byte\x02\xff\xc2\xf8i\xdc"
VECTORS = EMPTY_MESSAGE + PAYLOAD_ONE_STR_HEADER + ALL_HEADER_TYPES + NEGATIVE_INT8
VECTOR_MESSAGES = [
    EventMessage({}, b""),
    EventMessage({"content-type": "application/json"}, b"{'foo':'bar'}"),
    EventMessage(
        {
            "0": True,
            "1": False,
            "2": 2,
            "3": 3,
            "4": 4,
            "5": 5,
            "6": b"bytes",
            "7": "utf8",
            "8": 8,
            "9": b"0123456789abcdef",
        },
        b"",
    ),
    EventMessage({"byte": -1}, b""),
]

# A ConverseStream as Bedrock frames it (payloads carry a "p" padding field).
CONVERSE = b"".join(
    [
        event("messageStart", b'{"p":"abcdefghij","role":"assistant"}'),
        event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abcd"}'),
        event("contentBlockStop", b'{"contentBlockIndex":0,"p":"abcdefghijklmnopq"}'),
        event("messageStop", b'{"p":"abcdefgh","stopReason":"end_turn"}'),
        event(
            "metadata",
            b'{"metrics":{"latencyMs":512},"p":"ab","usage":{"inputTokens":9,"outputTokens":2,"totalTokens":11}}',
        ),
    ]
)


def test_decodes_aws_reference_vectors() -> None:
    assert decode([VECTORS]) == VECTOR_MESSAGES


def test_the_test_encoder_matches_the_reference_vectors() -> None:
    assert message({}) == EMPTY_MESSAGE
    assert message({"content-type": "application/json"}, b"{'foo':'bar'}") == PAYLOAD_ONE_STR_HEADER
    assert message(header("byte", -1, kind=2)) == NEGATIVE_INT8


def test_reference_vectors_split_in_two_at_every_byte_and_one_byte_at_a_time() -> None:
    for i in range(len(VECTORS) + 1):
        assert decode([VECTORS[:i], VECTORS[i:]]) == VECTOR_MESSAGES, i
    assert decode(VECTORS[i : i + 1] for i in range(len(VECTORS))) == VECTOR_MESSAGES


def test_converse_stream_split_at_every_byte() -> None:
    expected = decode([CONVERSE])
    assert [m.event_type for m in expected] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert {m.message_type for m in expected} == {"event"}
    assert expected[1].payload == b'{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abcd"}'
    for i in range(len(CONVERSE) + 1):
        assert decode([CONVERSE[:i], CONVERSE[i:]]) == expected, i
    assert decode(CONVERSE[i : i + 1] for i in range(len(CONVERSE))) == expected
    assert decode(CONVERSE[i : i + 3] for i in range(0, len(CONVERSE), 3)) == expected


def test_messages_come_out_when_complete_and_a_cut_tail_is_held() -> None:
    decoder = EventStreamDecoder()
    first, second = message({"n": 1}, b"one"), message({"n": 2}, b"two")
    assert decoder.feed(first + second[:20]) == [EventMessage({"n": 1}, b"one")]
    assert decoder.buffered == 20
    assert decoder.close() == []
    assert decoder.messages == 1


def test_utf8_and_timestamp_and_uuid_headers() -> None:
    data = message(
        header("name", "日本語")
        + header(":date", 1_764_321_600_000, kind=8)
        + header("id", bytes(range(16)), kind=9)
        + header("big", -(2**40), kind=5)
        + header("short", 513, kind=3),
        b"\x00\xff",
    )
    assert decode([data]) == [
        EventMessage(
            {
                "name": "日本語",
                ":date": 1_764_321_600_000,
                "id": bytes(range(16)),
                "big": -(2**40),
                "short": 513,
            },
            b"\x00\xff",
        )
    ]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (flip(PAYLOAD_ONE_STR_HEADER, 1), "prelude CRC mismatch in message 1"),  # total length
        (flip(PAYLOAD_ONE_STR_HEADER, 9), "prelude CRC mismatch in message 1"),  # the CRC itself
        (flip(PAYLOAD_ONE_STR_HEADER, 20), "message CRC mismatch in message 1"),  # a header byte
        (flip(PAYLOAD_ONE_STR_HEADER, 50), "message CRC mismatch in message 1"),  # a payload byte
        (flip(PAYLOAD_ONE_STR_HEADER, -1), "message CRC mismatch in message 1"),  # the message CRC
        (EMPTY_MESSAGE + flip(EMPTY_MESSAGE, 15), "message CRC mismatch in message 2"),
        (b'{"message":"The security token included in the request is invalid."}', "prelude CRC mismatch"),
        (message(header("test", 0x61736466) + header("test", 0x61736466)), "duplicate header 'test'"),
        (message(b"\x01a\x0a"), "header 'a' has unknown value type 10"),
        (message(b"\x05ab"), "header name overruns the headers"),
        (message(b"\x01a\x07\x00\x09abc"), "header 'a' value overruns the headers"),
        (message(b"\x01a\x04\x00\x01"), "malformed headers"),
        (message(b"\x01a\x07\x00\x02\xff\xfe"), "malformed headers"),
    ],
)
def test_corrupt_frames_raise_a_clear_error(data: bytes, error: str) -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError, match=error):
        decoder.feed(data)
    assert decoder.error is not None and error in decoder.error
    # the decoder is stopped: later input is ignored, not misread
    assert decoder.feed(EMPTY_MESSAGE) == []
    assert decoder.close() == []


@pytest.mark.parametrize(
    ("total", "headers_len", "error"),
    [
        (15, 0, "impossible message length 15"),
        (2**31, 0, "impossible message length 2147483648"),
        (40, 30, "impossible headers length 30"),
        (300_000, 200_000, "impossible headers length 200000"),
    ],
)
def test_impossible_lengths_are_rejected_from_the_prelude(total: int, headers_len: int, error: str) -> None:
    prelude = struct.pack(">II", total, headers_len)
    prelude += struct.pack(">I", zlib.crc32(prelude))
    with pytest.raises(EventStreamError, match=error):
        EventStreamDecoder().feed(prelude)


def test_the_error_carries_the_messages_decoded_before_it() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(EMPTY_MESSAGE) == [EventMessage({}, b"")]
    with pytest.raises(EventStreamError) as info:
        decoder.feed(PAYLOAD_ONE_STR_HEADER + NEGATIVE_INT8 + flip(EMPTY_MESSAGE, 12) + EMPTY_MESSAGE)
    assert info.value.messages == [VECTOR_MESSAGES[1], VECTOR_MESSAGES[3]]
    assert decoder.messages == 3
    assert str(info.value) == "event stream: message CRC mismatch in message 4"


def test_work_is_linear_in_the_input() -> None:
    # A 4 MB payload fed in 100-byte chunks: each chunk is O(1) until the message is whole.
    big = message({":event-type": "chunk"}, b"x" * 4_000_000)

    def timed(chunk: int) -> float:
        decoder = EventStreamDecoder()
        start = time.thread_time()  # this thread's CPU: a loaded machine does not count
        out: list[EventMessage] = []
        for i in range(0, len(big), chunk):
            out += decoder.feed(big[i : i + chunk])
        assert len(out) == 1 and len(out[0].payload) == 4_000_000
        return time.thread_time() - start

    whole = min(timed(len(big)) for _ in range(3))
    small = min(timed(100) for _ in range(2))
    # 40,000 feed calls; a rescan per call would parse ~80 GB.
    assert small < whole + 0.5
