"""Bad input, fuzzed (hypothesis): every parser the addon runs on bytes from the network.

Properties:

- nothing raises out of what the addon calls: each provider's ``parse_response``,
  ``StreamParser.feed`` / ``result``, and ``StreamTap.__call__`` / ``result`` (driven as
  mitmproxy drives it: chunk by chunk, then ``b""``);
- the decoders underneath raise only their own documented error (``DecodeError``,
  ``EventStreamError``) or nothing (``SSEDecoder``, ``JSONArrayDecoder``);
- the bytes ``StreamTap`` hands to the client are exactly the bytes upstream sent, however
  the network split them (minus the injected usage chunk when it drops one), and never an
  empty chunk mid-stream (mitmproxy would send it as the end of an HTTP/1.1 chunked body);
- metering does not depend on the split: a stream read in any pieces meters the same as
  read whole.

Inputs: random bytes, real recorded streams (tests/fixtures) truncated, cut, spliced and
corrupted, random JSON shaped like provider payloads, valid and invalid gzip / deflate /
br / zstd, random AWS event-stream frames; each split at random points.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import string
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import fake_gemini_live
import fake_realtime
import fake_realtime_translation
import fake_responses_ws
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addon.aws_eventstream import EventMessage, EventStreamDecoder, EventStreamError
from addon.content_decoding import DecodeError, StreamDecoder, zstd
from addon.image_tool import call_from_json, call_to_json
from addon.json_stream import JSONArrayDecoder
from addon.providers import (
    Provider,
    Registry,
    anthropic_api,
    bedrock_api,
    gemini_api,
    gemini_interactions,
    gemini_live,
    openai_api,
    openai_live,
    openai_media,
    openai_realtime,
    openai_realtime_translation,
    openai_responses_ws,
    values,
)
from addon.sse import SSEDecoder, SSEEvent
from addon.stream_tap import StreamTap
from addon.usage import Metered, ToolImages, Usage

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REGISTRY = Registry()

# Modest example counts keep the file near 20 s; no example database is written into the tree.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SMALL = settings(FUZZ, max_examples=150)


def provider(name: str) -> Provider:
    """A provider of the default registry, by row name."""
    found = REGISTRY.by_name(name)
    assert found is not None, name
    return found


# ---------------------------------------------------------------- AWS event-stream frames


def _header(name: str, kind: int, value: Any) -> bytes:
    raw_name = name.encode()
    out = bytes([len(raw_name)]) + raw_name + bytes([kind])
    if kind in (0, 1):
        return out
    if kind in (2, 3, 4, 5, 8):
        return out + struct.pack({2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}[kind], value)
    if kind == 9:
        return out + value
    data = value.encode() if isinstance(value, str) else value
    return out + struct.pack(">H", len(data)) + data


def frame(headers: list[tuple[str, int, Any]], payload: bytes) -> bytes:
    """One event-stream message with both CRCs."""
    block = b"".join(_header(n, k, v) for n, k, v in headers)
    prelude = struct.pack(">II", 16 + len(block) + len(payload), len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def aws_event(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = [
        (":event-type", 7, event_type),
        (":content-type", 7, "application/json"),
        (":message-type", 7, "event"),
    ]
    return frame(headers, json.dumps(payload, separators=(",", ":")).encode())


def aws_chunk(inner: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream ``chunk``: the model's event, base64 in ``bytes``."""
    raw = base64.b64encode(json.dumps(inner, separators=(",", ":")).encode()).decode()
    return aws_event("chunk", {"bytes": raw, "p": "abcdefgh"})


CONVERSE_STREAM = b"".join(
    [
        aws_event("messageStart", {"role": "assistant"}),
        aws_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        aws_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}}),
        aws_event("contentBlockStop", {"contentBlockIndex": 0}),
        aws_event("messageStop", {"stopReason": "end_turn"}),
        aws_event(
            "metadata",
            {
                "usage": {
                    "inputTokens": 25,
                    "outputTokens": 7,
                    "totalTokens": 32,
                    "cacheReadInputTokens": 100,
                },
                "metrics": {"latencyMs": 300},
            },
        ),
    ]
)
CONVERSE_USAGE = Usage(input_tokens=125, cache_read_tokens=100, output_tokens=7)

INVOKE_STREAM = b"".join(
    [
        aws_chunk(
            {
                "type": "message_start",
                "message": {"model": "claude", "usage": {"input_tokens": 30, "output_tokens": 1}},
            }
        ),
        aws_chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        aws_chunk(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}
        ),
        aws_chunk(
            {
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 30,
                    "outputTokenCount": 9,
                    "invocationLatency": 400,
                    "firstByteLatency": 100,
                },
            }
        ),
    ]
)


# ---------------------------------------------------------------- seeds and cases


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass(frozen=True)
class StreamCase:
    """A provider, flavor and framing the addon may build a ``StreamTap`` for, with real streams."""

    provider: str
    flavor: str
    framing: str
    seeds: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"StreamCase({self.provider}, {self.flavor}, {self.framing})"


CHAT_SEEDS = tuple(
    fixture(n)
    for n in (
        "openai_chat_stream.sse",
        "openai_chat_reasoning_stream.sse",
        "groq_stream.sse",
        "openrouter_stream.sse",
        "deepseek_reasoner_stream.sse",
        "perplexity_stream.sse",
    )
)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}).encode() + b"\n\n"


_IMAGE_AT = {"item_id": "ig_1", "output_index": 0}
_IMAGE_CALL = {"type": "image_generation_call", "id": "ig_1", "status": "completed", "quality": "high",
               "size": "1024x1024", "result": "iVBORw0KGgo" * 40}  # fmt: skip
# A Responses stream whose image_generation tool writes an image: its image call events (a partial
# image, nameless, then named), and the final event with the image call, tool_usage and tools.
RESPONSES_IMAGE_TOOL_STREAM = b"".join(
    [
        _sse("response.created", {"response": {"model": "gpt-4o-mini", "status": "in_progress"}}),
        _sse("response.image_generation_call.in_progress", _IMAGE_AT),
        b"data: "
        + json.dumps(
            {
                "type": "response.image_generation_call.partial_image",
                **_IMAGE_AT,
                "partial_image_b64": "QUJD" * 200,
                "quality": "high",
            }
        ).encode()
        + b"\n\n",
        _sse(
            "response.image_generation_call.partial_image", {**_IMAGE_AT, "partial_image_b64": "QUJD" * 200}
        ),
        _sse("response.image_generation_call.completed", _IMAGE_AT),
        _sse("response.output_text.delta", {"delta": "Here."}),
        _sse(
            "response.completed",
            {
                "response": {
                    "object": "response",
                    "status": "completed",
                    "model": "gpt-4o-mini",
                    "output": [_IMAGE_CALL],
                    "tools": [{"type": "image_generation", "model": "gpt-image-1"}],
                    "usage": {"input_tokens": 300, "output_tokens": 100},
                    "tool_usage": {"image_gen": {"input_tokens": 49, "output_tokens": 4160}},
                }
            },
        ),
    ]
)
STREAM_CASES: tuple[StreamCase, ...] = (
    StreamCase("openai", "chat", "sse", CHAT_SEEDS),
    StreamCase("groq", "chat", "sse", (fixture("groq_stream.sse"),)),
    StreamCase("openrouter", "chat", "sse", (fixture("openrouter_stream.sse"),)),
    StreamCase("perplexity", "chat", "sse", (fixture("perplexity_stream.sse"),)),
    StreamCase(
        "openai", "responses", "sse", (fixture("openai_responses_stream.sse"), RESPONSES_IMAGE_TOOL_STREAM)
    ),
    StreamCase("openai", "images", "sse", (fixture("openai_image_stream.sse"),)),
    StreamCase("openai", "transcription", "sse", (fixture("openai_transcription_stream.sse"),)),
    StreamCase("azure", "chat", "sse", (fixture("azure_chat_stream.sse"),)),
    StreamCase("openai", "embeddings", "sse", CHAT_SEEDS[:1]),
    StreamCase("anthropic", "messages", "sse", (fixture("anthropic_stream.sse"),)),
    StreamCase("google", "stream", "sse", (fixture("gemini_stream_sse.crlf"),)),
    StreamCase("google", "interactions", "sse", (fixture("gemini_interactions_stream.sse"),)),
    StreamCase("google", "stream", "json_array", (fixture("gemini_stream.json"),)),
    StreamCase("aws", "converse_stream", "aws_eventstream", (CONVERSE_STREAM,)),
    StreamCase("aws", "invoke_stream", "aws_eventstream", (INVOKE_STREAM,)),
    StreamCase("aws", "converse", "aws_eventstream", (CONVERSE_STREAM,)),
    StreamCase("aws", "invoke", "aws_eventstream", (INVOKE_STREAM,)),
)
ALL_SEEDS: tuple[bytes, ...] = tuple(sorted({s for c in STREAM_CASES for s in c.seeds}))
# Providers whose streams the proxy regroups to drop the usage chunk it asked for.
DROP_PROVIDERS = tuple(p.name for p in REGISTRY.providers if p.is_usage_only_chunk is not None)

BODY_FIXTURES = tuple(
    fixture(p.name) for p in sorted(FIXTURES.iterdir()) if p.suffix == ".json" and p.is_file()
)
FLAVORS: dict[str, tuple[str, ...]] = {
    "openai": (*openai_api.FLAVORS, *openai_media.FLAVORS),
    "anthropic": anthropic_api.FLAVORS,
    "google": (*gemini_api.FLAVORS, gemini_interactions.FLAVOR),
    "aws": bedrock_api.FLAVORS,
}
PARSE_CASES: tuple[tuple[str, str], ...] = tuple(
    (p.name, flavor)
    for p in REGISTRY.providers
    for flavor in FLAVORS.get(p.name, openai_api.FLAVORS)
    if REGISTRY.by_name(p.name) is p
)
BEDROCK_HEADERS = (
    *(name for name, _ in bedrock_api._HEADER_COUNTS),
    "x-amzn-errortype",
    "x-amzn-requestid",
)


# ---------------------------------------------------------------- content encodings


def _encode_one(data: bytes, name: str) -> bytes:
    if name == "gzip":
        comp = zlib.compressobj(wbits=31)
        return comp.compress(data) + comp.flush()
    if name == "deflate":
        return zlib.compress(data)
    if name == "deflate-raw":
        comp = zlib.compressobj(wbits=-15)
        return comp.compress(data) + comp.flush()
    if name == "br":
        return brotli.compress(data)
    if name == "zstd":
        assert zstd is not None
        return zstd.compress(data)
    raise AssertionError(name)


# (label used to encode, Content-Encoding header value)
ENCODINGS: tuple[tuple[tuple[str, ...], str | None], ...] = (
    ((), None),
    ((), "identity"),
    (("gzip",), "gzip"),
    (("deflate",), "deflate"),
    (("deflate-raw",), "deflate"),
    (("br",), "br"),
    (("gzip", "br"), "gzip, br"),
    (("gzip",), "x-gzip"),
    *([(("zstd",), "zstd")] if zstd is not None else []),
)


def encode(data: bytes, steps: tuple[str, ...]) -> bytes:
    """Apply content codings in order (``("gzip", "br")`` is ``Content-Encoding: gzip, br``)."""
    for name in steps:
        data = _encode_one(data, name)
    return data


# ---------------------------------------------------------------- strategies

JSON_KEYS = (
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost",
    "total_cost",
    "x_groq",
    "choices",
    "delta",
    "message",
    "content",
    "text",
    "model",
    "error",
    "type",
    "status",
    "response",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "cachedContentTokenCount",
    "candidates",
    "parts",
    "modelVersion",
    "finishReason",
    "inputTokens",
    "outputTokens",
    "metrics",
    "amazon-bedrock-invocationMetrics",
    "inputTokenCount",
    "outputTokenCount",
    "bytes",
    "output",
    "results",
    "seconds",
    "duration",
    "input_token_details",
    "image_tokens",
    "audio_tokens",
    "b64_json",
    "tool_usage",
    "image_gen",
    "tools",
    "quality",
    "size",
    "result",
    "item_id",
    "cached_tokens",
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "message_start",
            "message_delta",
            "response.completed",
            "response.failed",
            "error",
            "failed",
            "chat.completion.chunk",
            "image_generation.completed",
            "image_edit.partial_image",
            "transcript.text.done",
            "tokens",
            "duration",
            "image_generation_call",
            "image_generation",
            "completed",
            "high",
            "1024x1024",
            "gpt-image-1",
        ]
    ),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(JSON_KEYS), st.text(max_size=6)), children, max_size=5),
    ),
    max_leaves=25,
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` kept, truncated, cut, spliced with random bytes, corrupted or doubled."""
    kind = draw(st.sampled_from(["keep", "keep", "truncate", "delete", "insert", "flip", "splice", "double"]))
    n = len(data)
    if kind == "keep" or (n == 0 and kind not in ("insert", "splice")):
        return data
    if kind == "truncate":
        return data[: draw(st.integers(0, n))]
    if kind == "double":
        return data + data
    i = draw(st.integers(0, n))
    if kind == "delete":
        j = draw(st.integers(i, min(n, i + 200)))
        return data[:i] + data[j:]
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=40)) + data[i:]
    if kind == "splice":
        other = draw(st.sampled_from(ALL_SEEDS))
        j = draw(st.integers(0, len(other)))
        return data[:i] + other[j:]
    i = min(i, n - 1)  # flip
    return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into non-empty pieces at random points (sometimes one byte at a time)."""
    n = len(data)
    if n == 0:
        return []
    if n <= 3000 and draw(st.integers(0, 9)) == 0:
        return [data[i : i + 1] for i in range(n)]
    if n == 1:
        return [data]
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=24))))
    bounds = [0, *cuts, n]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def stream_bodies(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A stream body: one of the case's real streams, another provider's, or random bytes, mutated."""
    base = draw(
        st.one_of(
            st.sampled_from(seeds),
            st.sampled_from(seeds),
            st.sampled_from(ALL_SEEDS),
            st.binary(max_size=400),
            st.lists(JSON_VALUES, max_size=4).map(
                lambda vs: b"".join(b"data: " + dumps(v) + b"\n\n" for v in vs)
            ),
        )
    )
    return draw(mutated(base))


SSE_NOISE = st.lists(
    st.sampled_from(
        [
            b"data: ",
            b"data:",
            b"event: ",
            b"id: 1",
            b": comment",
            b"retry: 10",
            b"\n",
            b"\r\n",
            b"\r",
            b"\xef\xbb\xbf",
            b"{",
            b"}",
            b'"usage"',
            b":",
            b" ",
            b"[DONE]",
            b"\x00",
            b"\xff",
        ]
    )
    | st.binary(max_size=6),
    max_size=60,
).map(b"".join)


# ---------------------------------------------------------------- helpers


def run_tap(tap: StreamTap, chunks: list[bytes]) -> bytes:
    """Drive a tap as mitmproxy does; return what the client receives. Checks the chunk contract."""
    sent: list[bytes] = []
    for chunk in chunks:
        got = tap(chunk)
        if isinstance(got, bytes):
            assert got != b"", "an empty chunk mid-stream is written as the end of an HTTP/1.1 body"
            sent.append(got)
        else:
            got = list(got)
            assert all(isinstance(p, bytes) and p for p in got), got
            sent.extend(got)
    assert not tap.finished
    end = tap(b"")
    assert tap.finished
    if isinstance(end, bytes):
        sent.append(end)
    else:
        end = list(end)
        assert all(isinstance(p, bytes) and p for p in end), end
        sent.extend(end)
    return b"".join(sent)


def check_metered(m: Metered) -> None:
    """What ``Meter._finish`` relies on: a Metered with int counts, a str model and error."""
    assert isinstance(m, Metered)
    if m.usage is not None:
        for value in (
            m.usage.input_tokens,
            m.usage.cache_read_tokens,
            m.usage.cache_write_tokens,
            m.usage.output_tokens,
            m.usage.reasoning_tokens,
        ):
            assert type(value) is int
    assert m.model is None or isinstance(m.model, str)
    assert m.error is None or isinstance(m.error, str)
    assert m.output_text is None or isinstance(m.output_text, str)
    if m.tool_images is not None:
        check_tool_images(m.tool_images)


def check_tool_images(found: ToolImages) -> None:
    """What ``addon.image_tool.tool_row`` relies on: strings or None, counts, a Usage, and the
    billed images counted at some usage (or said not to be), never raising."""
    assert isinstance(found, ToolImages)
    assert all(q is None or isinstance(q, str) for pair in found.images for q in pair)
    assert len(found.images) + found.failed <= openai_api.MAX_IMAGE_CALLS
    assert type(found.partial_images) is int and found.partial_images >= 0
    assert type(found.cached_tokens) is int and found.cached_tokens >= 0
    assert found.usage is None or isinstance(found.usage, Usage)
    assert found.model is None or (isinstance(found.model, str) and found.model.strip())
    for model in ("gpt-image-1", "gpt-image-2"):
        usage, source, note = openai_media.image_tool_usage(found, model, None)
        assert source in ("reported", "estimated", "none") and isinstance(note, str)
        assert (usage is None) == (source == "none")
    assert len(found.svg) <= openai_api.MAX_SVG_MODELS
    for model, usage in found.svg:  # the SVG author's tokens: a name and counts, some billed
        assert isinstance(model, str) and model and isinstance(usage, Usage)
        assert usage.input_tokens or usage.output_tokens
        assert 0 <= usage.reasoning_tokens <= usage.output_tokens


def summary(m: Metered) -> tuple[Any, ...]:
    return (m.usage, m.model, m.error, m.provider_cost, m.output_text, m.tool_images)


def meter_stream(case: StreamCase, chunks: list[bytes], encoding: str | None = None) -> Metered:
    tap = StreamTap(provider(case.provider), case.flavor, encoding, framing=case.framing)
    run_tap(tap, chunks)
    return tap.result()


# ---------------------------------------------------------------- StreamTap: what the addon calls


@FUZZ
@given(data=st.data())
def test_stream_tap_forwards_exactly_what_upstream_sent(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(STREAM_CASES), label="case")
    body = data.draw(stream_bodies(case.seeds), label="body")
    steps, header = data.draw(st.sampled_from(ENCODINGS), label="encoding")
    wire = encode(body, steps)
    if steps and data.draw(st.booleans(), label="corrupt the encoding"):
        wire = data.draw(mutated(wire))
    chunks = data.draw(splits(wire), label="chunks")

    tap = StreamTap(provider(case.provider), case.flavor, header, framing=case.framing)
    assert run_tap(tap, chunks) == wire
    check_metered(tap.result())


@FUZZ
@given(data=st.data())
def test_stream_tap_drops_only_the_injected_usage_chunk(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(DROP_PROVIDERS), label="provider")
    p = provider(name)
    body = data.draw(stream_bodies(CHAT_SEEDS), label="body")
    steps, header = data.draw(st.sampled_from(ENCODINGS), label="encoding")
    chunks = data.draw(splits(encode(body, steps)), label="chunks")

    tap = StreamTap(p, "chat", header, drop_usage_chunk=True, framing="sse")
    sent = run_tap(tap, chunks)
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.close()
    assert p.is_usage_only_chunk is not None
    # Decoded (the proxy drops Content-Encoding), event by event, minus the usage-only chunk.
    assert sent == b"".join(e.raw for e in events if not p.is_usage_only_chunk(e))
    check_metered(tap.result())


@FUZZ_SMALL
@given(data=st.data())
def test_stream_tap_survives_corrupt_encoding_while_dropping(data: st.DataObject) -> None:
    steps, header = data.draw(st.sampled_from([e for e in ENCODINGS if e[0]]), label="encoding")
    wire = data.draw(mutated(encode(data.draw(stream_bodies(CHAT_SEEDS)), steps)), label="wire")
    chunks = data.draw(splits(wire), label="chunks")
    tap = StreamTap(provider("openai"), "chat", header, drop_usage_chunk=True, framing="sse")
    run_tap(tap, chunks)  # the chunk contract holds; nothing raises
    check_metered(tap.result())


@FUZZ
@given(data=st.data())
def test_metering_does_not_depend_on_how_the_stream_was_split(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(STREAM_CASES), label="case")
    body = data.draw(stream_bodies(case.seeds), label="body")
    if case.framing == "aws_eventstream":
        # A corrupt frame stops the decoder: what was read before it depends on the split.
        body = data.draw(st.sampled_from(case.seeds))
        body = body[: data.draw(st.integers(0, len(body)))]
    steps, header = data.draw(st.sampled_from(ENCODINGS), label="encoding")
    chunks = data.draw(splits(encode(body, steps)), label="chunks")
    whole = meter_stream(case, [body] if body else [])
    got = meter_stream(case, chunks, header)
    check_metered(got)
    assert summary(got) == summary(whole)


@pytest.mark.parametrize("header", [None, "gzip", "br"])
def test_stream_tap_strips_the_usage_chunk_byte_by_byte(header: str | None) -> None:
    body = fixture("openai_chat_stream.sse")
    usage_event = next(e for e in SSEDecoder().feed(body) if b'"choices":[]' in e.data)
    steps = () if header is None else (header,)
    chunks = [bytes([b]) for b in encode(body, steps)]
    tap = StreamTap(provider("openai"), "chat", header, drop_usage_chunk=True)
    sent = run_tap(tap, chunks)
    assert sent == body.replace(usage_event.raw, b"")
    assert sent.endswith(b"data: [DONE]\n\n")
    m = tap.result()
    assert m.usage == Usage(input_tokens=21, output_tokens=14)
    assert m.model == "gpt-4o-mini-2024-07-18"
    assert m.error is None


@pytest.mark.parametrize(
    ("case", "usage"),
    [
        (StreamCase("aws", "converse_stream", "aws_eventstream", (CONVERSE_STREAM,)), CONVERSE_USAGE),
        (
            StreamCase("aws", "invoke_stream", "aws_eventstream", (INVOKE_STREAM,)),
            Usage(input_tokens=30, output_tokens=9),
        ),
    ],
    ids=["converse_stream", "invoke_stream"],
)
def test_stream_tap_meters_event_stream_frames_before_a_corrupt_one(case: StreamCase, usage: Usage) -> None:
    """A corrupt frame after the usage frame, in the same network chunk, must not lose the usage.

    ``EventStreamDecoder.feed`` raises with the valid messages it decoded before the corrupt
    one in ``EventStreamError.messages``; the tap must meter them.
    """
    good = case.seeds[0]
    corrupt = b"\x00\x00\x00\x20\x00\x00\x00\x00" + b"\xde\xad\xbe\xef" + b"x" * 20  # bad prelude CRC
    # Sanity: read in two pieces (the corrupt frame alone), the usage is there.
    assert meter_stream(case, [good, corrupt]).usage == usage
    tap = StreamTap(provider(case.provider), case.flavor, None, framing=case.framing)
    assert run_tap(tap, [good + corrupt]) == good + corrupt
    m = tap.result()
    assert "EventStreamError" in (m.error or "")
    assert m.usage == usage


@FUZZ_SMALL
@given(encoding=st.text(max_size=20))
def test_stream_tap_with_any_content_encoding_header(encoding: str) -> None:
    """An unknown coding refuses the tap with ``DecodeError`` (the addon then streams unmetered)."""
    try:
        tap = StreamTap(provider("anthropic"), "messages", encoding)
    except DecodeError:
        return
    body = fixture("anthropic_stream.sse")
    assert run_tap(tap, [body[:100], body[100:]]) == body
    check_metered(tap.result())


# ---------------------------------------------------------------- parse_response and StreamParser


@st.composite
def response_bodies(draw: st.DrawFn) -> bytes:
    base = draw(
        st.one_of(
            st.sampled_from(BODY_FIXTURES),
            st.sampled_from(ALL_SEEDS),
            JSON_VALUES.map(dumps),
            st.dictionaries(st.sampled_from(JSON_KEYS), JSON_VALUES, max_size=6).map(dumps),
            st.binary(max_size=300),
        )
    )
    return draw(mutated(base))


HEADER_VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["\u00b2", "\u0663", "9" * 5000, " 12 ", "", "-1", "1e3"]),
)


@FUZZ
@given(
    case=st.sampled_from(PARSE_CASES),
    body=response_bodies(),
    headers=st.dictionaries(st.sampled_from(BEDROCK_HEADERS), HEADER_VALUES, max_size=4),
)
@example(case=("aws", "invoke"), body=b"{}", headers={"x-amzn-bedrock-input-token-count": "\u00b2"})
@example(case=("aws", "invoke"), body=b"", headers={"x-amzn-bedrock-output-token-count": "9" * 5000})
def test_parse_response_never_raises(case: tuple[str, str], body: bytes, headers: dict[str, str]) -> None:
    name, flavor = case
    check_metered(provider(name).parse_response(flavor, body, headers))


def _json_deep(depth: int) -> bytes:
    return b'{"usage":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("case", PARSE_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_parse_response_on_pathological_json(case: tuple[str, str]) -> None:
    name, flavor = case
    p = provider(name)
    for body in (
        _json_deep(100_000),
        b"[" * 100_000,
        b'{"usage":{"prompt_tokens":' + b"9" * 5000 + b"}}",
        b'{"usage":{"prompt_tokens":1e999,"completion_tokens":-1e999}}',
        b'{"usage":{"prompt_tokens":NaN}}',
        b"\xef\xbb\xbf" + fixture("openai_chat_reasoning.json"),
        b"\x00" * 1000,
    ):
        check_metered(p.parse_response(flavor, body, {}))


@st.composite
def sse_events(draw: st.DrawFn) -> SSEEvent:
    name = draw(
        st.one_of(
            st.none(),
            st.sampled_from(
                [
                    "message",
                    "message_start",
                    "message_delta",
                    "error",
                    "response.completed",
                    "response.output_text.delta",
                    "response.created",
                    "response.failed",
                    "response.image_generation_call.partial_image",
                    "response.image_generation_call.completed",
                    "image_generation.partial_image",
                    "image_generation.completed",
                    "image_edit.completed",
                    "transcript.text.delta",
                    "transcript.text.done",
                ]
            ),
            st.text(max_size=10),
        )
    )
    data = draw(
        st.one_of(
            JSON_VALUES.map(dumps),
            st.dictionaries(st.sampled_from(JSON_KEYS), JSON_VALUES, max_size=6).map(dumps),
            st.binary(max_size=80),
            st.just(b"[DONE]"),
        )
    )
    return SSEEvent(event=name, data=data, raw=b"data: " + data + b"\n\n")


@st.composite
def aws_messages(draw: st.DrawFn) -> EventMessage:
    kind = draw(st.sampled_from(["event", "exception", "error", "other"]))
    event_type = draw(
        st.one_of(
            st.sampled_from(["chunk", "contentBlockDelta", "metadata", "messageStop"]), st.text(max_size=8)
        )
    )
    headers: dict[str, Any] = {":message-type": kind, ":event-type": event_type}
    if draw(st.booleans()):
        headers[":exception-type"] = draw(
            st.one_of(st.text(max_size=10), st.integers(), st.binary(max_size=4))
        )
    if draw(st.booleans()):
        headers[":error-message"] = draw(st.one_of(st.text(max_size=10), st.booleans()))
    inner = draw(st.one_of(JSON_VALUES.map(dumps), st.binary(max_size=60)))
    payload = draw(
        st.one_of(
            st.just(dumps({"bytes": base64.b64encode(inner).decode()})),
            st.just(b'{"bytes":"' + inner + b'"}'),
            JSON_VALUES.map(dumps),
            st.binary(max_size=60),
        )
    )
    return EventMessage(headers, payload)


@FUZZ
@given(
    case=st.sampled_from(STREAM_CASES), events=st.lists(st.one_of(sse_events(), aws_messages()), max_size=12)
)
def test_stream_parsers_never_raise(case: StreamCase, events: list[Any]) -> None:
    """Any event the framers can hand over, in any order, any number of times."""
    parser = provider(case.provider).stream_parser(case.flavor)
    for event in events:
        if case.framing == "json_array":
            event = event.data if isinstance(event, SSEEvent) else event.payload
        elif case.framing == "sse" and isinstance(event, EventMessage):
            event = SSEEvent(event=event.event_type, data=event.payload, raw=event.payload)
        elif case.framing == "aws_eventstream" and isinstance(event, SSEEvent):
            event = EventMessage(
                {":message-type": "event", ":event-type": event.event or "chunk"}, event.data
            )
        parser.feed(event)
        check_metered(parser.result())
    check_metered(parser.result())


_URL_CHARS = string.ascii_letters + string.digits + "/:?#&=%._-~@+ "
PATHS = st.one_of(
    st.text(alphabet=_URL_CHARS, max_size=60),
    st.builds(
        lambda a, b, c: f"/v1beta/models/{a}:{b}{c}",
        st.text(alphabet=_URL_CHARS, max_size=15),
        st.sampled_from(["generateContent", "streamGenerateContent", "x"]),
        st.sampled_from(["", "?alt=sse", "?key=k&alt=", "#frag"]),
    ),
    st.builds(
        lambda a, b: f"/model/{a}/{b}",
        st.text(alphabet=_URL_CHARS, max_size=15),
        st.sampled_from(["converse", "converse-stream", "invoke", "invoke-with-response-stream"]),
    ),
    st.text(max_size=30),
)


@FUZZ
@given(
    name=st.sampled_from([p.name for p in REGISTRY.providers]),
    path=PATHS,
    content_type=st.text(max_size=30),
    body=st.one_of(st.none(), st.dictionaries(st.sampled_from(["model", "stream"]), JSON_VALUES, max_size=2)),
    authorization=st.text(max_size=60),
)
def test_request_side_helpers_never_raise(
    name: str, path: str, content_type: str, body: dict[str, Any] | None, authorization: str
) -> None:
    """What ``Meter.requestheaders`` / ``request`` / ``responseheaders`` ask of any request."""
    p = provider(name)
    flavor = p.flavor_for_path(path)
    assert flavor is None or isinstance(flavor, str)
    model = p.request_model(path, body)
    assert model is None or isinstance(model, str)
    assert p.stream_framing(path, content_type) in (None, "sse", "json_array", "aws_eventstream")
    assert all(isinstance(k, str) and k for k in p.keys_in_query(path.partition("?")[2]))
    if p.key_from_header is not None:
        p.key_from_header(authorization)
    if p.with_model is not None:
        with contextlib.suppress(ValueError):  # documented: the addon refuses instead of downgrading
            p.with_model(path, body, "gpt-4o-mini")


# ---------------------------------------------------------------- the decoders underneath


@FUZZ
@given(data=st.data())
def test_sse_decoder_is_lossless_and_split_invariant(data: st.DataObject) -> None:
    body = data.draw(st.one_of(stream_bodies(ALL_SEEDS), SSE_NOISE), label="body")
    chunks = data.draw(splits(body), label="chunks")
    whole = SSEDecoder()
    expected = whole.feed(body) + whole.close()
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    assert b"".join(e.raw for e in events) == body
    assert events == expected


JSON_ELEMENTS = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=15,
)


@FUZZ
@given(
    elements=st.lists(JSON_ELEMENTS, max_size=6),
    indent=st.sampled_from([None, 0, 2]),
    ensure_ascii=st.booleans(),
    data=st.data(),
)
def test_json_array_decoder_yields_each_element(
    elements: list[Any], indent: int | None, ensure_ascii: bool, data: st.DataObject
) -> None:
    body = json.dumps(elements, indent=indent, ensure_ascii=ensure_ascii).encode()
    decoder = JSONArrayDecoder()
    got: list[bytes] = []
    for chunk in data.draw(splits(body), label="chunks"):
        got += decoder.feed(chunk)
    got += decoder.close()
    assert [json.loads(e) for e in got] == elements


@FUZZ
@given(data=st.data())
def test_json_array_decoder_never_raises_and_is_split_invariant(data: st.DataObject) -> None:
    body = data.draw(
        st.one_of(
            stream_bodies(ALL_SEEDS),
            st.lists(
                st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b" ", b"1", b"\xef\xbb"])
            ).map(b"".join),
        ),
        label="body",
    )
    whole = JSONArrayDecoder()
    expected = whole.feed(body) + whole.close()
    decoder = JSONArrayDecoder()
    got: list[bytes] = []
    for chunk in data.draw(splits(body), label="chunks"):
        got += decoder.feed(chunk)
    got += decoder.close()
    assert got == expected


HEADER_SPECS = st.one_of(
    st.tuples(st.just(0), st.just(True)),
    st.tuples(st.just(1), st.just(False)),
    st.tuples(st.just(2), st.integers(-(2**7), 2**7 - 1)),
    st.tuples(st.just(3), st.integers(-(2**15), 2**15 - 1)),
    st.tuples(st.just(4), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(5), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(8), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(6), st.binary(max_size=20)),
    st.tuples(st.just(7), st.text(max_size=20)),
    st.tuples(st.just(9), st.binary(min_size=16, max_size=16)),
)
AWS_MESSAGES = st.lists(
    st.tuples(
        st.dictionaries(
            st.text(min_size=1, max_size=12).filter(lambda s: len(s.encode()) < 256), HEADER_SPECS, max_size=4
        ),
        st.binary(max_size=200),
    ),
    max_size=5,
)


@FUZZ
@given(messages=AWS_MESSAGES, data=st.data())
def test_event_stream_decoder_round_trips_any_split(
    messages: list[tuple[dict[str, tuple[int, Any]], bytes]], data: st.DataObject
) -> None:
    wire = b"".join(frame([(n, k, v) for n, (k, v) in h.items()], p) for h, p in messages)
    decoder = EventStreamDecoder()
    got: list[EventMessage] = []
    for chunk in data.draw(splits(wire), label="chunks"):
        got += decoder.feed(chunk)
    got += decoder.close()
    assert decoder.error is None and decoder.buffered == 0
    assert [(m.headers, m.payload) for m in got] == [
        ({n: v for n, (_, v) in h.items()}, p) for h, p in messages
    ]


@FUZZ
@given(messages=AWS_MESSAGES.filter(bool), data=st.data())
def test_event_stream_decoder_rejects_any_corrupted_byte(
    messages: list[tuple[dict[str, tuple[int, Any]], bytes]], data: st.DataObject
) -> None:
    """CRC32 catches every single-byte corruption; the messages before it still come out."""
    frames = [frame([(n, k, v) for n, (k, v) in h.items()], p) for h, p in messages]
    wire = b"".join(frames)
    i = data.draw(st.integers(0, len(wire) - 1), label="corrupted byte")
    bad = wire[:i] + bytes([wire[i] ^ data.draw(st.integers(1, 255))]) + wire[i + 1 :]
    before = 0  # messages wholly before the corrupted byte
    end = 0
    for f in frames:
        end += len(f)
        if end > i:
            break
        before += 1
    decoder = EventStreamDecoder()
    got: list[EventMessage] = []
    raised = 0
    for chunk in data.draw(splits(bad), label="chunks"):
        try:
            got += decoder.feed(chunk)
        except EventStreamError as e:
            raised += 1
            got += e.messages
    got += decoder.close()
    assert raised == 1
    assert len(got) == before
    assert decoder.error is not None
    assert decoder.feed(wire) == []  # stopped for good


@FUZZ
@given(body=st.one_of(st.binary(max_size=500), st.sampled_from(ALL_SEEDS)), data=st.data())
def test_event_stream_decoder_raises_only_its_error(body: bytes, data: st.DataObject) -> None:
    decoder = EventStreamDecoder()
    for chunk in data.draw(splits(data.draw(mutated(body)))):
        try:
            for message in decoder.feed(chunk):
                assert isinstance(message, EventMessage)
        except EventStreamError:
            pass
    assert decoder.close() == []


@FUZZ
@given(body=st.one_of(st.binary(max_size=2000), st.sampled_from(ALL_SEEDS)), data=st.data())
def test_stream_decoder_round_trips_any_split(body: bytes, data: st.DataObject) -> None:
    steps, header = data.draw(st.sampled_from(ENCODINGS), label="encoding")
    decoder = StreamDecoder(header)
    assert decoder.passthrough is (not steps)
    out = b"".join(decoder.decode(c) for c in data.draw(splits(encode(body, steps)), label="chunks"))
    assert out + decoder.flush() == body


@FUZZ
@given(body=st.one_of(st.binary(max_size=800), st.sampled_from(ALL_SEEDS)), data=st.data())
def test_stream_decoder_on_truncated_input_yields_a_prefix(body: bytes, data: st.DataObject) -> None:
    steps, header = data.draw(st.sampled_from([e for e in ENCODINGS if e[0]]), label="encoding")
    wire = encode(body, steps)
    wire = wire[: data.draw(st.integers(0, len(wire)))]
    decoder = StreamDecoder(header)
    out = b"".join(decoder.decode(c) for c in data.draw(splits(wire), label="chunks"))
    out += decoder.flush()  # a cut body is not an error: what arrived is decoded
    assert body.startswith(out)


@FUZZ
@given(data=st.data())
def test_stream_decoder_raises_only_decode_error(data: st.DataObject) -> None:
    steps, header = data.draw(st.sampled_from([e for e in ENCODINGS if e[0]]), label="encoding")
    wire = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from(ALL_SEEDS).flatmap(lambda b: mutated(encode(b, steps))),
        ),
        label="wire",
    )
    decoder = StreamDecoder(header)
    try:
        for chunk in data.draw(splits(wire), label="chunks"):
            assert isinstance(decoder.decode(chunk), bytes)
        assert isinstance(decoder.flush(), bytes)
    except DecodeError:
        pass


def test_stream_decoder_refuses_unknown_codings() -> None:
    for header in ("compress", "gzip, snappy", "x-bogus"):
        with pytest.raises(DecodeError, match="unsupported content-encoding"):
            StreamDecoder(header)


@pytest.mark.parametrize("failing", [False, True])
def test_stream_tap_reports_the_final_event_once_before_passing_it_on(failing: bool) -> None:
    """on_final_event runs (once) while the chunk holding [DONE] is still in the tap's hands."""
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    chunks = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', usage + b"data: [DONE]\n\n", b"\n"]
    tap = StreamTap(provider("openai"), "chat", None, framing="sse")
    calls: list[tuple[int, int | None]] = []

    def on_final_event() -> None:
        usage_now = tap.result().usage
        calls.append((len(sent), usage_now.input_tokens if usage_now else None))
        if failing:
            raise RuntimeError("journal full")

    tap.on_final_event = on_final_event
    sent: list[bytes | list[bytes]] = []
    for chunk in chunks:
        sent.append(tap(chunk))
    sent.append(tap(b""))
    assert calls == [(1, 7)]  # during the second chunk, with the usage read
    assert sent == [*chunks, []]  # passed on unchanged, failing callback or not


# ---------------------------------------------------------------- OpenAI Realtime (WebSocket messages)

REALTIME_SEEDS: tuple[bytes, ...] = tuple(
    fake_realtime.dumps(event)
    for event in (
        fake_realtime.session_event("session.created", "gpt-realtime", "gpt-4o-transcribe"),
        fake_realtime.session_event("session.updated", "gpt-4o-realtime-preview", "whisper-1", beta=True),
        fake_realtime.response_created("resp_1"),
        fake_realtime.audio_delta("resp_1", 0, size=200),
        fake_realtime.response_done("resp_1", fake_realtime.RESPONSE_USAGE),
        fake_realtime.response_done("resp_2", fake_realtime.BETA_RESPONSE_USAGE, status="cancelled"),
        fake_realtime.response_done("resp_3", None, status="failed"),
        fake_realtime.transcription_completed("item_1", fake_realtime.TRANSCRIPTION_USAGE),
        fake_realtime.transcription_completed("item_2", fake_realtime.DURATION_USAGE),
    )
)
REALTIME_TYPES = st.sampled_from(
    [
        "response.done",
        "response.created",
        "session.created",
        "session.updated",
        "transcription_session.updated",
        "conversation.item.input_audio_transcription.completed",
        "response.output_audio.delta",
        "response.create",
        "input_audio_buffer.append",
    ]
)
REALTIME_KEYS = st.sampled_from(
    [
        "type",
        "response",
        "usage",
        "session",
        "audio",
        "input",
        "transcription",
        "model",
        "status",
        "status_details",
        "error",
        "input_tokens",
        "output_tokens",
        "input_token_details",
        "cached_tokens",
        "cached_tokens_details",
        "audio_tokens",
        "image_tokens",
        "seconds",
        "item_id",
        "id",
    ]
)
REALTIME_VALUES = st.recursive(
    st.one_of(SCALARS, REALTIME_TYPES),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(REALTIME_KEYS, st.text(max_size=6)), children, max_size=6),
    ),
    max_leaves=30,
)


@st.composite
def realtime_messages(draw: st.DrawFn) -> bytes:
    """A server or client message: a real event, random bytes or random JSON shaped like events, mutated."""
    base = draw(
        st.one_of(
            st.sampled_from(REALTIME_SEEDS),
            st.binary(max_size=300),
            st.builds(
                lambda kind, rest: dumps({"type": kind, **rest}),
                REALTIME_TYPES,
                st.dictionaries(REALTIME_KEYS, REALTIME_VALUES, max_size=5),
            ),
            REALTIME_VALUES.map(dumps),
        )
    )
    return draw(mutated(base))


@FUZZ
@given(data=realtime_messages())
@example(data=b'{"type":"response.done","response":{"usage":{"input_tokens":1e400}}}')
@example(data=b'{"type":"conversation.item.input_audio_transcription.completed","usage":{"seconds":1e999}}')
@example(data=b'{"type":"conversation.item.input_audio_transcription.completed","":{"type":".delta"}}')
def test_realtime_messages_never_raise(data: bytes) -> None:
    """Any bytes a socket carries: the cheap test, the reader and the client check never raise,
    and what they read is well formed."""
    assert isinstance(openai_realtime.might_bill(data), bool)
    assert isinstance(openai_realtime.is_error_event(data), bool)
    event = openai_realtime.read_server_event(data)
    assert event is None or isinstance(
        event,
        openai_realtime.SessionConfig
        | openai_realtime.ResponseStarted
        | openai_realtime.ResponseDone
        | openai_realtime.TranscriptionDone,
    )
    if isinstance(event, openai_realtime.TranscriptionDone) and event.usage is not None:
        assert 0 <= event.usage.audio_seconds < float("inf")
    if not openai_realtime.might_bill(data):
        # What the cheap test lets pass unread never carries usage, nor is a transcription.
        assert not isinstance(event, openai_realtime.TranscriptionDone)
        assert not isinstance(event, openai_realtime.ResponseDone) or event.usage is None
    assert isinstance(openai_realtime.asks_for_work(data), bool)


@FUZZ_SMALL
@given(query=st.text(max_size=80), model=st.text(min_size=1, max_size=20))
def test_realtime_handshake_queries_never_raise(query: str, model: str) -> None:
    handshake = REGISTRY.for_host("api.openai.com").realtime  # type: ignore[union-attr]
    assert handshake is not None
    found = handshake.model(query)
    assert found is None or isinstance(found, str)
    try:
        rewritten = handshake.with_model(query, model)
    except ValueError:
        return
    assert handshake.model(rewritten) == model
    # Only the model's parameter changed.
    keep = [p for p in query.split("&") if p.partition("=")[0] != "model"]
    assert [p for p in rewritten.split("&") if p.partition("=")[0] != "model"] == keep


# ---------------------------------------------------------------- OpenAI Realtime translation

TRANSLATION_SEEDS: tuple[bytes, ...] = tuple(
    fake_realtime_translation.dumps(event)
    for event in (
        fake_realtime_translation.session_created(),
        fake_realtime_translation.session_updated(transcription="gpt-realtime-whisper"),
        fake_realtime_translation.session_closed(),
        fake_realtime_translation.translation_update("fr", "gpt-realtime-whisper"),
        fake_realtime_translation.audio_append(1, size=150),
        fake_realtime_translation.output_audio(1, size=150),
        fake_realtime_translation.output_transcript(),
        {"type": "session.close"},
    )
)
TRANSLATION_TYPES = st.sampled_from(
    [
        "session.input_audio_buffer.append",
        "session.update",
        "session.close",
        "session.created",
        "session.updated",
        "session.closed",
        "session.output_audio.delta",
        "error",
    ]
)
TRANSLATION_VALUES = st.recursive(
    st.one_of(SCALARS, st.sampled_from(["QUJD", "QUI=", "QQ==", "", "gpt-realtime-translate"])),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["type", "audio", "session", "model", "id", "delta"]), children, max_size=5
        ),
    ),
    max_leaves=20,
)


@st.composite
def translation_messages(draw: st.DrawFn) -> bytes:
    """A client or server message: a real one, random bytes or JSON shaped like events, mutated."""
    base = draw(
        st.one_of(
            st.sampled_from(TRANSLATION_SEEDS),
            st.binary(max_size=300),
            st.builds(
                lambda kind, rest: dumps({"type": kind, **rest}),
                TRANSLATION_TYPES,
                st.dictionaries(st.sampled_from(["audio", "session", "event_id"]), TRANSLATION_VALUES),
            ),
        )
    )
    return draw(mutated(base))


def _appended_as_decoded(data: bytes) -> int:
    """What an append's audio decodes to, decoding it (the reader only measures it)."""
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("type") != openai_realtime_translation.APPEND:
            return 0
        return len(base64.b64decode(obj["audio"], validate=True))
    except (ValueError, RecursionError, KeyError, TypeError):
        return -1  # not base64: the reader's count is not checked


@FUZZ
@given(data=translation_messages())
@example(data=b'{"type":"session.input_audio_buffer.\\u0061ppend","audio":"QUJDRA=="}')
def test_translation_messages_never_raise(data: bytes) -> None:
    """Any bytes a translation socket carries: the readers never raise; an append's size is what
    its audio decodes to; the cheap test lets no event the reader reads pass unread."""
    size = openai_realtime_translation.appended_audio_bytes(data)
    assert isinstance(size, int) and size >= 0
    decoded = _appended_as_decoded(data)
    assert decoded == -1 or size == decoded
    assert isinstance(openai_realtime_translation.asks_for_work(data), bool)
    assert size == 0 or openai_realtime_translation.asks_for_work(data)
    event = openai_realtime_translation.read_server_event(data)
    assert event is None or isinstance(
        event, openai_realtime_translation.Configured | openai_realtime_translation.Closed
    )
    if not openai_realtime_translation.might_matter(data):
        assert event is None


@FUZZ_SMALL
@given(
    path=st.one_of(st.text(max_size=60), st.sampled_from(["/v1/live/sessions/live_1/fork"])), data=st.binary()
)
def test_live_fork_paths_and_answers_never_raise(path: str, data: bytes) -> None:
    found = openai_live.fork_session(path)
    assert found is None or (isinstance(found, str) and found and "/" not in found)
    answer = openai_live.read_setup_answer(path, data)
    assert answer is None or isinstance(answer, openai_live.SetUp)


# ---------------------------------------------------------------- multipart uploads (images, audio)

FORM_BOUNDARY = "fuzz-b0undary"
FORM_CONTENT_TYPE = f"multipart/form-data; boundary={FORM_BOUNDARY}"


def form_part(name: str, value: bytes, filename: str | None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{FORM_BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


FILE_CONTENT = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from([b"\r\n", b"--", b"--fuzz-b0undar", b'name="model"', b"\r\n\r\n", b"gpt-image-1"]),
        max_size=20,
    ).map(b"".join),
)


@FUZZ
@given(
    files=st.lists(FILE_CONTENT, max_size=3),
    model=st.text(alphabet=string.ascii_letters + string.digits + ".-", min_size=1, max_size=30),
    at=st.integers(0, 3),
)
def test_a_forms_model_is_found_wherever_it_is_whatever_its_files_hold(
    files: list[bytes], model: str, at: int
) -> None:
    parts = [form_part("image[]", content, f"{i}.png") for i, content in enumerate(files)]
    parts.insert(min(at, len(parts)), form_part("model", model.encode(), None))
    body = b"".join(parts) + f"--{FORM_BOUNDARY}--\r\n".encode()
    fields = openai_media.read_form(body, FORM_CONTENT_TYPE)
    assert (fields.model, fields.error, fields.text_bytes) == (model, None, len(model))


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=400),
        SSE_NOISE,
        st.lists(
            st.tuples(st.sampled_from(["model", "prompt", "x"]), FILE_CONTENT, st.booleans()), max_size=4
        ).map(lambda ps: b"".join(form_part(n, v, "f" if f else None) for n, v, f in ps)),
    ).flatmap(mutated),
    content_type=st.one_of(st.just(FORM_CONTENT_TYPE), st.text(max_size=60)),
)
def test_reading_any_form_never_raises(body: bytes, content_type: str) -> None:
    fields = openai_media.read_form(body, content_type)
    assert fields.model is None or (isinstance(fields.model, str) and 0 < len(fields.model) <= 256)
    assert (fields.model is None) == (fields.error is not None)
    assert 0 <= fields.text_bytes <= len(body)
    assert set(fields.fields) <= openai_media.RESERVATION_FIELDS
    assert 272 <= openai_media.reserved_image_tokens("gpt-image-1", fields.fields) <= 10 * (6240 + 300)


@FUZZ
@given(request=st.dictionaries(st.sampled_from(sorted(openai_media.RESERVATION_FIELDS)), JSON_VALUES))
def test_an_image_requests_reservation_never_raises(request: dict[str, Any]) -> None:
    tokens = openai_media.reserved_image_tokens("gpt-image-1.5", request)
    assert tokens is not None and 272 <= tokens <= 10 * (6240 + 300)
    assert 0 <= openai_media.reserved_input_image_tokens("gpt-image-1", request, 3) <= 3 * (581 + 6240)
    sent = {"images": request.get("n"), "image": request.get("size")}  # any JSON values
    edits = openai_media.input_images("/v1/images/edits", sent, None)
    assert edits >= 1 and openai_media.input_images("/v1/images/generations", request, None) == 0
    assert openai_media.inline_image_bytes(sent) >= 0 and openai_media.inline_image_bytes(request) >= 0


_IMAGE_TOOL_KEYS = ["type", "model", "quality", "size", "partial_images", "n", "svg"]
# A tool's SVG author settings: an object naming a model (any JSON), or any JSON.
SVG_TOOLS = st.dictionaries(st.sampled_from(["model", "reasoning"]), JSON_VALUES).map(
    lambda svg: {"type": "image_generation", "output_format": "svg", "svg": svg}
)


@FUZZ
@given(
    tools=st.one_of(
        JSON_VALUES,
        st.lists(
            st.one_of(
                JSON_VALUES,
                st.dictionaries(st.sampled_from(_IMAGE_TOOL_KEYS), JSON_VALUES).map(
                    lambda tool: {"type": "image_generation", **tool}
                ),
            ),
            max_size=4,
        ),
    ),
    extra=st.dictionaries(st.sampled_from(["max_tool_calls", "tool_choice", "stream"]), JSON_VALUES),
)
def test_an_image_tools_reservation_never_raises(tools: Any, extra: dict[str, Any]) -> None:
    found = openai_media.image_tool_tokens({"model": "gpt-4o-mini", "tools": tools, **extra})
    if found is not None:
        model, tokens = found
        assert isinstance(model, str) and model and 272 <= tokens <= 10 * (6240 + 300)


_IMAGE_CALL_KEYS = ["type", "status", "quality", "size", "result", "id", "error", "svg_usage"]
_SVG_USAGE_KEYS = ["model", "input_tokens", "output_tokens", "reasoning_tokens", "total_tokens"]
IMAGE_CALLS = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from(_IMAGE_CALL_KEYS), JSON_VALUES).map(
        lambda item: {"type": "image_generation_call", **item}
    ),
    st.dictionaries(
        st.sampled_from(_SVG_USAGE_KEYS),
        st.one_of(JSON_VALUES, st.integers(-5, 10**6), st.sampled_from(["o3", "x"])),
    ).map(lambda svg: {"type": "image_generation_call", "status": "completed", "svg_usage": svg}),
)


@FUZZ
@given(
    output=st.one_of(JSON_VALUES, st.lists(IMAGE_CALLS, max_size=70)),
    tool_usage=st.one_of(JSON_VALUES, st.dictionaries(st.just("image_gen"), JSON_VALUES)),
    tools=st.one_of(
        JSON_VALUES,
        st.lists(
            st.one_of(
                st.dictionaries(st.sampled_from(_IMAGE_TOOL_KEYS), JSON_VALUES).map(
                    lambda tool: {"type": "image_generation", **tool}
                ),
                SVG_TOOLS,
            ),
            max_size=3,
        ),
    ),
    events=st.lists(
        st.tuples(
            st.sampled_from(["partial_image", "completed", "in_progress", "x"]),
            st.one_of(st.binary(max_size=80), JSON_VALUES.map(dumps)),
        ),
        max_size=8,
    ),
    ended=st.booleans(),
)
@example(  # a negative count kept once made reasoning_tokens negative: the invariant failed at random
    output=[
        {
            "type": "image_generation_call",
            "status": "completed",
            "svg_usage": {"model": "o3", "input_tokens": 1, "output_tokens": 3, "reasoning_tokens": -5},
        },
        {
            "type": "image_generation_call",
            "status": "completed",
            "svg_usage": {"model": "x", "input_tokens": -4, "output_tokens": 2},
        },
    ],
    tool_usage=None,
    tools=None,
    events=[],
    ended=True,
)
def test_the_image_tools_readers_never_raise(
    output: Any, tool_usage: Any, tools: Any, events: list, ended: bool
) -> None:
    """An answer's image calls, tool_usage and echoed tools; a stream's image events; a request's
    image tools and their rewrite; the images' usage as counted: never raising, always well formed."""
    answer = {"object": "response", "output": output, "tool_usage": tool_usage, "tools": tools}
    found = openai_api.tool_images_of(answer)
    if found is not None:
        check_tool_images(found)
    assert openai_api.parse_response("responses", dumps(answer)).tool_images == found
    seen = openai_api.ImageEvents()
    for kind, data in events:
        assert openai_api.image_event_type(data) is None or b"response.image_generation_call." in data
        seen.feed(openai_api.IMAGE_EVENT + kind, data)
    merged = seen.merged(found, ended)
    if merged is not None:
        check_tool_images(merged)
    body = {"model": "gpt-4o-mini", "tools": tools}
    asked = openai_media.image_tools(body)
    for tool in asked:
        assert tool.runs is None or (isinstance(tool.runs, str) and tool.runs.strip())
        assert tool.svg_model is None or (isinstance(tool.svg_model, str) and tool.svg_model.strip())
        for name in (tool.model, tool.svg_model):  # kept while a response runs: bounded
            assert name is None or len(name) <= openai_api.MAX_TOOL_MODEL_NAME
        assert tool.svg_readable or tool.svg_model is None
        for kept in (tool.quality, tool.size):  # kept while a response runs: short strings only
            assert kept is None or (isinstance(kept, str) and len(kept) <= 32)
        if merged is not None:
            openai_media.image_tool_usage(merged, tool.runs or "gpt-image-1", tool)
    authors, calls = openai_media.svg_authors(body)  # the SVG authors reserved
    assert authors == tuple(tool.svg_model for tool in asked if tool.svg_model is not None)
    assert 0 < calls <= openai_media.MAX_IMAGES if authors else calls == 0
    if asked:
        changes = {tool.index: "gpt-image-1-mini" for tool in asked}
        rewritten = openai_media.with_image_tool_models(body, changes)
        assert [rewritten["tools"][i]["model"] for i in changes] == ["gpt-image-1-mini"] * len(changes)
        assert {**rewritten, "tools": None} == {**body, "tools": None}
        svg = {tool.index: "o3" for tool in asked if isinstance(body["tools"][tool.index].get("svg"), dict)}
        authored = openai_media.with_image_tool_models(body, {}, svg)
        assert [authored["tools"][i]["svg"]["model"] for i in svg] == ["o3"] * len(svg)


_KEPT_CALL_KEYS = ["requested", "sent", "action", "index", "model", "quality", "size", "svg"]


@FUZZ
@given(
    kept=st.one_of(
        JSON_VALUES,
        st.dictionaries(st.sampled_from(_KEPT_CALL_KEYS), JSON_VALUES),
        st.fixed_dictionaries(
            {
                "requested": st.text(max_size=80),
                "sent": st.text(max_size=80),
                "action": st.sampled_from(["allowed", "downgraded", "blocked"]),
                "index": st.integers(-2, 5),
            },
            optional={
                "model": JSON_VALUES,
                "quality": JSON_VALUES,
                "size": JSON_VALUES,
                "svg": st.one_of(
                    JSON_VALUES,
                    st.lists(
                        st.one_of(st.text(max_size=80), st.sampled_from(["allowed", "downgraded"])),
                        max_size=4,
                    ),
                ),
            },
        ),
    )
)
def test_a_kept_image_tool_call_is_read_back_or_none(kept: Any) -> None:
    """A background response's entry (another version may have written it): its image tool call,
    or None; never raising, only short strings kept, and written back as read."""
    call = call_from_json(kept)
    if call is not None:
        assert call.action in ("allowed", "downgraded") and call.requested and call.sent
        for value in (call.tool.quality, call.tool.size, call.tool.model, *(call.svg or ())):
            assert value is None or (isinstance(value, str) and len(value) <= openai_api.MAX_TOOL_MODEL_NAME)
        assert call.svg is None or (call.svg[0] and call.svg[1] and call.svg[2] in ("allowed", "downgraded"))
        assert call_from_json(json.loads(json.dumps(call_to_json(call)))) == call


# ---------------------------------------------------------------- Gemini Live (WebSocket messages)

_LIVE_CHUNK = fake_gemini_live.audio_chunk(1, 0, size=200)
LIVE_SEEDS: tuple[bytes, ...] = tuple(
    fake_gemini_live.dumps(message)
    for message in (
        fake_gemini_live.setup_message("models/gemini-live-2.5-flash-preview"),
        fake_gemini_live.setup_message(
            "projects/p/locations/us-central1/publishers/google/models/gemini-live-2.5-flash", vertex=True
        ),
        fake_gemini_live.setup_complete(),
        fake_gemini_live.transcription(),
        _LIVE_CHUNK,
        {**_LIVE_CHUNK, "usageMetadata": fake_gemini_live.TURN_USAGES[0]},
        fake_gemini_live.turn_complete(fake_gemini_live.TURN_USAGES[1]),
        fake_gemini_live.turn_complete(fake_gemini_live.vertex_usage(fake_gemini_live.TURN_USAGES[1])),
        {"realtimeInput": {"audio": {"data": "QUJD", "mimeType": "audio/pcm;rate=16000"}}},
    )
)
LIVE_KEYS = st.sampled_from(
    [
        "setup",
        "model",
        "serverContent",
        "modelTurn",
        "turnComplete",
        "toolCall",
        "usageMetadata",
        "promptTokenCount",
        "cachedContentTokenCount",
        "responseTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
        "promptTokensDetails",
        "responseTokensDetails",
        "candidatesTokensDetails",
        "toolUsePromptTokensDetails",
        "cacheTokensDetails",
        "modality",
        "tokenCount",
        "trafficType",
    ]
)
LIVE_VALUES = st.recursive(
    st.one_of(
        SCALARS,
        st.sampled_from(["AUDIO", "TEXT", "IMAGE", "VIDEO", "models/gemini-live-2.5-flash", "models/"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(LIVE_KEYS, st.text(max_size=6)), children, max_size=6),
    ),
    max_leaves=30,
)


@st.composite
def live_messages(draw: st.DrawFn) -> bytes:
    """A client or server message: a real one, random bytes or random JSON shaped like them, mutated."""
    base = draw(
        st.one_of(
            st.sampled_from(LIVE_SEEDS),
            st.binary(max_size=300),
            st.builds(
                lambda key, rest: dumps({key: rest}),
                st.sampled_from(["setup", "usageMetadata", "serverContent"]),
                st.dictionaries(LIVE_KEYS, LIVE_VALUES, max_size=5),
            ),
            LIVE_VALUES.map(dumps),
        )
    )
    return draw(mutated(base))


def _without_setup_model(data: bytes) -> str:
    obj = json.loads(data)
    obj["setup"] = {k: v for k, v in obj["setup"].items() if k != "model"}
    return json.dumps(obj, sort_keys=True)


@FUZZ
@given(data=live_messages(), model=st.text(max_size=20))
@example(
    data=b'{"usageMetadata":{"promptTokenCount":1e400,"responseTokensDetails":[{"modality":null}]}}',
    model="x",
)
@example(data=b'{"setup":{"model":"models/a","x":{"model":"models/a"}}}', model="models/b")
def test_live_messages_never_raise(data: bytes, model: str) -> None:
    """Any bytes a socket carries: the cheap tests, the readers and the setup's rewrite never raise
    (the rewrite: only ValueError), and what they read is well formed."""
    assert gemini_live.might_bill(data) == (b'"usageMetadata"' in data)  # its fast path is exact
    quoted = b'"x"' * 40 + data  # more quotes than it hops over
    assert gemini_live.might_bill(quoted) == (b'"usageMetadata"' in quoted)
    assert isinstance(gemini_live.starts_turn(data), bool)
    found = gemini_live.read_usage(data)
    assert found is None or isinstance(found.usage, Usage)
    if not gemini_live.might_bill(data):
        assert found is None  # what the cheap test lets pass unread never carries usage
    setup = gemini_live.read_setup(data)
    assert setup is None or setup.model is None or (isinstance(setup.model, str) and setup.model)
    if setup is not None:
        assert gemini_live.is_setup(data)
    try:
        rewritten = gemini_live.with_model(data, model)
    except ValueError:
        return
    # Only setup.model changed, and it names the model asked for.
    assert json.loads(rewritten)["setup"]["model"].endswith(model.strip().removeprefix("models/"))
    assert _without_setup_model(rewritten) == _without_setup_model(data)


# ---------------------------------------------------------------- Responses over WebSocket

RESPONSES_WS_SEEDS: tuple[bytes, ...] = tuple(
    fake_responses_ws.dumps(event)
    for event in (
        fake_responses_ws.create_event("gpt-5", "a", max_output_tokens=10),
        fake_responses_ws.create_event(None, input=[{"role": "user", "content": "Grüße"}]),
        {"type": "response.steer", "previous_response_id": "resp_1", "input": "more"},
        fake_responses_ws.response_created("resp_1", "gpt-5", "a"),
        fake_responses_ws.text_delta("resp_1", 0, "a"),
        fake_responses_ws.response_terminal("resp_1", "gpt-5", fake_responses_ws.RESPONSE_USAGE, "a"),
        fake_responses_ws.response_terminal(
            "resp_1", "gpt-5", None, status="failed", output=[fake_responses_ws.web_search_call(1)]
        ),
        fake_responses_ws.request_error("nope", "b"),
        fake_responses_ws.create_event(
            "gpt-5", "a", tools=[{"type": "image_generation", "model": "gpt-image-1", "partial_images": 1}]
        ),
        fake_responses_ws.create_event("gpt-5", tools=[{"type": "function"}, {"type": "image_generation"}]),
        {
            "type": "response.image_generation_call.partial_image",
            "item_id": "ig_1",
            "partial_image_b64": "QUJD" * 300,
            "stream_id": "a",
            "quality": "low",
        },
        {"type": "response.image_generation_call.completed", "item_id": "ig_1", "stream_id": "a"},
    )
)
RESPONSES_WS_TYPES = st.sampled_from(
    [
        "response.create",
        "response.steer",
        "response.created",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "response.cancelled",
        "response.output_text.delta",
        "response.image_generation_call.partial_image",
        "response.image_generation_call.completed",
        "image_generation",
        "error",
    ]
)
RESPONSES_WS_KEYS = st.sampled_from(
    [
        "type",
        "model",
        "stream_id",
        "response",
        "usage",
        "input_tokens",
        "output_tokens",
        "input_tokens_details",
        "cached_tokens",
        "output",
        "status",
        "error",
        "sequence_number",
        "incomplete_details",
        "reason",
        "id",
        "service_tier",
        "tools",
        "item_id",
        "quality",
        "size",
    ]
)
RESPONSES_WS_VALUES = st.recursive(
    st.one_of(SCALARS, RESPONSES_WS_TYPES),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(RESPONSES_WS_KEYS, st.text(max_size=6)), children, max_size=6),
    ),
    max_leaves=30,
)


@st.composite
def responses_ws_messages(draw: st.DrawFn) -> bytes:
    """A client or server message: a real one, random bytes or random JSON shaped like them, mutated."""
    base = draw(
        st.one_of(
            st.sampled_from(RESPONSES_WS_SEEDS),
            st.binary(max_size=300),
            st.builds(
                lambda kind, rest: dumps({"type": kind, **rest}),
                RESPONSES_WS_TYPES,
                st.dictionaries(RESPONSES_WS_KEYS, RESPONSES_WS_VALUES, max_size=5),
            ),
            RESPONSES_WS_VALUES.map(dumps),
        )
    )
    return draw(mutated(base))


@FUZZ
@given(data=responses_ws_messages(), model=st.text(max_size=20), pad=st.sampled_from(["", "é" * 3000]))
@example(data=b'{"type":"response.completed","response":{"usage":{"input_tokens":1e400}}}', model="x", pad="")
@example(data=b'{"type":"response.create","model":"a","x":{"model":"a"}}', model="b", pad="")
@example(
    data=b'{"type":[],"response":{}}', model="", pad=""
)  # an unhashable type: a fresh clone's run found it
def test_responses_ws_messages_never_raise(data: bytes, model: str, pad: str) -> None:
    """Any bytes a socket carries: the cheap tests, the readers and the create's rewrite never raise
    (the rewrite: only ValueError), and what they read is well formed."""
    event = openai_responses_ws.read_server_event(data)
    assert event is None or isinstance(
        event, openai_responses_ws.Started | openai_responses_ws.Ended | openai_responses_ws.Rejected
    )
    if isinstance(event, openai_responses_ws.Ended):
        assert event.metered.usage is not None or event.metered.error
    if event is not None and not values.is_delta(data):
        assert openai_responses_ws.might_matter(data)  # what the cheap test lets pass unread is nothing
    image = openai_responses_ws.read_image_event(data)
    if image is not None:
        assert image.kind.startswith(openai_api.IMAGE_EVENT)
        assert image.stream_id is None or isinstance(image.stream_id, str)
        openai_api.ImageEvents().feed(image.kind, data)
    create = openai_responses_ws.read_create(data)
    if create is None:
        return
    tools = openai_media.image_tools(create.body)
    if tools:  # its image tools' models written in: only they change
        changes = {tool.index: model or "m" for tool in tools}
        rewritten_tools = openai_responses_ws.with_tool_models(data, changes)
        wanted = openai_media.with_image_tool_models(create.body, changes)
        assert json.loads(rewritten_tools) == wanted
        assert len(rewritten_tools) <= 4000 or rewritten_tools.isascii()
    assert openai_responses_ws.may_be_create(data)
    assert create.model is None or (isinstance(create.model, str) and create.model.strip())
    if pad and isinstance(create.body.get("input"), str | None):  # a large non-ASCII create
        data = json.dumps({**create.body, "input": pad}, ensure_ascii=False).encode()
    try:
        rewritten = openai_responses_ws.with_model(data, model)
    except ValueError:
        return
    # Only the model changed, and a rewritten message past one fragment is ASCII.
    assert json.loads(rewritten) == {**json.loads(data), "model": model}
    assert len(rewritten) <= 4000 or rewritten == data or rewritten.isascii()


@FUZZ
@given(obj=st.dictionaries(st.sampled_from(["result", "x", "output"]), JSON_VALUES), spaced=st.booleans())
def test_cutting_a_final_events_images_keeps_its_json(obj: dict[str, Any], spaced: bool) -> None:
    """Whatever the event holds, what is left decodes, with the same keys, every value but a long
    "result" string as it was."""
    event = {"pad": "p" * openai_api.CUT_RESULTS_FROM, **obj}
    data = json.dumps(event, separators=(", ", ": ") if spaced else (",", ":")).encode()
    cut = json.loads(openai_api.without_image_results(data))
    assert cut.keys() == event.keys() and cut["pad"] == event["pad"]
    for key in ("x", "output"):
        assert cut.get(key) == event.get(key) or "result" in json.dumps(event.get(key))
