"""OpenAI parsers: paths, JSON bodies, streams split anywhere and content-encoded."""

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
from addon.pricing import price
from addon.providers import openai_api, values
from addon.providers.openai_api import (
    StreamParser,
    extract_usage,
    flavor_for_path,
    has_usage,
    is_usage_only_chunk,
    parse_response,
)
from addon.record import CallRecord
from addon.sse import SSEDecoder, SSEEvent
from addon.usage import Metered, Usage

FIXTURES = Path(__file__).parent / "fixtures"

# fixture -> (flavor, expected result of the whole stream)
STREAMS: dict[str, tuple[str, Metered]] = {
    "openai_chat_stream.sse": (
        "chat",
        Metered(Usage(input_tokens=21, output_tokens=14), "gpt-4o-mini-2024-07-18", None),
    ),
    "openai_chat_reasoning_stream.sse": (
        "chat",
        Metered(
            Usage(input_tokens=2048, cache_read_tokens=1792, output_tokens=917, reasoning_tokens=896),
            "o4-mini-2025-04-16",
            None,
        ),
    ),
    # legacy completions (gpt-3.5-turbo-instruct) with stream_options.include_usage
    "openai_completions_stream.sse": (
        "completions",
        Metered(Usage(input_tokens=5, output_tokens=7), "gpt-3.5-turbo-instruct:20230824-v2", None),
    ),
    "openai_responses_stream.sse": (
        "responses",
        Metered(
            Usage(input_tokens=1536, cache_read_tokens=1280, output_tokens=215, reasoning_tokens=192),
            "gpt-5-mini-2025-08-07",
            None,
        ),
    ),
}
ENCODERS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "br": brotli.compress}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events_of(data: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(data) + decoder.close()


def run(flavor: str, pieces: Iterable[bytes], encoding: str | None = None) -> tuple[Metered, bytes]:
    """Pieces -> content decoding -> SSE -> parser, as the addon does. Returns (result, decoded raw)."""
    content = StreamDecoder(encoding)
    sse = SSEDecoder()
    parser = StreamParser(flavor)
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


# --- paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "flavor"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/chat/completions?api-version=2024-10-21", "chat"),
        ("/v1/chat/completions/", "chat"),
        ("/openai/v1/chat/completions", "chat"),
        ("/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21", "chat"),
        ("/v1beta/openai/chat/completions", "chat"),
        ("/v1/responses", "responses"),
        ("/v1/responses?stream=true", "responses"),
        ("/v1/responses/compact", "responses"),  # Codex CLI's compaction: billed
        ("/v1/embeddings", "embeddings"),
        ("/api/v1/embeddings", "embeddings"),
        ("/v1/models", None),
        ("/v1/models/gpt-4o", None),
        ("/v1/responses/resp_123", None),
        ("/v1/responses/resp_123/input_items", None),
        ("/v1/responses/resp_123/cancel", None),
        ("/v1/chat/completions/chatcmpl-123", None),
        ("/v1/files", None),
        ("/v1/completions", "completions"),  # legacy completions (and vLLM, Together, Fireworks...)
        ("/v1/completions?api-version=2024-10-21", "completions"),
        ("/openai/deployments/instruct/completions", "completions"),
        ("/inference/v1/completions", "completions"),
        ("/v1/completions/cmpl-123", None),
        ("/", None),
        ("", None),
    ],
)
def test_flavor_for_path(path: str, flavor: str | None) -> None:
    assert flavor_for_path(path) == flavor


# --- complete bodies ---------------------------------------------------------------------


def test_chat_body_with_cached_and_reasoning_tokens() -> None:
    assert parse_response("chat", fixture("openai_chat_reasoning.json")) == Metered(
        Usage(input_tokens=5120, cache_read_tokens=4864, output_tokens=1410, reasoning_tokens=1344),
        "o3-2025-04-16",
        None,
    )


def test_responses_body() -> None:
    assert parse_response("responses", fixture("openai_responses.json")) == Metered(
        Usage(input_tokens=36, output_tokens=3), "gpt-4.1-2025-04-14", None
    )


def test_embeddings_body() -> None:
    assert parse_response("embeddings", fixture("openai_embeddings.json")) == Metered(
        Usage(input_tokens=57), "text-embedding-3-small", None
    )


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_error_body() -> None:
    error = {
        "error": {
            "message": "Incorrect API key provided: sk-abc.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert parse_response("chat", body(error)) == Metered(
        None, None, "invalid_api_key: Incorrect API key provided: sk-abc."
    )
    no_code = {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": None}}
    assert parse_response("chat", body(no_code)).error == "requests: Rate limit reached"


def test_failed_responses_body_keeps_usage_and_sets_error() -> None:
    failed = {
        "object": "response",
        "status": "failed",
        "model": "gpt-4.1",
        "error": {"code": "server_error", "message": "The model failed."},
        "usage": {"input_tokens": 12, "output_tokens": 0},
    }
    assert parse_response("responses", body(failed)) == Metered(
        Usage(input_tokens=12), "gpt-4.1", "server_error: The model failed."
    )


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty response body"),
        (b"  \n", "empty response body"),
        (b"<html>502 Bad Gateway</html>", "response body is not JSON"),
        (b'{"usage": {"prompt_tokens": 1', "response body is not JSON"),
        (b"\xff\xfe\x00garbage", "response body is not JSON"),
        (b"[1, 2]", "response body is not a JSON object"),
        (b'{"id": "chatcmpl-1", "model": "gpt-4o"}', "no usage in response"),
        (b'{"model": "gpt-4o", "usage": null}', "no usage in response"),
        (b'{"model": "gpt-4o", "usage": {}}', "no usage in response"),
    ],
)
def test_bodies_without_usage_never_raise(raw: bytes, error: str) -> None:
    result = parse_response("chat", raw)
    assert result.usage is None
    assert result.error == error


def test_missing_and_null_details_are_tolerated() -> None:
    assert extract_usage(
        {
            "prompt_tokens": 9,
            "completion_tokens": 4,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    ) == Usage(input_tokens=9, output_tokens=4)
    assert extract_usage({"prompt_tokens": 9, "completion_tokens": None}) == Usage(input_tokens=9)
    assert extract_usage(
        {"input_tokens": 30, "output_tokens": 5, "input_tokens_details": None, "output_tokens_details": {}}
    ) == Usage(input_tokens=30, output_tokens=5)
    assert extract_usage({"prompt_tokens": "9", "completion_tokens": True}) == Usage()
    assert extract_usage(None) is None
    assert extract_usage([1]) is None


def test_cache_write_tokens_are_taken_when_reported() -> None:
    chat = {
        "prompt_tokens": 3000,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 2900},
    }
    assert extract_usage(chat) == Usage(input_tokens=3000, cache_write_tokens=2900, output_tokens=10)
    responses = {
        "input_tokens": 3000,
        "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 2800},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    assert extract_usage(responses) == Usage(
        input_tokens=3000, cache_read_tokens=100, cache_write_tokens=2800, output_tokens=7
    )


# --- streams -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_whole(name: str) -> None:
    flavor, expected = STREAMS[name]
    data = fixture(name)
    result, raw = run(flavor, [data])
    assert result == expected
    assert raw == data


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_split_in_two_at_every_byte_and_one_byte_at_a_time(name: str) -> None:
    flavor, expected = STREAMS[name]
    data = fixture(name)
    for i in range(len(data) + 1):
        assert run(flavor, [data[:i], data[i:]]) == (expected, data), i
    assert run(flavor, (data[i : i + 1] for i in range(len(data)))) == (expected, data)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_encoded_stream_split_at_every_byte(name: str, encoding: str) -> None:
    flavor, expected = STREAMS[name]
    data = fixture(name)
    encoded = ENCODERS[encoding](data)
    for i in range(len(encoded) + 1):
        assert run(flavor, [encoded[:i], encoded[i:]], encoding) == (expected, data), i
    assert run(flavor, (encoded[i : i + 1] for i in range(len(encoded))), encoding) == (expected, data)


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_with_other_line_endings(name: str, eol: bytes) -> None:
    flavor, expected = STREAMS[name]
    data = fixture(name).replace(b"\n", eol)
    assert run(flavor, [data]) == (expected, data)
    assert run(flavor, (data[i : i + 7] for i in range(0, len(data), 7))) == (expected, data)


def test_stream_with_comments_and_keepalives() -> None:
    flavor, expected = STREAMS["openai_chat_stream.sse"]
    data = b": OPENROUTER PROCESSING\n\n" + fixture("openai_chat_stream.sse").replace(
        b"\n\n", b"\n\n: keep-alive\n\n", 3
    )
    assert run(flavor, [data]) == (expected, data)


def test_json_is_decoded_only_for_events_that_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(data: bytes) -> Any:
            calls.append(data)
            return json.loads(data)

    monkeypatch.setattr(values, "json", CountingJson)  # every parser decodes through values.loads
    # chat: the first chunk (for the model) and the usage chunk; not the 4 chunks with "usage":null
    assert run("chat", [fixture("openai_chat_stream.sse")])[0] == STREAMS["openai_chat_stream.sse"][1]
    assert len(calls) == 2
    calls.clear()
    # responses: response.created (model) and response.completed; not in_progress nor the deltas
    assert run("responses", [fixture("openai_responses_stream.sse")])[0].usage is not None
    assert [json.loads(c)["type"] for c in calls] == ["response.created", "response.completed"]


def test_chat_stream_truncated_in_the_usage_chunk() -> None:
    data = fixture("openai_chat_stream.sse")
    cut = data.index(b'"usage":{"prompt_tokens"') + 20
    sse = SSEDecoder()
    parser = StreamParser("chat")
    for event in sse.feed(data[:cut]):
        parser.feed(event)
    tail = sse.close()
    assert len(tail) == 1
    assert tail[0].data.endswith(b'"usage":{"prompt_tok')
    parser.feed(tail[0])
    assert parser.result() == Metered(
        None, "gpt-4o-mini-2024-07-18", "no usage in stream (1 event(s) not JSON)"
    )
    assert parser.done is False


def test_chat_stream_cut_before_done_keeps_the_usage() -> None:
    flavor, expected = STREAMS["openai_chat_stream.sse"]
    data = fixture("openai_chat_stream.sse")
    result, _ = run(flavor, [data[: data.index(b"data: [DONE]")]])
    assert result == expected


def chat_chunk(text: str | None, usage: dict[str, int] | None, finish: str | None = None) -> bytes:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]
    obj = {"id": "c1", "object": "chat.completion.chunk", "model": "m-1", "choices": choices, "usage": usage}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_a_running_usage_on_every_chat_chunk_is_a_floor_until_the_last() -> None:
    """Some OpenAI-compatible servers (vLLM's continuous usage stats) count on every chunk: cut
    short, the last count is not the call's, its output left to an estimate from the text."""
    running = chat_chunk("Hello", {"prompt_tokens": 10, "completion_tokens": 1}) + chat_chunk(
        " there", {"prompt_tokens": 10, "completion_tokens": 2}
    )
    result, _ = run("chat", [running])
    assert result.usage == Usage(input_tokens=10, output_tokens=2)
    assert (result.output_partial, result.output_text) == (True, "Hello there")
    for end in (
        chat_chunk("!", {"prompt_tokens": 10, "completion_tokens": 3}, "stop"),  # with the finish_reason
        chat_chunk(None, {"prompt_tokens": 10, "completion_tokens": 3}),  # include_usage's own chunk
        chat_chunk("!", None) + b"data: [DONE]\n\n",  # the stream's end
    ):
        result, _ = run("chat", [running + end])
        assert (result.output_partial, result.output_text) == (False, None)


def test_a_single_trailing_usage_chunk_is_not_a_running_count() -> None:
    """Review: OpenRouter's usage chunk comes after the finishing chunk, with ``choices: [{delta:
    {content: ""}, finish_reason: null}]``, the stream's only usage. Ended without [DONE] it was
    called partial and its exact counts estimated."""
    data = fixture("openrouter_stream.sse")
    result, _ = run("chat", [data[: data.index(b"data: [DONE]")]])
    assert result.usage is not None and result.usage.output_tokens == 9
    assert (result.output_partial, result.output_text) == (False, None)
    # the same chunk carrying content is a count mid-answer: partial until the stream's end
    content = chat_chunk("Hello", {"prompt_tokens": 10, "completion_tokens": 1})
    assert run("chat", [content])[0].output_partial is True


def two_choices(parts: list[tuple[int, str, str | None]], completion: int) -> bytes:
    """A chat chunk of several choices (index, text, finish_reason) with a running usage."""
    choices = [{"index": i, "delta": {"content": t}, "finish_reason": f} for i, t, f in parts]
    usage = {"prompt_tokens": 10, "completion_tokens": completion}
    obj = {"id": "c1", "object": "chat.completion.chunk", "model": "m-1", "choices": choices, "usage": usage}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_n_choices_with_a_running_count_end_when_all_have_finished() -> None:
    """Review: with n > 1, any one choice's finish_reason made the running count final. Every
    choice seen must have finished."""
    first = two_choices([(0, "a", None), (1, "b", None)], 2)
    one_done = two_choices([(0, ".", "stop"), (1, "b", None)], 4)
    result, _ = run("chat", [first + one_done])
    assert (result.output_partial, result.usage.output_tokens) == (True, 4)  # type: ignore[union-attr]
    # choice 1 finishes in its own chunk first, choice 0's finishing chunk comes last: final
    one_then_zero = two_choices([(1, ".", "length")], 4) + two_choices([(0, ".", "stop")], 5)
    result, _ = run("chat", [first + one_then_zero])
    assert (result.output_partial, result.usage.output_tokens) == (False, 5)  # type: ignore[union-attr]
    # choice 0 finished, choice 1 still going in the last chunk: partial
    zero_then_one = two_choices([(0, ".", "stop")], 4) + two_choices([(1, "bb", None)], 6)
    result, _ = run("chat", [first + zero_then_one])
    assert (result.output_partial, result.usage.output_tokens) == (True, 6)  # type: ignore[union-attr]


def test_chat_stream_without_include_usage() -> None:
    data = b"".join(
        e.raw for e in events_of(fixture("openai_chat_stream.sse")) if b'"choices":[]' not in e.data
    )
    parser = StreamParser("chat")
    for event in events_of(data):
        parser.feed(event)
    assert parser.done is True
    assert parser.result() == Metered(None, "gpt-4o-mini-2024-07-18", "stream ended without usage")


def test_completions_body_is_metered_like_chat() -> None:
    body = json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    ).encode()
    assert parse_response("completions", body) == Metered(
        Usage(input_tokens=5, output_tokens=2), "gpt-3.5-turbo-instruct", None
    )


def test_completions_stream_without_usage_keeps_its_text_for_an_estimate() -> None:
    """Without include_usage (a server that ignores it) the stream's ``choices[].text`` is kept."""
    data = b"".join(
        e.raw for e in events_of(fixture("openai_completions_stream.sse")) if b'"choices":[]' not in e.data
    )
    parser = StreamParser("completions")
    for event in events_of(data):
        parser.feed(event)
    result = parser.result()
    assert parser.done is True and result.usage is None
    assert result.error == "stream ended without usage"
    assert result.output_text == '\n\nHello, "usage": 3 world \u2713'


def test_chat_stream_error_event() -> None:
    data = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
        b'"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}\n\n'
        b'data: {"error":{"message":"The server had an error","type":"server_error",'
        b'"param":null,"code":null}}\n\n'
    )
    assert run("chat", [data])[0] == Metered(None, "gpt-4o", "server_error: The server had an error")


def test_responses_stream_truncated_after_deltas() -> None:
    data = fixture("openai_responses_stream.sse")
    result, _ = run("responses", [data[: data.index(b"event: response.output_text.done")]])
    assert result == Metered(None, "gpt-5-mini-2025-08-07", "no usage in stream")


def responses_event(kind: str, response: dict[str, Any] | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {"type": kind, "sequence_number": 1, **extra}
    if response is not None:
        payload["response"] = response
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def test_responses_incomplete_has_usage_and_no_error() -> None:
    response = {
        "status": "incomplete",
        "model": "gpt-5-2025-08-07",
        "incomplete_details": {"reason": "max_output_tokens"},
        "usage": {"input_tokens": 80, "output_tokens": 64, "output_tokens_details": {"reasoning_tokens": 64}},
    }
    parser = StreamParser("responses")
    for event in events_of(responses_event("response.incomplete", response)):
        parser.feed(event)
    assert parser.done is True
    assert parser.result() == Metered(
        Usage(input_tokens=80, output_tokens=64, reasoning_tokens=64), "gpt-5-2025-08-07", None
    )


def test_responses_failed_sets_error_and_keeps_usage() -> None:
    response = {
        "status": "failed",
        "model": "gpt-5-2025-08-07",
        "error": {"code": "server_error", "message": "An error occurred while processing your request."},
        "usage": {"input_tokens": 80, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3},
    }
    data = responses_event(
        "response.created", {"status": "in_progress", "model": "gpt-5-2025-08-07", "usage": None}
    )
    data += responses_event("response.failed", response)
    assert run("responses", [data])[0] == Metered(
        Usage(input_tokens=80, output_tokens=3),
        "gpt-5-2025-08-07",
        "server_error: An error occurred while processing your request.",
    )


def test_responses_error_event() -> None:
    data = responses_event("error", code="rate_limit_exceeded", message="Slow down", param=None)
    assert run("responses", [data])[0] == Metered(None, None, "rate_limit_exceeded: Slow down")


def test_responses_events_without_event_names() -> None:
    # Some gateways drop the `event:` lines; the "type" in the data still decides.
    flavor, expected = STREAMS["openai_responses_stream.sse"]
    data = b"".join(e.raw.split(b"\n", 1)[1] for e in events_of(fixture("openai_responses_stream.sse")))
    assert b"event:" not in data
    result, _ = run(flavor, [data])
    assert result == expected


@pytest.mark.parametrize("flavor", ["chat", "responses"])
def test_garbage_stream_does_not_raise(flavor: str) -> None:
    garbage = bytes((i * 7919 + 13) % 256 for i in range(4000))
    garbage += b'\n\ndata: {"usage": {"prompt_tokens": 1\n\nevent: response.completed\ndata: {\n\n'
    result, raw = run(flavor, (garbage[i : i + 3] for i in range(0, len(garbage), 3)))
    assert raw == garbage
    assert result.usage is None
    assert result.error is not None
    assert result.error.startswith("no usage in stream (")


# --- the include_usage chunk ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["openai_chat_stream.sse", "openai_chat_reasoning_stream.sse"])
def test_is_usage_only_chunk(name: str) -> None:
    events = events_of(fixture(name))
    flags = [is_usage_only_chunk(e) for e in events]
    assert flags == [False] * (len(events) - 2) + [True, False]  # ..., usage chunk, [DONE]
    assert json.loads(events[-2].data)["choices"] == []


def test_is_usage_only_chunk_edge_cases() -> None:
    def event(data: bytes) -> SSEEvent:
        return SSEEvent(None, data, b"data: " + data + b"\n\n")

    assert (
        is_usage_only_chunk(event(b'{"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}'))
        is False
    )
    assert is_usage_only_chunk(event(b'{"choices": [], "usage": null}')) is False
    assert is_usage_only_chunk(event(b'{"choices": [], "usage" : {"prompt_tokens": 1}}')) is True
    assert is_usage_only_chunk(event(b'{"usage": {"prompt_tokens": 1}}')) is True
    assert is_usage_only_chunk(event(b'{"choices":[], "usage": {"prompt_tokens": 1')) is False
    assert is_usage_only_chunk(SSEEvent(None, b"", b": ping\n\n")) is False


def test_has_usage_substring_test() -> None:
    assert has_usage(b'{"usage":{"a":1}}') is True
    assert has_usage(b'{"usage" :  {"a":1}}') is True
    assert has_usage(b'{"usage":null}') is False
    assert has_usage(b'{"usage": null, "x": 1}') is False
    assert has_usage(b'{"delta":{"content":"\\"usage\\": 12"},"usage":null}') is False
    assert has_usage(b'{"usage":null,"x":{"usage":{"a":1}}}') is True
    assert has_usage(b"") is False
    # a usage that is not an object is no usage (as null is): no chunk with usage to count
    for value in (b"false", b"true", b"0", b"12", b'"x"', b"[]", b"[1]"):
        assert has_usage(b'{"usage":' + value + b"}") is False, value
        assert has_usage(b'{"usage" : ' + value + b', "x": 1}') is False, value


def test_a_usage_that_is_not_an_object_is_not_a_running_count() -> None:
    """Review (hypothesis, plain lane): a junk ``{"usage": false}`` event counted as a chunk with
    usage, so OpenRouter's only real usage chunk (its trailing one, choices with an empty delta and
    ``finish_reason`` null) looked like the second of a running count: cut before ``[DONE]`` (and
    here without its finishing chunk) it was called partial (output re-estimated, a note on the
    row) though, the stream's only usage, its counts are the call's."""
    data = fixture("openrouter_stream.sse")
    data = b"".join(e.raw for e in events_of(data) if b'"finish_reason":"stop"' not in e.data)
    for junk in (b"false", b"0", b'"none"', b"[]"):
        stream = b'data: {"usage":' + junk + b"}\n\n" + data[: data.index(b"data: [DONE]")]
        result, _ = run("chat", [stream])
        assert result.usage == Usage(input_tokens=31, output_tokens=9), junk
        assert (result.output_partial, result.output_text, result.error) == (False, None, None), junk


def test_large_embeddings_bodies_are_read_from_their_tail() -> None:
    data = [{"object": "embedding", "index": i, "embedding": [0.0123456789] * 1536} for i in range(50)]
    usage = {"prompt_tokens": 812, "total_tokens": 812}
    tail_last = json.dumps(
        {"object": "list", "data": data, "model": "text-embedding-3-small", "usage": usage}
    )
    usage_first = json.dumps(
        {"usage": usage, "model": "text-embedding-3-small", "object": "list", "data": data}
    )
    for body in (tail_last.encode(), usage_first.encode()):
        assert len(body) > openai_api.EMBEDDINGS_TAIL_PARSE
        got = openai_api.parse_response("embeddings", body)
        assert got.usage == Usage(input_tokens=812) and got.model == "text-embedding-3-small"


def test_the_service_tier_is_read_from_bodies_and_streams() -> None:
    """The tier that served the call prices it (flex is half, priority double, for gpt-5)."""
    body = {"model": "gpt-5", "service_tier": "flex", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    assert parse_response("chat", json.dumps(body).encode()).service_tier == "flex"
    assert parse_response("chat", json.dumps({**body, "service_tier": None}).encode()).service_tier is None
    for name, flavor, tier in (
        ("openai_chat_stream.sse", "chat", "default"),
        ("openai_responses_stream.sse", "responses", "default"),  # the final event's, not "auto"
    ):
        parser = StreamParser(flavor)
        for event in SSEDecoder().feed((FIXTURES / name).read_bytes()):
            parser.feed(event)
        assert parser.result().service_tier == tier
    chunk = {"model": "gpt-5", "choices": [], "service_tier": "priority", "usage": body["usage"]}
    parser = StreamParser("chat")
    for event in SSEDecoder().feed(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"):
        parser.feed(event)
    assert parser.result().service_tier == "priority"


def test_a_large_embeddings_body_keeps_the_cost_the_provider_reported() -> None:
    """OpenRouter's usage.cost, read from the tail of a body too large to decode whole."""
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0123456] * 9000}],
        "model": "openai/text-embedding-3-small",
        "usage": {"prompt_tokens": 1000, "total_tokens": 1000, "cost": 0.00002},
    }
    raw = json.dumps(body).encode()
    assert len(raw) > openai_api.EMBEDDINGS_TAIL_PARSE
    metered = parse_response("embeddings", raw)
    assert (metered.usage, metered.provider_cost) == (Usage(input_tokens=1000), Decimal("0.00002"))


def test_hosted_web_searches_in_a_responses_output_are_counted_and_priced() -> None:
    """Each web_search_call item that searched is one billed search ($10 per 1,000 for gpt-5);
    opening a page or finding in it is part of a search already counted."""
    usage = {"input_tokens": 1_000, "output_tokens": 100, "output_tokens_details": {"reasoning_tokens": 0}}
    output = [
        {
            "type": "web_search_call",
            "id": "ws_1",
            "status": "completed",
            "action": {"type": "search", "query": "a"},
        },
        {"type": "web_search_call", "id": "ws_2", "status": "completed", "action": {"type": "open_page"}},
        {
            "type": "web_search_call",
            "id": "ws_3",
            "status": "completed",
            "action": {"type": "search", "query": "b"},
        },
        {"type": "web_search_call", "id": "ws_4", "status": "completed"},  # older: no action
        {"type": "message", "content": [{"type": "output_text", "text": "..."}]},
    ]
    body = {"object": "response", "model": "gpt-5", "status": "completed", "output": output, "usage": usage}
    metered = parse_response("responses", json.dumps(body).encode())
    assert metered.usage is not None and metered.usage.web_searches == 3
    # 1,000 in at $1.25 and 100 out at $10 per 1M (0.00225), 3 searches at $10 per 1,000 (0.03)
    when = datetime(2026, 11, 1, tzinfo=UTC)
    assert price("openai", "gpt-5", metered.usage, when).cost_usd == Decimal("0.03225")
    parser = StreamParser("responses")
    final = {"type": "response.completed", "response": body}
    parser.feed(SSEEvent("response.completed", json.dumps(final).encode(), b""))
    streamed = parser.result().usage
    assert streamed is not None and streamed.web_searches == 3
    plain = parse_response("responses", json.dumps(body | {"output": output[-1:]}).encode())
    assert plain.usage is not None and plain.usage.web_searches == 0


def test_hosted_file_searches_in_a_responses_output_are_counted_and_priced() -> None:
    """Each file_search_call item is one billed tool call ($2.50 per 1,000; genai-prices'
    storage_searches_kcount), however many queries it ran; stored as file_searches."""
    usage = {"input_tokens": 1_000, "output_tokens": 100, "input_tokens_details": {"cached_tokens": 0}}
    output = [
        {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["a", "b"]},
        {"type": "file_search_call", "id": "fs_2", "status": "completed", "queries": ["c"]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
        {"type": "message", "content": [{"type": "output_text", "text": "..."}]},
    ]
    body = {"object": "response", "model": "gpt-4.1-2025-04-14", "status": "completed", "output": output}
    body["usage"] = usage
    parser = StreamParser("responses")
    final = {"type": "response.completed", "response": body}
    parser.feed(SSEEvent("response.completed", json.dumps(final).encode(), b""))
    when = datetime(2026, 11, 1, tzinfo=UTC)
    expected = Usage(input_tokens=1_000, output_tokens=100, web_searches=1, file_searches=2)
    for metered in (parse_response("responses", json.dumps(body).encode()), parser.result()):
        assert metered.usage == expected
        # gpt-4.1: 1,000 x $2 + 100 x $8 per 1M (0.0028), 1 web search $0.01 (gpt-4.1: $10 per 1,000),
        # 2 file searches at $2.50 per 1,000 (0.005)
        assert price("openai", "gpt-4.1", metered.usage, when).cost_usd == Decimal("0.0178")
    counts = GPUsage(input_tokens=1_000, output_tokens=100, web_searches=1, storage_searches=2)
    own = calc_price(counts, "gpt-4.1", provider_id="openai", genai_request_timestamp=when)
    assert own.total_price == Decimal("0.0178")
    record = CallRecord(
        id="t", ts=when, session_id="s", environment="development", provider="openai",
        host="api.openai.com", path="/v1/responses", api_flavor="responses", model_sent="gpt-4.1",
    )  # fmt: skip
    record.set_usage(expected)
    assert record.file_searches == 2 and record.usage == expected


def image_final_event(result: str, separators: tuple[str, str] = (",", ":")) -> bytes:
    """A response.completed carrying an image_generation_call with ``result`` (its base64)."""
    item = {"type": "image_generation_call", "id": "ig_1", "status": "generating", "result": result}
    response = {
        "id": "resp_1",
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [item, {"type": "message", "content": [{"type": "output_text", "text": '"result":"x'}]}],
        "usage": {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
    }
    return json.dumps({"type": "response.completed", "response": response}, separators=separators).encode()


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_a_final_events_image_base64_is_cut_before_it_is_decoded(separators: tuple[str, str]) -> None:
    """Decoding a final event with its images took ~20 ms for 12 MB on the event loop: the base64
    is cut first (~1.4 ms), the rest decoded as it was."""
    data = image_final_event("iVBORw0KGgo" + "A" * 200_000, separators)
    cut = openai_api.without_image_results(data)
    assert len(cut) < 1_000 and json.loads(cut)["response"]["output"][0]["result"] == "_"
    assert json.loads(cut)["response"]["output"][1] == json.loads(data)["response"]["output"][1]
    decoded: list[int] = []
    real = openai_api.loads

    def counting(text: bytes) -> object:
        decoded.append(len(text))
        return real(text)

    parser = openai_api.StreamParser("responses")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai_api, "loads", counting)
        parser.feed(SSEEvent("response.completed", data, b""))
        metered = parser.result()
    assert decoded and max(decoded) < 1_000  # the 200 KB of base64 never went through the decoder
    assert metered.usage is not None and (metered.usage.input_tokens, metered.usage.output_tokens) == (12, 7)
    assert metered.tool_images is not None and len(metered.tool_images.images) == 1  # it carried one


@pytest.mark.parametrize(
    "data",
    [
        image_final_event("short"),  # under the size cut from: as it is
        json.dumps({"pad": "p" * 70_000, "result": 'a quote \\" ' + "b" * 20}).encode(),  # an escape: kept
        json.dumps({"pad": "p" * 70_000, "result": 5, "x": {"result": "tiny"}}).encode(),  # no long string
        b'{"pad":"' + b"p" * 70_000 + b'","result":"unterminated',
    ],
)
def test_what_is_no_images_base64_is_never_cut(data: bytes) -> None:
    assert openai_api.without_image_results(data) == data
