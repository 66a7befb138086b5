"""Gemini parser: paths and model rewrite, bodies, SSE and JSON-array streams split anywhere, prices."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon import pricing
from addon.content_decoding import StreamDecoder
from addon.json_stream import JSONArrayDecoder
from addon.providers import values
from addon.providers.gemini_api import (
    StreamParser,
    extract_usage,
    flavor_for_path,
    parse_response,
    request_model,
    stream_framing,
    with_model,
)
from addon.sse import SSEDecoder
from addon.usage import Metered, Usage

FIXTURES = Path(__file__).parent / "fixtures"
SSE_STREAM = (FIXTURES / "gemini_stream_sse.crlf").read_bytes()
ARRAY_STREAM = (FIXTURES / "gemini_stream.json").read_bytes()
# the LAST chunk's usageMetadata: prompt 27; candidates 22 + thoughts 118 (never summed over chunks)
STREAM_RESULT = Metered(
    Usage(input_tokens=27, output_tokens=140, reasoning_tokens=118), "gemini-2.5-flash-lite", None
)
STREAM_TEXT = 'Why did the proxy cross the road? To intercept the "usageMetadata" on the other side. ["}"]'
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _compare_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """``==`` on results checks ``output_text`` too, even if ``Metered`` leaves it out of comparisons."""

    def eq(a: Metered, b: object) -> bool:
        return type(b) is Metered and dataclasses.astuple(a) == dataclasses.astuple(b)

    monkeypatch.setattr(Metered, "__eq__", eq)


def run(pieces: Iterable[bytes], framing: str, encoding: str | None = None) -> tuple[Metered, bytes]:
    """Pieces -> content decoding -> SSE or JSON array -> parser, as the addon would. (result, decoded)"""
    content = StreamDecoder(encoding)
    parser = StreamParser("stream")
    decoded = bytearray()
    if framing == "sse":
        sse = SSEDecoder()

        def take(data: bytes, final: bool = False) -> None:
            for event in sse.feed(data) + (sse.close() if final else []):
                decoded.extend(event.raw)
                parser.feed(event)
    else:
        array = JSONArrayDecoder()

        def take(data: bytes, final: bool = False) -> None:
            decoded.extend(data)
            for element in array.feed(data) + (array.close() if final else []):
                parser.feed(element)

    for piece in pieces:
        take(content.decode(piece))
    take(content.flush(), final=True)
    return parser.result(), bytes(decoded)


# --- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "flavor", "model"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", "generate", "gemini-2.5-flash"),
        ("/v1/models/gemini-2.5-flash:generateContent", "generate", "gemini-2.5-flash"),
        ("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", "stream", "gemini-2.5-pro"),
        ("/v1beta/models/gemini-2.5-pro:streamGenerateContent?key=AIzaSy-x", "stream", "gemini-2.5-pro"),
        ("/v1beta/models/gemini-2.0-flash-001%3AgenerateContent", "generate", "gemini-2.0-flash-001"),
        (
            "/v1alpha/models/gemini-2.5-flash-preview-05-20:generateContent/",
            "generate",
            "gemini-2.5-flash-preview-05-20",
        ),
        (
            "/v1beta/tunedModels/my-support-bot-7k2:generateContent",
            "generate",
            "tunedModels/my-support-bot-7k2",
        ),
        ("/v1beta/models/gemini-2.5-flash:countTokens", None, "gemini-2.5-flash"),
        ("/v1beta/models/gemini-embedding-001:embedContent", None, "gemini-embedding-001"),
        ("/v1beta/models/gemini-embedding-001:batchEmbedContents", None, "gemini-embedding-001"),
        ("/v1beta/models/gemini-2.5-flash:batchGenerateContent", None, "gemini-2.5-flash"),
        ("/v1beta/models/gemini-2.5-flash", None, None),
        ("/v1beta/models", None, None),
        ("/v1beta/openai/chat/completions", None, None),
        ("/v1beta/cachedContents", None, None),
        ("/upload/v1beta/files", None, None),
        ("", None, None),
    ],
)
def test_flavor_and_model_from_path(path: str, flavor: str | None, model: str | None) -> None:
    assert flavor_for_path(path) == flavor
    assert request_model(path, {"contents": []}) == model


@pytest.mark.parametrize(
    ("path", "model", "rewritten"),
    [
        (
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=AIzaSyD-x_y%2Fz",
            "gemini-2.5-flash",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=AIzaSyD-x_y%2Fz",
        ),
        (
            "/v1/models/gemini-2.5-pro:generateContent",
            "models/gemini-2.5-flash-lite",
            "/v1/models/gemini-2.5-flash-lite:generateContent",
        ),
        (
            "/v1beta/models/gemini-2.5-pro%3AgenerateContent?key=k#frag",
            "gemini-2.0-flash",
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent?key=k#frag",
        ),
        (
            "/v1beta/tunedModels/my-bot:generateContent?key=k",
            "gemini-2.5-flash",
            "/v1beta/models/gemini-2.5-flash:generateContent?key=k",
        ),
        (
            "/v1beta/models/gemini-2.5-pro:generateContent/",
            "tunedModels/cheap-bot",
            "/v1beta/tunedModels/cheap-bot:generateContent/",
        ),
    ],
)
def test_with_model_rewrites_only_the_model(path: str, model: str, rewritten: str) -> None:
    body: dict[str, Any] = {"contents": [{"parts": [{"text": "hi"}]}]}
    new_path, new_body = with_model(path, body, model)
    assert new_path == rewritten
    assert new_body is body
    assert request_model(new_path, new_body) == model.removeprefix("models/")
    assert flavor_for_path(new_path) == flavor_for_path(path)


def test_with_model_refuses_a_path_without_a_model() -> None:
    with pytest.raises(ValueError, match="no model"):
        with_model("/v1beta/models", None, "gemini-2.5-flash")
    with pytest.raises(ValueError, match="empty model"):
        with_model("/v1/models/gemini-2.5-pro:generateContent", None, "models/")


@pytest.mark.parametrize(
    ("path", "content_type", "framing"),
    [
        ("/v1beta/models/m:streamGenerateContent?alt=sse", "text/event-stream", "sse"),
        ("/v1beta/models/m:streamGenerateContent?alt=sse", "", "sse"),
        ("/v1beta/models/m:streamGenerateContent?key=k&alt=SSE", "", "sse"),
        ("/v1beta/models/m:streamGenerateContent", "text/event-stream; charset=utf-8", "sse"),
        ("/v1beta/models/m:streamGenerateContent", "application/json; charset=UTF-8", "json_array"),
        ("/v1beta/models/m:streamGenerateContent?alt=sse", "application/json", "json_array"),
        ("/v1beta/models/m:streamGenerateContent?alt=json", "", "json_array"),
        ("/v1beta/models/m:streamGenerateContent", "", "json_array"),
    ],
)
def test_stream_framing(path: str, content_type: str, framing: str) -> None:
    assert stream_framing(path, content_type) == framing


# --- usage and bodies ------------------------------------------------------------------------


def test_generate_body_with_cache_and_thoughts() -> None:
    # prompt 2113 includes the 2037 cached; output = candidates 41 + thoughts 360
    assert parse_response("generate", (FIXTURES / "gemini_generate.json").read_bytes()) == Metered(
        Usage(input_tokens=2113, cache_read_tokens=2037, output_tokens=401, reasoning_tokens=360),
        "gemini-2.5-flash",
        None,
    )


def test_tool_use_prompt_tokens_are_input() -> None:
    meta = {
        "promptTokenCount": 100,
        "toolUsePromptTokenCount": 40,
        "candidatesTokenCount": 20,
        "totalTokenCount": 160,
    }
    assert extract_usage(meta) == Usage(input_tokens=140, output_tokens=20)
    assert extract_usage({"promptTokenCount": 9, "totalTokenCount": 9}) == Usage(input_tokens=9)
    assert extract_usage({"promptTokensDetails": []}) is None
    assert extract_usage(None) is None


def test_blocked_prompt_has_usage_and_no_text() -> None:
    body = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
    }
    assert parse_response("generate", json.dumps(body).encode()) == Metered(
        Usage(input_tokens=8), "gemini-2.5-flash", None
    )


def test_error_body() -> None:
    assert parse_response("generate", (FIXTURES / "gemini_error.json").read_bytes()) == Metered(
        None,
        None,
        "RESOURCE_EXHAUSTED: You exceeded your current quota, please check your plan and billing details.",
    )


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty response body"),
        (b"<html>502</html>", "response body is not JSON"),
        (b'"x"', "response body is not a JSON object"),
        (b'{"candidates": []}', "no usage in response"),
    ],
)
def test_bodies_without_usage_never_raise(raw: bytes, error: str) -> None:
    result = parse_response("generate", raw)
    assert (result.usage, result.error) == (None, error)


def test_body_without_usage_gives_its_text() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "Thinking it over.", "thought": True},
                        {"text": "Answer: 4."},
                        {"functionCall": {"name": "add", "args": {"a": 2, "b": 2}}},
                    ]
                }
            }
        ],
        "modelVersion": "gemini-2.5-flash",
    }
    result = parse_response("generate", json.dumps(body).encode())
    assert result.usage is None
    assert result.output_text == 'Thinking it over.Answer: 4.{"name": "add", "args": {"a": 2, "b": 2}}'


@pytest.mark.parametrize("name", ["gemini_stream_sse.crlf", "gemini_stream.json"])
def test_stream_body_read_whole(name: str) -> None:
    assert parse_response("stream", (FIXTURES / name).read_bytes()) == STREAM_RESULT


# --- streams ---------------------------------------------------------------------------------


def test_sse_fixture_is_crlf_framed() -> None:
    assert SSE_STREAM.count(b"\r\n\r\n") == 3 and b"\n\n" not in SSE_STREAM


@pytest.mark.parametrize(("data", "framing"), [(SSE_STREAM, "sse"), (ARRAY_STREAM, "json_array")])
def test_stream_whole_and_split_at_every_byte(data: bytes, framing: str) -> None:
    assert run([data], framing) == (STREAM_RESULT, data)
    for i in range(len(data) + 1):
        assert run([data[:i], data[i:]], framing) == (STREAM_RESULT, data), i
    assert run((data[i : i + 1] for i in range(len(data))), framing) == (STREAM_RESULT, data)


@pytest.mark.parametrize(("data", "framing"), [(SSE_STREAM, "sse"), (ARRAY_STREAM, "json_array")])
def test_gzipped_stream_split_at_every_byte(data: bytes, framing: str) -> None:
    encoded = gzip.compress(data)
    for i in range(len(encoded) + 1):
        assert run([encoded[:i], encoded[i:]], framing, "gzip") == (STREAM_RESULT, data), i


@pytest.mark.parametrize(("data", "framing"), [(SSE_STREAM, "sse"), (ARRAY_STREAM, "json_array")])
def test_usage_is_the_last_chunks_not_a_sum(data: bytes, framing: str) -> None:
    parser = StreamParser("stream")
    if framing == "sse":
        sse = SSEDecoder()
        chunks: list[Any] = sse.feed(data) + sse.close()
    else:
        array = JSONArrayDecoder()
        chunks = array.feed(data) + array.close()
    assert len(chunks) == 3
    expected_outputs = [118, 127, 140]  # thoughts 118 + candidates 0, 9, 22
    for chunk, output in zip(chunks, expected_outputs, strict=True):
        parser.feed(chunk)
        assert parser.result().usage == Usage(input_tokens=27, output_tokens=output, reasoning_tokens=118)
    assert parser.done is True


def test_stream_cut_inside_the_last_chunk_keeps_the_one_before() -> None:
    cut = ARRAY_STREAM.rindex(b'"candidatesTokenCount": 22')
    result, _ = run([ARRAY_STREAM[:cut]], "json_array")
    # the cut chunk is not JSON; the second chunk's usage stands, and nothing is added up. It is a
    # running count, not the call's: a floor, the output left to an estimate from the text seen.
    seen = "".join(t for c in JSONArrayDecoder().feed(ARRAY_STREAM)[:2] for t in _texts(c))
    assert result == Metered(
        Usage(input_tokens=27, output_tokens=127, reasoning_tokens=118),
        "gemini-2.5-flash-lite",
        None,
        output_text=seen,
        output_partial=True,
    )


def _texts(chunk: bytes) -> list[str]:
    return [p["text"] for c in json.loads(chunk)["candidates"] for p in c["content"]["parts"] if "text" in p]


@pytest.mark.parametrize(("data", "framing"), [(SSE_STREAM, "sse"), (ARRAY_STREAM, "json_array")])
def test_only_a_stream_that_finished_has_its_output_count_final(data: bytes, framing: str) -> None:
    """Each chunk's usageMetadata is a running count; the one with the finishReason is the call's."""
    parser = StreamParser("stream")
    if framing == "sse":
        sse = SSEDecoder()
        chunks: list[Any] = sse.feed(data) + sse.close()
    else:
        array = JSONArrayDecoder()
        chunks = array.feed(data) + array.close()
    for i, chunk in enumerate(chunks):
        parser.feed(chunk)
        result = parser.result()
        last = i == len(chunks) - 1
        assert (result.output_partial, result.output_text is None) == (not last, last), i


def feed_chunks(chunks: list[dict[str, Any]], framing: str = "sse") -> StreamParser:
    """A parser fed ``chunks`` framed as ``alt=sse`` events or a JSON array."""
    parser = StreamParser("stream")
    if framing == "sse":
        sse = SSEDecoder()
        data = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
        for event in sse.feed(data) + sse.close():
            parser.feed(event)
    else:
        array = JSONArrayDecoder()
        data = b"[" + b",\r\n".join(json.dumps(c).encode() for c in chunks) + b"]"
        for element in array.feed(data) + array.close():
            parser.feed(element)
    return parser


BLOCKED = {
    "promptFeedback": {"blockReason": "SAFETY"},
    "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
    "modelVersion": "gemini-2.5-flash",
}


@pytest.mark.parametrize("framing", ["sse", "json_array"])
def test_a_blocked_prompt_stream_is_complete_not_partial(framing: str) -> None:
    """Review: a blocked prompt streams one chunk (blockReason, the usage, no candidates and so no
    finishReason). That is the whole answer, yet it was called a running count."""
    parser = feed_chunks([BLOCKED], framing)
    result = parser.result()
    assert result.usage is not None and result.usage.input_tokens == 8
    assert (result.output_partial, result.output_text, parser.done) == (False, None, True)


def candidates_chunk(parts: list[tuple[int, str, str | None]], usage: dict[str, int]) -> dict[str, Any]:
    """A chunk of several candidates: (index, text, finishReason or None) each."""
    candidates = []
    for index, text, finish in parts:
        cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": index}
        if finish:
            cand["finishReason"] = finish
        candidates.append(cand)
    return {"candidates": candidates, "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}


def test_two_candidates_cut_after_the_first_finishes_is_partial() -> None:
    """Review: candidateCount=2, candidate 0 finishes while 1 still streams. The first finishReason
    made every later running count final: a stream cut then was reported at the count so far."""
    usage = {"promptTokenCount": 10}
    chunks = [
        candidates_chunk([(0, "a " * 5, None), (1, "b " * 5, None)], {**usage, "candidatesTokenCount": 10}),
        candidates_chunk([(0, "a.", "STOP"), (1, "b " * 5, None)], {**usage, "candidatesTokenCount": 16}),
        candidates_chunk([(1, "b " * 50, None)], {**usage, "candidatesTokenCount": 66}),  # cut after it
    ]
    parser = feed_chunks(chunks)
    result = parser.result()
    assert result.usage is not None and result.usage.output_tokens == 66
    assert (result.output_partial, parser.done) == (True, False)  # candidate 1 never finished
    chunks.append(candidates_chunk([(1, "b.", "MAX_TOKENS")], {**usage, "candidatesTokenCount": 68}))
    parser = feed_chunks(chunks)
    result = parser.result()
    assert (result.output_partial, parser.done, result.usage.output_tokens) == (False, True, 68)  # type: ignore[union-attr]


@pytest.mark.parametrize(("data", "framing"), [(ARRAY_STREAM, "json_array"), (SSE_STREAM, "sse")])
def test_cut_inside_the_finishing_chunk_before_its_usage_is_partial(data: bytes, framing: str) -> None:
    """Review: upstream closes inside the last chunk, past its ``"finishReason": "STOP"`` but before
    its usageMetadata. The substring in that unparseable fragment made the chunk before's running
    count (9 of 22 answer tokens) final, and the tap's final event seen (not even aborted)."""
    cut = data.rindex(b'"finishReason"') + len(b'"finishReason": "STOP"') + 2
    parser = StreamParser("stream")
    if framing == "sse":
        sse = SSEDecoder()
        pieces: list[Any] = sse.feed(data[:cut]) + sse.close()
    else:
        array = JSONArrayDecoder()
        pieces = array.feed(data[:cut]) + array.close()
    for piece in pieces:
        parser.feed(piece)
    result = parser.result()
    assert result.usage is not None and result.usage.output_tokens == 118 + 9  # the second chunk's
    assert (result.output_partial, parser.done) == (True, False)


def test_stream_cut_inside_the_first_chunk() -> None:
    first = ARRAY_STREAM.index(b'"usageMetadata"')
    result, _ = run([ARRAY_STREAM[:first]], "json_array")
    assert result == Metered(None, None, "no usage in stream")  # and no text: the only chunk is cut


def test_stream_without_usage_gives_the_text_and_model() -> None:
    chunks = [json.loads(e) for e in JSONArrayDecoder().feed(ARRAY_STREAM)]
    for chunk in chunks:
        del chunk["usageMetadata"]
    data = ("[" + ",\r\n".join(json.dumps(c) for c in chunks) + "]").encode()
    result, _ = run([data], "json_array")
    assert result.usage is None
    assert result.model == "gemini-2.5-flash-lite"
    assert result.error == "no usage in stream"
    assert result.output_text == STREAM_TEXT


def test_error_chunk_mid_stream() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    data = ARRAY_STREAM[: ARRAY_STREAM.index(b",\r\n")] + b",\r\n" + json.dumps(error).encode() + b"]"
    result, _ = run([data], "json_array")
    assert result == Metered(
        Usage(input_tokens=27, output_tokens=118, reasoning_tokens=118),
        "gemini-2.5-flash-lite",
        "UNAVAILABLE: The model is overloaded.",
        output_text="Why did the proxy",  # the first chunk's count is a running one: a floor
        output_partial=True,
    )


def test_an_error_object_instead_of_the_array() -> None:
    result, _ = run([(FIXTURES / "gemini_error.json").read_bytes()], "json_array")
    assert result.usage is None
    assert result.error is not None and result.error.startswith("RESOURCE_EXHAUSTED: You exceeded")


def test_json_is_decoded_once_per_stream_when_usage_came(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(data: bytes) -> Any:
            calls.append(data)
            return json.loads(data)

    monkeypatch.setattr(values, "json", CountingJson)  # every parser decodes through values.loads
    for data, framing in ((SSE_STREAM, "sse"), (ARRAY_STREAM, "json_array")):
        calls.clear()
        assert run([data], framing)[0] == STREAM_RESULT
        assert len(calls) == 1  # the last chunk only, in result()
        assert b'"candidatesTokenCount":22' in calls[0].replace(b" ", b"")


def test_garbage_stream_does_not_raise() -> None:
    garbage = bytes((i * 7919 + 13) % 256 for i in range(3000)) + b'\n\ndata: {"usageMetadata": {\n\n'
    result, raw = run((garbage[i : i + 3] for i in range(0, len(garbage), 3)), "sse")
    assert raw == garbage
    assert result.usage is None
    assert result.error is not None and result.error.startswith("no usage in stream (")


# --- prices ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "model"),
    [
        (parse_response("generate", (FIXTURES / "gemini_generate.json").read_bytes()), "gemini-2.5-flash"),
        (STREAM_RESULT, "gemini-2.5-flash-lite"),
    ],
)
def test_fixtures_price_under_google(result: Metered, model: str) -> None:
    price = pricing.price("google", result.model, result.usage, WHEN)
    assert (price.status, price.model) == ("priced", model)
    assert price.cost_usd is not None and price.cost_usd > 0


def test_generate_fixture_price_is_exact() -> None:
    # gemini-2.5-flash: 76 uncached x $0.30/M + 2037 cached x $0.03/M + 401 output x $2.50/M
    # = (22.8 + 61.11 + 1002.5) / 1e6
    result = parse_response("generate", (FIXTURES / "gemini_generate.json").read_bytes())
    price = pricing.price("google", "models/gemini-2.5-flash", result.usage, WHEN)
    assert str(price.cost_usd) == "0.00108641"


# --- Google Search grounding -----------------------------------------------------------------


def _grounded(model: str, queries: list[str], usage: bool = True) -> dict[str, Any]:
    """A generateContent answer (or its last stream chunk) that ran Google Search."""
    obj: dict[str, Any] = {
        "candidates": [
            {
                "content": {"parts": [{"text": "Spain won Euro 2024."}], "role": "model"},
                "finishReason": "STOP",
                "groundingMetadata": {
                    "webSearchQueries": queries,
                    "searchEntryPoint": {"renderedContent": "<div>...</div>"},
                    "groundingChunks": [{"web": {"uri": "https://vertexaisearch.cloud.google.com/x"}}],
                },
            }
        ],
        "modelVersion": model,
    }
    if usage:
        obj["usageMetadata"] = {"promptTokenCount": 1000, "candidatesTokenCount": 200}
    return obj


def _streamed(model: str, queries: list[str]) -> dict[str, bytes]:
    """The same answer as an SSE stream and as a JSON array stream: a text chunk, then the grounded one."""
    first = {"candidates": [{"content": {"parts": [{"text": "Spain"}]}}], "modelVersion": model}
    chunks = [json.dumps(first), json.dumps(_grounded(model, queries))]
    return {
        "sse": b"".join(f"data: {c}\r\n\r\n".encode() for c in chunks),
        "json_array": ("[" + ",\r\n".join(chunks) + "]").encode(),
    }


@pytest.mark.parametrize(
    ("model", "queries", "searches", "cost"),
    [
        # Gemini 3: $14 per 1,000 distinct non-empty queries; tokens 1,000 x $0.75/M + 200 x $3.75/M
        ("gemini-3.8-flash", ["euro 2024 winner", "", "euro 2024 score", "euro 2024 winner"], 2, "0.0295"),
        # Gemini 2.5: $35 per 1,000 grounded prompts, however many queries; 1,000 x $0.30/M + 200 x $2.50/M
        ("gemini-2.5-flash", ["a", "b", "c"], 1, "0.0358"),
        ("gemini-2.5-flash", [], 1, "0.0358"),  # grounded (a search entry point), no query listed
        ("gemini-3.8-flash", ["", " "], 0, "0.0015"),  # only empty queries: nothing billed
    ],
)
def test_google_search_grounding_is_counted_and_priced(
    model: str, queries: list[str], searches: int, cost: str
) -> None:
    """Bodies and both stream framings count the same searches; the price is genai-prices' own."""
    results = [parse_response("generate", json.dumps(_grounded(model, queries)).encode())]
    for framing, data in _streamed(model, queries).items():
        results.append(run([data], framing)[0])
        results.append(run([data[i : i + 7] for i in range(0, len(data), 7)], framing)[0])
    for result in results:
        assert result.usage is not None and result.usage.web_searches == searches
        assert pricing.price("google", result.model, result.usage, WHEN).cost_usd == Decimal(cost)
    expected = calc_price(
        GPUsage(input_tokens=1000, output_tokens=200, web_searches=searches),
        model,
        provider_id="google",
        genai_request_timestamp=WHEN,
    )
    assert expected.total_price == Decimal(cost)


def test_an_answer_without_google_search_counts_no_search() -> None:
    """Maps grounding (no webSearchQueries, no searchEntryPoint) is not a Google Search."""
    obj = _grounded("gemini-3.8-flash", [])
    del obj["candidates"][0]["groundingMetadata"]["searchEntryPoint"]
    del obj["candidates"][0]["groundingMetadata"]["webSearchQueries"]
    result = parse_response("generate", json.dumps(obj).encode())
    assert result.usage == Usage(input_tokens=1000, output_tokens=200)
    for bad in ({"candidates": [{"groundingMetadata": {"webSearchQueries": "x"}}]}, {"candidates": "x"}):
        assert parse_response("generate", json.dumps(bad).encode()).usage is None


def test_service_tier_is_read_and_flex_costs_half() -> None:
    """usageMetadata.serviceTier names the tier that served the call. Flex is documented at exactly
    50% off (ai.google.dev/gemini-api/docs/optimization) and genai-prices has no flex price for
    gemini-2.5-flash, so tokometer halves the standard price; priority ("75% to 100% more") keeps the
    standard price and price_source says so."""

    def body(tier: str | None) -> bytes:
        meta: dict[str, object] = {
            "promptTokenCount": 10_000,
            "candidatesTokenCount": 1_000,
            "totalTokenCount": 11_000,
        }
        if tier:
            meta["serviceTier"] = tier
        chunk = {
            "candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": meta,
        }
        return json.dumps({**chunk, "modelVersion": "gemini-2.5-flash"}).encode()

    when = datetime(2026, 11, 2, 12, tzinfo=UTC)
    standard = calc_price(
        GPUsage(input_tokens=10_000, output_tokens=1_000), "gemini-2.5-flash", provider_id="google"
    ).total_price
    assert standard == Decimal("0.0055")  # 10k x $0.30 + 1k x $2.50 per 1M
    results = {}
    for tier in (None, "standard", "FLEX", "priority", "SERVICE_TIER_FLEX"):
        metered = parse_response("generate", body(tier))
        stream = StreamParser("stream")
        stream.feed(body(tier))
        assert stream.result().service_tier == metered.service_tier
        p = pricing.price(
            "google", "gemini-2.5-flash", metered.usage, when, service_tier=metered.service_tier
        )
        results[tier] = (metered.service_tier, p.cost_usd, p.source)
    assert results[None] == (None, standard, "genai-prices 0.2.3")
    assert results["standard"] == ("standard", standard, "genai-prices 0.2.3")
    assert results["FLEX"] == ("flex", standard / 2, "genai-prices 0.2.3 x0.5 (flex)")
    assert results["priority"] == ("priority", standard, "genai-prices 0.2.3 (priority tier: standard rate)")
    assert results["SERVICE_TIER_FLEX"] == results["FLEX"]  # the API's enum spelling


def test_a_stream_body_read_whole_without_a_finish_reason_is_not_partial() -> None:
    """A body read whole ended where the server ended it: its last running count is the call's."""
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    chunk = {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}], "usageMetadata": usage}
    result = parse_response("generate", b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    assert result == Metered(Usage(input_tokens=10, output_tokens=5), None, None)
