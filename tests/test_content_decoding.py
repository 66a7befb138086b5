"""StreamDecoder: every supported Content-Encoding, incremental, any split, errors."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import brotli
import pytest
from backports import zstd

from addon.content_decoding import DecodeError, StreamDecoder

BODY = (Path(__file__).parent / "fixtures" / "anthropic_stream.sse").read_bytes()


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # RFC 9110 deflate: zlib-wrapped
    "br": brotli.compress,
    "zstd": zstd.compress,
}


def run(encoding: str | None, pieces: Iterable[bytes]) -> bytes:
    decoder = StreamDecoder(encoding)
    out = b"".join(decoder.decode(p) for p in pieces)
    return out + decoder.flush()


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_identity_passes_through(encoding: str | None) -> None:
    decoder = StreamDecoder(encoding)
    assert decoder.passthrough is True
    assert decoder.decode(b"abc") == b"abc"
    assert decoder.decode(b"") == b""
    assert decoder.flush() == b""


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_whole_body(encoding: str) -> None:
    decoder = StreamDecoder(encoding)
    assert decoder.passthrough is False
    assert run(encoding, [ENCODERS[encoding](BODY)]) == BODY


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_split_in_two_at_every_byte_and_one_byte_at_a_time(encoding: str) -> None:
    encoded = ENCODERS[encoding](BODY)
    for i in range(len(encoded) + 1):
        assert run(encoding, [encoded[:i], encoded[i:]]) == BODY, i
    assert run(encoding, (encoded[i : i + 1] for i in range(len(encoded)))) == BODY


def test_raw_deflate_is_accepted_too() -> None:
    encoded = raw_deflate(BODY)
    assert run("deflate", [encoded]) == BODY
    assert run("deflate", (encoded[i : i + 1] for i in range(len(encoded)))) == BODY


def test_encoding_names_are_case_insensitive() -> None:
    assert run("GZip", [gzip.compress(BODY)]) == BODY
    assert run(" BR ", [brotli.compress(BODY)]) == BODY


def test_encoding_list_is_decoded_in_reverse_order() -> None:
    encoded = brotli.compress(gzip.compress(BODY))  # gzip applied first, then br
    assert run("gzip, br", [encoded]) == BODY
    assert run("gzip,identity, br", (encoded[i : i + 5] for i in range(0, len(encoded), 5))) == BODY


@pytest.mark.parametrize("encoding", ["compress", "bogus", "gzip, bogus"])
def test_unknown_encoding_fails_at_construction(encoding: str) -> None:
    with pytest.raises(DecodeError, match="unsupported content-encoding"):
        StreamDecoder(encoding)


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_corrupt_data_raises_decode_error(encoding: str) -> None:
    decoder = StreamDecoder(encoding)
    with pytest.raises(DecodeError, match="corrupt encoded body"):
        decoder.decode(b"this is not compressed at all, not even a little bit")


def test_corrupt_deflate_raises_decode_error() -> None:
    decoder = StreamDecoder("deflate")
    with pytest.raises(DecodeError):
        decoder.decode(b"\xff\xff\xff\xff not deflate")


def stream_encode(encoding: str, parts: list[bytes]) -> list[bytes]:
    """Encode like a streaming server: one flushed piece per part, the last piece ends the stream."""
    if encoding in ("gzip", "deflate"):
        z = zlib.compressobj(wbits=31 if encoding == "gzip" else zlib.MAX_WBITS)
        pieces = [z.compress(p) + z.flush(zlib.Z_SYNC_FLUSH) for p in parts]
        return [*pieces, z.flush()]
    if encoding == "br":
        b = brotli.Compressor()
        return [*(b.process(p) + b.flush() for p in parts), b.finish()]
    c = zstd.ZstdCompressor()
    return [*(c.compress(p, c.FLUSH_BLOCK) for p in parts), c.flush(c.FLUSH_FRAME)]


EVENTS = [e + b"\n\n" for e in BODY.split(b"\n\n")[:-1]]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_flushed_pieces_decode_without_lag(encoding: str) -> None:
    # A server flushing after every SSE event: each piece must decode to its whole event
    # at once, or the proxy would hold events back.
    assert b"".join(EVENTS) == BODY
    pieces = stream_encode(encoding, EVENTS)
    decoder = StreamDecoder(encoding)
    for piece, event in zip(pieces, EVENTS, strict=False):
        assert decoder.decode(piece) == event
    assert decoder.decode(pieces[-1]) == b""
    assert decoder.flush() == b""


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_truncated_body_gives_a_prefix_and_flush_does_not_raise(encoding: str) -> None:
    pieces = stream_encode(encoding, EVENTS)
    decoder = StreamDecoder(encoding)
    out = decoder.decode(pieces[0] + pieces[1][: len(pieces[1]) // 2])  # cut inside the 2nd piece
    out += decoder.flush()
    assert BODY.startswith(out)
    assert len(EVENTS[0]) <= len(out) < len(EVENTS[0] + EVENTS[1])


def test_gzip_with_several_members_and_zero_padding() -> None:
    encoded = gzip.compress(b"first ") + gzip.compress(b"second") + b"\x00\x00"
    assert run("gzip", [encoded]) == b"first second"
    assert run("gzip", (encoded[i : i + 1] for i in range(len(encoded)))) == b"first second"


def test_gzip_zero_padding_between_members_at_any_split() -> None:
    """Padding and the next member in one chunk, or split anywhere: read as gzip.decompress does."""
    encoded = gzip.compress(BODY[:300]) + b"\x00\x00" + gzip.compress(BODY[300:]) + b"\x00"
    assert gzip.decompress(encoded) == BODY
    for cut in range(len(encoded) + 1):
        assert run("gzip", [encoded[:cut], encoded[cut:]]) == BODY, cut


def test_bytes_after_a_gzip_member_that_start_no_other_are_ignored() -> None:
    """A stray CRLF after the last member ends the body (as urllib3 reads it), not the metering."""
    encoded = gzip.compress(b"done") + b"\r\n"
    assert run("gzip", [encoded]) == b"done"
    assert run("gzip", (encoded[i : i + 1] for i in range(len(encoded)))) == b"done"


def test_zstd_with_several_frames() -> None:
    encoded = zstd.compress(b"first ") + zstd.compress(b"second")
    assert run("zstd", [encoded]) == b"first second"
    assert run("zstd", (encoded[i : i + 1] for i in range(len(encoded)))) == b"first second"


def test_bytes_after_the_end_of_a_br_or_deflate_stream_are_ignored() -> None:
    assert run("br", [brotli.compress(b"done"), b"junk"]) == b"done"
    assert run("deflate", [zlib.compress(b"done"), b"junk"]) == b"done"
