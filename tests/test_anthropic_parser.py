"""Anthropic parser: paths, JSON bodies, streams split anywhere and content-encoded."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import brotli
import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.content_decoding import StreamDecoder
from addon.pricing import Pricer, price
from addon.providers import values, vertex_api
from addon.providers.anthropic_api import StreamParser, extract_usage, flavor_for_path, parse_response
from addon.record import CallRecord
from addon.sse import SSEDecoder, SSEEvent
from addon.usage import Metered, Usage

FIXTURES = Path(__file__).parent / "fixtures"
STREAM = (FIXTURES / "anthropic_stream.sse").read_bytes()
# input 25 + cache write 1100 + cache read 4800; output 91 from the LAST message_delta (not 38 + 91)
STREAM_RESULT = Metered(
    Usage(input_tokens=5925, cache_read_tokens=4800, cache_write_tokens=1100, output_tokens=91),
    "claude-haiku-4-5-20251001",
    None,
)
ENCODERS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "br": brotli.compress}


def events_of(data: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(data) + decoder.close()


def run(pieces: Iterable[bytes], encoding: str | None = None) -> tuple[Metered, bytes]:
    """Pieces -> content decoding -> SSE -> parser, as the addon does. Returns (result, decoded raw)."""
    content = StreamDecoder(encoding)
    sse = SSEDecoder()
    parser = StreamParser("messages")
    raw = bytearray()

    def take(events: list[SSEEvent]) -> None:
        for event in events:
            raw.extend(event.raw)
            parser.feed(event)

    for piece in pieces:
        take(sse.feed(content.decode(piece)))
    take(sse.feed(content.flush()))
    take(sse.close())
    return parser.result(), bytes(raw)


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def message_start(usage: dict[str, Any], model: str = "claude-sonnet-4-5-20250929") -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "usage": usage,
    }
    return sse("message_start", {"type": "message_start", "message": message})


def message_delta(usage: dict[str, Any]) -> bytes:
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    return sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})


# --- paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "flavor"),
    [
        ("/v1/messages", "messages"),
        ("/v1/messages?beta=true", "messages"),
        ("/v1/messages/", "messages"),
        ("/anthropic/v1/messages", "messages"),
        ("/api/v1/messages", "messages"),
        ("/v1/messages/count_tokens", None),
        ("/v1/messages/count_tokens?beta=true", None),
        ("/v1/messages/batches", None),
        ("/v1/messages/batches/msgbatch_01/results", None),
        ("/v1/models", None),
        ("/v1/complete", None),
        ("/messages", None),
        ("", None),
    ],
)
def test_flavor_for_path(path: str, flavor: str | None) -> None:
    assert flavor_for_path(path) == flavor


# --- complete bodies ---------------------------------------------------------------------


def test_body_with_cache_fields() -> None:
    # input 10 + cache write 200 + cache read 3000 -> 3210
    assert parse_response("messages", (FIXTURES / "anthropic_message.json").read_bytes()) == Metered(
        Usage(input_tokens=3210, cache_read_tokens=3000, cache_write_tokens=200, output_tokens=42),
        "claude-sonnet-4-5-20250929",
        None,
    )


def test_body_without_cache_fields_and_with_nulls() -> None:
    body = {"type": "message", "model": "claude-haiku-4-5", "usage": {"input_tokens": 12, "output_tokens": 5}}
    assert parse_response("messages", json.dumps(body).encode()) == Metered(
        Usage(input_tokens=12, output_tokens=5), "claude-haiku-4-5", None
    )
    nulls = {
        "input_tokens": 12,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
        "cache_creation": None,
        "output_tokens": 5,
        "output_tokens_details": None,
    }
    assert extract_usage(nulls) == Usage(input_tokens=12, output_tokens=5)
    assert extract_usage(None) is None


def test_thinking_tokens_are_reported_as_reasoning_when_sent() -> None:
    usage = {"input_tokens": 50, "output_tokens": 700, "output_tokens_details": {"thinking_tokens": 640}}
    assert extract_usage(usage) == Usage(input_tokens=50, output_tokens=700, reasoning_tokens=640)


def test_error_body() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}'
    assert parse_response("messages", body) == Metered(None, None, "overloaded_error: Overloaded")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty response body"),
        (b"upstream connect error", "response body is not JSON"),
        (b'{"usage": {"input_tokens": 1', "response body is not JSON"),
        (b'"just a string"', "response body is not a JSON object"),
        (b'{"type": "message", "model": "claude-haiku-4-5"}', "no usage in response"),
    ],
)
def test_bodies_without_usage_never_raise(raw: bytes, error: str) -> None:
    result = parse_response("messages", raw)
    assert result.usage is None
    assert result.error == error


# --- streams -------------------------------------------------------------------------------


def test_stream_whole() -> None:
    assert run([STREAM]) == (STREAM_RESULT, STREAM)
    events = events_of(STREAM)
    assert [e.event for e in events].count("message_delta") == 2
    assert [e.event for e in events].count("ping") == 1


def test_stream_split_in_two_at_every_byte_and_one_byte_at_a_time() -> None:
    for i in range(len(STREAM) + 1):
        assert run([STREAM[:i], STREAM[i:]]) == (STREAM_RESULT, STREAM), i
    assert run(STREAM[i : i + 1] for i in range(len(STREAM))) == (STREAM_RESULT, STREAM)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_encoded_stream_split_at_every_byte(encoding: str) -> None:
    encoded = ENCODERS[encoding](STREAM)
    for i in range(len(encoded) + 1):
        assert run([encoded[:i], encoded[i:]], encoding) == (STREAM_RESULT, STREAM), i
    assert run((encoded[i : i + 1] for i in range(len(encoded))), encoding) == (STREAM_RESULT, STREAM)


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_stream_with_other_line_endings(eol: bytes) -> None:
    data = STREAM.replace(b"\n", eol)
    assert run([data]) == (STREAM_RESULT, data)
    assert run(data[i : i + 5] for i in range(0, len(data), 5)) == (STREAM_RESULT, data)


def test_stream_with_comments() -> None:
    data = b": hello\n\n" + STREAM.replace(b"\n\n", b"\n\n: keep-alive\n\n", 4)
    assert run([data]) == (STREAM_RESULT, data)


def test_json_is_decoded_only_for_usage_events(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(data: bytes) -> Any:
            calls.append(data)
            return json.loads(data)

    monkeypatch.setattr(values, "json", CountingJson)  # every parser decodes through values.loads
    assert run([STREAM])[0] == STREAM_RESULT
    assert [json.loads(c)["type"] for c in calls] == ["message_start", "message_delta", "message_delta"]


def test_stream_truncated_after_first_message_delta() -> None:
    cut = STREAM.index(b'"usage":{"output_tokens":91}') + 10  # inside the second message_delta
    parser = StreamParser("messages")
    decoder = SSEDecoder()
    for event in decoder.feed(STREAM[:cut]):
        parser.feed(event)
    tail = decoder.close()
    assert [e.event for e in tail] == ["message_delta"]
    parser.feed(tail[0])
    assert parser.done is False
    assert parser.result() == Metered(
        Usage(input_tokens=5925, cache_read_tokens=4800, cache_write_tokens=1100, output_tokens=38),
        "claude-haiku-4-5-20251001",
        None,
    )


def test_stream_truncated_inside_message_start() -> None:
    result, _ = run([STREAM[:200]])
    assert result == Metered(None, None, "no usage in stream (1 event(s) not JSON)")


def test_done_after_message_stop() -> None:
    parser = StreamParser("messages")
    for event in events_of(STREAM):
        parser.feed(event)
    assert parser.done is True


def test_message_delta_overwrites_counts_it_carries() -> None:
    data = (
        message_start(
            {
                "input_tokens": 10,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 70,
                "output_tokens": 1,
            }
        )
        + message_delta({"output_tokens": 5})
        + message_delta(
            {
                "input_tokens": 12,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": None,  # null: keep the earlier value
                "output_tokens": 20,
                "output_tokens_details": {"thinking_tokens": 11},
            }
        )
    )
    assert run([data])[0] == Metered(
        Usage(
            input_tokens=382,
            cache_read_tokens=70,
            cache_write_tokens=300,
            output_tokens=20,
            reasoning_tokens=11,
        ),
        "claude-sonnet-4-5-20250929",
        None,
    )


def test_error_event_mid_stream_keeps_usage_seen_so_far() -> None:
    data = message_start({"input_tokens": 40, "output_tokens": 1}) + sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    assert run([data])[0] == Metered(
        Usage(input_tokens=40, output_tokens=1), "claude-sonnet-4-5-20250929", "overloaded_error: Overloaded"
    )


def test_events_without_event_names() -> None:
    # Some gateways drop the `event:` lines; the "type" in the data still decides.
    data = b"".join(e.raw.split(b"\n", 1)[1] for e in events_of(STREAM))
    assert b"event:" not in data
    assert run([data])[0] == STREAM_RESULT


def test_garbage_stream_does_not_raise() -> None:
    garbage = bytes((i * 7919 + 13) % 256 for i in range(4000))
    garbage += b'\n\nevent: message_start\ndata: {"usage": \n\nevent: message_delta\ndata: nope\n\n'
    result, raw = run(garbage[i : i + 3] for i in range(0, len(garbage), 3))
    assert raw == garbage
    assert result == Metered(None, None, "no usage in stream (2 event(s) not JSON)")


def test_a_message_stop_without_its_event_line_ends_the_stream() -> None:
    """Gateways that drop ``event:`` lines: the unnamed ``message_stop`` is still the final event."""
    parser = StreamParser()
    body = (
        b'data: {"type":"message_start","message":{"model":"claude-haiku-4-5",'
        b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}\n\n'
    )
    for event in SSEDecoder().feed(body):
        parser.feed(event)
    assert not parser.done
    parser.feed(
        SSEEvent(None, b'{"type": "content_block_delta", "delta": {"text": "\\"message_stop\\""}}', b"")
    )
    assert not parser.done  # the words in a text are not the event
    parser.feed(SSEEvent(None, b'{"type":"message_stop"}', b""))
    assert parser.done
    assert parser.result().usage == Usage(input_tokens=10, output_tokens=5)


def test_one_hour_cache_writes_and_web_searches_are_read_from_bodies_and_streams() -> None:
    usage = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 12_000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 10_000},
        "output_tokens": 50,
        "server_tool_use": {"web_search_requests": 3},
    }
    expected = Usage(
        input_tokens=12_100,
        cache_write_tokens=12_000,
        output_tokens=50,
        cache_write_1h_tokens=10_000,
        web_searches=3,
    )
    body = json.dumps({"model": "claude-sonnet-4-5", "usage": usage}).encode()
    assert parse_response("messages", body).usage == expected
    parser = StreamParser()
    start = {k: v for k, v in usage.items() if k != "server_tool_use"} | {"output_tokens": 1}
    events = (
        b"event: message_start\ndata: "
        + json.dumps(
            {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": start}}
        ).encode()
        + b"\n\nevent: message_delta\ndata: "
        + json.dumps(
            {
                "type": "message_delta",
                "usage": {"output_tokens": 50, "server_tool_use": {"web_search_requests": 3}},
            }
        ).encode()
        + b"\n\n"
    )
    for event in SSEDecoder().feed(events):
        parser.feed(event)
    assert parser.result().usage == expected


def test_fast_mode_is_read_as_the_service_tier_and_priced_at_fast_rates() -> None:
    """Fast mode (``speed: "fast"``, Claude Code's /fast): Opus 4.8 at $10 / $50 per 1M against $5 / $25.
    The usage says ``speed``; a body or stream without it is the standard speed."""
    body = {
        "type": "message",
        "model": "claude-opus-4-8",
        "content": [],
        "usage": {
            "input_tokens": 10_000,
            "output_tokens": 1_000,
            "service_tier": "standard",
            "speed": "fast",
        },
    }
    fast = parse_response("messages", json.dumps(body).encode())
    assert fast.service_tier == "fast"
    assert price("anthropic", "claude-opus-4-8", fast.usage, WHEN, service_tier="fast").cost_usd == Decimal(
        "0.15"
    )
    del body["usage"]["speed"]  # type: ignore[attr-defined]
    standard = parse_response("messages", json.dumps(body).encode())
    assert standard.service_tier == "standard"
    assert price(
        "anthropic", "claude-opus-4-8", standard.usage, WHEN, service_tier="standard"
    ).cost_usd == Decimal("0.075")
    start = {"type": "message_start", "message": {"model": "claude-opus-4-8", "usage": body["usage"]}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 1_000, "speed": "fast"}}
    stream = (
        f"event: message_start\ndata: {json.dumps(start)}\n\n"
        f"event: message_delta\ndata: {json.dumps(delta)}\n\n"
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    ).encode()
    parser = StreamParser()
    for event in SSEDecoder().feed(stream):
        parser.feed(event)
    assert parser.result().service_tier == "fast"


WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_us_only_inference_costs_1_1x_on_the_tokens() -> None:
    """usage.inference_geo "us" (Opus 4.6 and later; older models refuse the parameter): 1.1x on every
    token price (docs.aws.amazon.com/claude-platform/.../data-residency.html: "A 1.1x pricing
    multiplier applies"); web searches keep their $10 per 1,000. The row keeps the geo and says why."""
    usage = {
        "input_tokens": 10_000, "output_tokens": 1_000, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0, "service_tier": "standard", "inference_geo": "us",
        "server_tool_use": {"web_search_requests": 2},
    }  # fmt: skip
    body = json.dumps({"type": "message", "model": "claude-opus-4-6", "usage": usage}).encode()
    start = {
        "type": "message_start",
        "message": {"model": "claude-opus-4-6", "usage": usage | {"output_tokens": 1}},
    }
    delta = {
        "type": "message_delta",
        "usage": {"output_tokens": 1_000, "server_tool_use": {"web_search_requests": 2}},
    }
    stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (start, delta))
    parser = StreamParser()
    for event in SSEDecoder().feed(stream.encode()):
        parser.feed(event)
    own = calc_price(
        GPUsage(input_tokens=10_000, output_tokens=1_000), "claude-opus-4-6", provider_id="anthropic",
        genai_request_timestamp=WHEN,
    )  # fmt: skip
    assert own.total_price == Decimal("0.075")  # 10,000 x $5 + 1,000 x $25 per 1M
    for metered in (parse_response("messages", body), parser.result()):
        assert metered.inference_geo == "us"
        record = CallRecord(
            id="t", ts=WHEN, session_id="s", environment="development", provider="anthropic",
            host="api.anthropic.com", path="/v1/messages", api_flavor="messages",
            model_sent="claude-opus-4-6", service_tier=metered.service_tier,
            inference_geo=metered.inference_geo,
        )  # fmt: skip
        record.set_usage(metered.usage)
        Pricer()(record)
        # $0.075 x 1.1 + 2 searches x $0.01
        assert (record.cost_usd, record.price_status) == (Decimal("0.1025"), "priced")
        assert record.price_source == "genai-prices 0.2.3 x1.1 (inference_geo us)"
    global_usage = usage | {"inference_geo": "global"}
    metered = parse_response(
        "messages", json.dumps({"model": "claude-opus-4-6", "usage": global_usage}).encode()
    )
    assert metered.inference_geo == "global"
    assert price(
        "anthropic", "claude-opus-4-6", metered.usage, WHEN, inference_geo="global"
    ).cost_usd == Decimal("0.095")


# --- a stream cut before its final usage ---------------------------------------------------------


def content_delta(delta: dict[str, Any], index: int = 0) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def test_a_stream_cut_before_its_final_usage_has_its_output_unknown() -> None:
    """message_start's output_tokens is a placeholder (1): only a message_delta's count is the
    output. Cut before one, the input and cache counts stand, the output is left to an estimate
    from every delta seen: text, thinking and tool input."""
    data = (
        message_start({"input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 1})
        + sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {}})
        + content_delta({"type": "thinking_delta", "thinking": "Think. "})
        + content_delta({"type": "text_delta", "text": "Hello world. "}, 1)
        + content_delta({"type": "input_json_delta", "partial_json": '{"city": "Par'}, 2)
    )
    result, _ = run([data])
    assert result.usage == Usage(input_tokens=2100, cache_read_tokens=2000, output_tokens=1)
    assert result.output_partial is True
    assert result.output_text == 'Think. Hello world. {"city": "Par'
    assert result.error is None


def test_plain_blocks_taken_whole_count_toward_a_cut_streams_output() -> None:
    parser = StreamParser()
    for event in events_of(message_start({"input_tokens": 7, "output_tokens": 1})):
        parser.feed(event)
    assert parser.take_plain(content_delta({"type": "text_delta", "text": "one "}) + sse("ping", {}))
    assert parser.take_plain(content_delta({"type": "text_delta", "text": "two"}))
    result = parser.result()
    assert (result.output_partial, result.output_text) == (True, "one two")


@pytest.mark.parametrize("cut_at", [b"event: message_delta", b'"usage":{"output_tokens":91}'])
def test_cut_before_the_final_message_delta_is_partial(cut_at: bytes) -> None:
    """Before the first message_delta the output is message_start's placeholder; past the first
    (``stop_reason`` null: a server-tool turn's mid-turn delta, 38) it is a running count, not the
    call's (the final delta, cut inside, is not JSON). Both are floors, left to an estimate."""
    result, _ = run([STREAM[: STREAM.index(cut_at) + (10 if cut_at.startswith(b'"') else 0)]])
    first = cut_at == b"event: message_delta"
    assert result.output_partial is True
    assert result.usage is not None and result.usage.output_tokens == (1 if first else 38)
    assert result.output_text is not None


def test_past_the_final_message_delta_or_at_message_stop_is_not_partial() -> None:
    """The message_delta with a stop reason carries the call's count; message_stop ends the turn."""
    result, _ = run([STREAM[: STREAM.index(b"event: message_stop")]])
    assert (result.output_partial, result.usage.output_tokens) == (False, 91)  # type: ignore[union-attr]
    no_reason = STREAM.replace(b'"stop_reason":"end_turn"', b'"stop_reason":null')
    assert no_reason != STREAM
    result, _ = run([no_reason])  # message_stop still ends it
    assert (result.output_partial, result.usage.output_tokens) == (False, 91)  # type: ignore[union-attr]


def anthropic_cut_in_second_block(n: int = 400) -> bytes:
    """The fixture (a server-tool turn: a message_delta with stop_reason null and a running output
    count of 38, then a second text block, then the final message_delta with 91), with a long
    second block, cut before the final message_delta."""
    data = STREAM[: STREAM.rindex(b"event: content_block_stop")]
    delta = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"text_delta","text":" and then some more words"}}\n\n'
    )
    return data + delta * n


def test_intermediate_message_delta_is_not_the_final_count() -> None:
    """Review: a message_delta with ``stop_reason: null`` (mid-turn, output 38) was taken as final,
    so a stream cut after it was 'reported' at 38 however long the rest of the answer was."""
    result, _ = run([anthropic_cut_in_second_block()])
    assert result.usage is not None and result.usage.output_tokens == 38
    assert result.output_partial is True
    assert result.output_text is not None and result.output_text.count("some more words") == 400


def test_a_whole_stream_is_not_partial() -> None:
    result, _ = run([STREAM])
    assert result.output_partial is False and result.output_text is None


def test_an_error_event_before_the_final_usage_leaves_the_output_to_an_estimate() -> None:
    data = (
        message_start({"input_tokens": 40, "output_tokens": 1})
        + content_delta({"type": "text_delta", "text": "So far"})
        + sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    result, _ = run([data])
    assert result.usage == Usage(input_tokens=40, output_tokens=1)
    assert result.error == "overloaded_error: Overloaded"
    assert (result.output_partial, result.output_text) == (True, "So far")


def test_vertex_claude_streams_are_read_the_same_way() -> None:
    parser = vertex_api.stream_parser("messages")
    data = message_start({"input_tokens": 9, "output_tokens": 1}) + content_delta({"text": "Hi"})
    for event in events_of(data):
        parser.feed(event)
    result = parser.result()
    assert (result.usage, result.output_partial, result.output_text) == (
        Usage(input_tokens=9, output_tokens=1),
        True,
        "Hi",
    )
