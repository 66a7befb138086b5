"""OpenAI-compatible providers: each one's usage dialect, streams split anywhere, provider costs, prices.

DeepSeek, Groq, OpenRouter, Mistral, xAI, Together, Fireworks, Cerebras, Perplexity and
Azure OpenAI, through ``addon.providers.openai_api`` (the one place that knows the usage
fields). Also the completion text the OpenAI and Anthropic parsers keep for an offline
estimate when no usage comes.
"""

from __future__ import annotations

import dataclasses
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
from addon.providers import fallback_lists, openai_api, values
from addon.providers.openai_api import (
    StreamParser,
    extract_cost,
    extract_usage,
    is_usage_only_chunk,
    parse_response,
)
from addon.sse import SSEDecoder, SSEEvent
from addon.usage import Metered, Usage

FIXTURES = Path(__file__).parent / "fixtures"
DAY = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # DeepSeek's standard hours (00:30-16:30 UTC)
NIGHT = datetime(2026, 11, 2, 18, 0, tzinfo=UTC)  # and its discount hours

# fixture -> (provider id for genai-prices, expected result)
BODIES: dict[str, tuple[str, Metered]] = {
    # no prompt_tokens_details: the 1216 cache hits are the cache reads
    "deepseek_chat.json": (
        "deepseek",
        Metered(Usage(input_tokens=1290, cache_read_tokens=1216, output_tokens=14), "deepseek-chat", None),
    ),
    # usage with queue/prompt/completion times; reasoning inside completion (total = 81 + 23)
    "groq_chat.json": (
        "groq",
        Metered(
            Usage(input_tokens=81, output_tokens=23, reasoning_tokens=15),
            "openai/gpt-oss-20b",
            None,
            service_tier="on_demand",  # Groq's default tier: priced as the model's own prices
        ),
    ),
    # the routed model, OpenRouter's own cost
    "openrouter_chat.json": (
        "openrouter",
        Metered(
            Usage(input_tokens=2150, cache_read_tokens=2048, output_tokens=64),
            "anthropic/claude-sonnet-4.5",
            None,
            provider_cost=Decimal("0.0018804"),
        ),
    ),
    "mistral_chat.json": (
        "mistral",
        Metered(Usage(input_tokens=24, output_tokens=27), "mistral-large-latest", None),
    ),
    # xAI: completion 9 EXCLUDES reasoning 94 (total 135 = 32 + 9 + 94): output 103
    "xai_chat.json": (
        "x-ai",
        Metered(
            Usage(input_tokens=32, cache_read_tokens=6, output_tokens=103, reasoning_tokens=94),
            "grok-3-mini",
            None,
        ),
    ),
    "fireworks_chat.json": (
        "fireworks",
        Metered(
            Usage(input_tokens=19, cache_read_tokens=16, output_tokens=26),
            "accounts/fireworks/models/llama-v3p1-8b-instruct",
            None,
        ),
    ),
    # citation tokens and searches are not tokens here; the cost object's total is the provider cost
    "perplexity_chat.json": (
        "perplexity",
        Metered(
            Usage(input_tokens=14, output_tokens=182), "sonar-pro", None, provider_cost=Decimal("0.008772")
        ),
    ),
}

# fixture -> (provider id, expected result, the completion text when usage is stripped)
STREAMS: dict[str, tuple[str, Metered, str]] = {
    "deepseek_reasoner_stream.sse": (
        "deepseek",
        Metered(Usage(input_tokens=40, output_tokens=310, reasoning_tokens=296), "deepseek-reasoner", None),
        "The user asks for 17 \u00d7 23. 17 \u00d7 20 = 340, 17 \u00d7 3 = 51, sum 391.17 \u00d7 23 = 391.",
    ),
    # usage in x_groq of the last chunk (which also has the finish_reason)
    "groq_stream.sse": (
        "groq",
        Metered(Usage(input_tokens=48, output_tokens=12), "llama-3.3-70b-versatile", None),
        'Low latency matters for "usage": 7 reasons.',
    ),
    # ": OPENROUTER PROCESSING" comments; cost 1.005e-05 in exponent form
    "openrouter_stream.sse": (
        "openrouter",
        Metered(
            Usage(input_tokens=31, output_tokens=9),
            "openai/gpt-4o-mini",
            None,
            provider_cost=Decimal("0.00001005"),
        ),
        "Routing picked the cheapest provider.",
    ),
    # usage in the last chunk, unasked
    "mistral_stream.sse": (
        "mistral",
        Metered(Usage(input_tokens=12, output_tokens=11), "mistral-small-latest", None),
        "Le mistral est un vent du nord.",
    ),
    # cumulative usage on every chunk: the last wins; reasoning 211 beside completion 7
    "xai_stream.sse": (
        "x-ai",
        Metered(
            Usage(input_tokens=640, cache_read_tokens=512, output_tokens=218, reasoning_tokens=211),
            "grok-4-0709",
            None,
        ),
        "Coca-Cola is a soft drink.",
    ),
    # top-level cached_tokens; "text" duplicates delta.content in every choice
    "together_stream.sse": (
        "together",
        Metered(Usage(input_tokens=43, output_tokens=6), "meta-llama/Llama-3.3-70B-Instruct-Turbo", None),
        "Central Park and the Met.",
    ),
    "fireworks_stream.sse": (
        "fireworks",
        Metered(
            Usage(input_tokens=70, cache_read_tokens=64, output_tokens=25, reasoning_tokens=20),
            "accounts/fireworks/models/gpt-oss-120b",
            None,
        ),
        "Short answer.Yes.",
    ),
    # usage and time_info in the last chunk
    "cerebras_stream.sse": (
        "cerebras",
        Metered(Usage(input_tokens=35, output_tokens=11), "llama3.1-8b", None),
        "Wafer-scale chips.",
    ),
    # Azure: a first chunk of prompt filter results with "choices": [] and no usage
    "azure_chat_stream.sse": (
        "azure",
        Metered(Usage(input_tokens=1536, cache_read_tokens=1408, output_tokens=5), "gpt-4o-2024-11-20", None),
        "Deployments map to models.",
    ),
    # usage on every chunk, the cost only on the last; "message" is the text so far, "delta" the new part
    "perplexity_stream.sse": (
        "perplexity",
        Metered(Usage(input_tokens=9, output_tokens=7), "sonar", None, provider_cost=Decimal("0.005016")),
        "The sky is blue [1].",
    ),
}


@pytest.fixture(autouse=True)
def _compare_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """``==`` on results checks ``output_text`` too, even if ``Metered`` leaves it out of comparisons."""

    def eq(a: Metered, b: object) -> bool:
        return type(b) is Metered and dataclasses.astuple(a) == dataclasses.astuple(b)

    monkeypatch.setattr(Metered, "__eq__", eq)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events_of(data: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(data) + decoder.close()


def run(pieces: Iterable[bytes], flavor: str = "chat") -> tuple[Metered, bytes]:
    sse = SSEDecoder()
    parser = StreamParser(flavor)
    raw = bytearray()
    for piece in pieces:
        for event in sse.feed(piece):
            raw.extend(event.raw)
            parser.feed(event)
    for event in sse.close():
        raw.extend(event.raw)
        parser.feed(event)
    return parser.result(), bytes(raw)


def without_usage(data: bytes) -> bytes:
    """The stream with every usage object (and Groq's x_groq.usage) removed."""
    out = []
    for event in events_of(data):
        if not event.data or event.data == b"[DONE]":
            out.append(event.raw)
            continue
        obj = json.loads(event.data)
        obj.pop("usage", None)
        if isinstance(obj.get("x_groq"), dict):
            obj["x_groq"].pop("usage", None)
        if obj.get("choices") == []:
            continue  # the include_usage chunk
        out.append(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
    return b"".join(out)


# --- complete bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BODIES))
def test_body(name: str) -> None:
    _, expected = BODIES[name]
    assert parse_response("chat", fixture(name)) == expected


@pytest.mark.parametrize("name", sorted(BODIES))
def test_body_price_resolves(name: str) -> None:
    provider, expected = BODIES[name]
    price = pricing.price(provider, expected.model, expected.usage, DAY)
    assert price.status == "priced", (provider, expected.model)
    assert price.cost_usd is not None and price.cost_usd > 0


@pytest.mark.parametrize("name", sorted(BODIES))
def test_body_without_usage_gives_its_text(name: str) -> None:
    obj = json.loads(fixture(name))
    text = obj["choices"][0]["message"]
    del obj["usage"]
    result = parse_response("chat", json.dumps(obj).encode())
    assert (result.usage, result.error) == (None, "no usage in response")
    assert (
        result.output_text == (text.get("reasoning_content") or text.get("reasoning") or "") + text["content"]
    )


# --- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_split_in_two_at_every_byte(name: str) -> None:
    _, expected, _ = STREAMS[name]
    data = fixture(name)
    assert run([data]) == (expected, data)
    for i in range(len(data) + 1):
        assert run([data[:i], data[i:]]) == (expected, data), i
    assert run(data[i : i + 7] for i in range(0, len(data), 7)) == (expected, data)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_with_crlf(name: str) -> None:
    _, expected, _ = STREAMS[name]
    data = fixture(name).replace(b"\n", b"\r\n")
    assert run(data[i : i + 5] for i in range(0, len(data), 5)) == (expected, data)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_price_resolves(name: str) -> None:
    provider, expected, _ = STREAMS[name]
    price = pricing.price(provider, expected.model, expected.usage, DAY)
    assert price.status == "priced", (provider, expected.model)
    assert price.cost_usd is not None and price.cost_usd > 0


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_without_usage_gives_the_text(name: str) -> None:
    _, expected, text = STREAMS[name]
    data = without_usage(fixture(name))
    result, _ = run([data])
    assert result.usage is None and result.provider_cost is None
    assert result.model == expected.model
    assert result.output_text == text


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_no_chunk_of_these_streams_is_usage_only_except_the_include_usage_one(name: str) -> None:
    flags = [is_usage_only_chunk(e) for e in events_of(fixture(name))]
    # only DeepSeek's and Azure's fixtures were asked for include_usage: the extra chunk has "choices": []
    expected = [False] * len(flags)
    if name in ("deepseek_reasoner_stream.sse", "azure_chat_stream.sse"):
        expected[-2] = True
    assert flags == expected


def test_groq_usage_only_chunk_in_x_groq() -> None:
    def event(data: bytes) -> SSEEvent:
        return SSEEvent(None, data, b"data: " + data + b"\n\n")

    assert is_usage_only_chunk(event(b'{"choices":[],"x_groq":{"id":"req_1","usage":{"prompt_tokens":3}}}'))
    assert not is_usage_only_chunk(event(b'{"choices":[],"x_groq":{"id":"req_1"}}'))


def test_deepseek_hits_and_misses_without_prompt_tokens() -> None:
    assert extract_usage(
        {"prompt_cache_hit_tokens": 10, "prompt_cache_miss_tokens": 5, "completion_tokens": 20}
    ) == Usage(input_tokens=15, cache_read_tokens=10, output_tokens=20)
    # prompt_tokens_details wins when both are sent (they agree in practice)
    assert extract_usage(
        {
            "prompt_tokens": 102056,
            "completion_tokens": 252,
            "total_tokens": 102308,
            "prompt_cache_hit_tokens": 94464,
            "prompt_cache_miss_tokens": 7592,
            "prompt_tokens_details": {"cached_tokens": 94464},
            "completion_tokens_details": {"reasoning_tokens": 44},
        }
    ) == Usage(input_tokens=102056, cache_read_tokens=94464, output_tokens=252, reasoning_tokens=44)


def test_deepseek_time_of_day_prices() -> None:
    _, expected = BODIES["deepseek_chat.json"]
    # 74 uncached x $0.27 + 1216 cached x $0.07 + 14 output x $1.10 per M; half price at night
    day = pricing.price("deepseek", expected.model, expected.usage, DAY)
    night = pricing.price("deepseek", expected.model, expected.usage, NIGHT)
    assert (str(day.cost_usd), str(night.cost_usd)) == ("0.00012050", "0.00006025")


def test_xai_reasoning_is_added_only_when_the_total_says_so() -> None:
    openai_style = {
        "prompt_tokens": 32,
        "completion_tokens": 103,
        "total_tokens": 135,
        "completion_tokens_details": {"reasoning_tokens": 94},
    }
    xai_style = {**openai_style, "completion_tokens": 9}
    assert extract_usage(openai_style) == Usage(input_tokens=32, output_tokens=103, reasoning_tokens=94)
    assert extract_usage(xai_style) == Usage(input_tokens=32, output_tokens=103, reasoning_tokens=94)
    no_total = {k: v for k, v in xai_style.items() if k != "total_tokens"}
    assert extract_usage(no_total) == Usage(input_tokens=32, output_tokens=9, reasoning_tokens=94)


def test_perplexity_extra_counts_are_not_tokens() -> None:
    usage = {
        "prompt_tokens": 33,
        "completion_tokens": 11395,
        "total_tokens": 11428,
        "citation_tokens": 19028,
        "num_search_queries": 21,
        "reasoning_tokens": 193947,
        "cost": {"input_tokens_cost": 0.0, "output_tokens_cost": 0.091, "total_cost": 0.816},
    }
    assert extract_usage(usage) == Usage(input_tokens=33, output_tokens=11395)
    assert extract_cost(usage, json.dumps(usage).encode()) == Decimal("0.816")


@pytest.mark.parametrize(
    ("raw", "cost"),
    [
        (b'{"usage":{"prompt_tokens":1,"cost":0.0000945}}', Decimal("0.0000945")),
        (b'{"usage":{"prompt_tokens":1,"cost":9.45E-5}}', Decimal("0.0000945")),
        (b'{"usage":{"prompt_tokens":1,"cost":0}}', Decimal(0)),
        (b'{"usage":{"prompt_tokens":1,"cost":2}}', Decimal(2)),
        (b'{"usage":{"prompt_tokens":1,"cost":0.10000000000000000555}}', Decimal("0.10000000000000000555")),
        (b'{"usage":{"prompt_tokens":1,"cost":null}}', None),
        (b'{"usage":{"prompt_tokens":1,"cost":"0.1"}}', None),
        (b'{"usage":{"prompt_tokens":1,"cost":true}}', None),
        (b'{"usage":{"prompt_tokens":1,"cost_details":{"upstream_inference_cost":0.5}}}', None),
        (b'{"usage":{"prompt_tokens":1,"cost":{"total_cost":0.005137}}}', Decimal("0.005137")),
    ],
)
def test_provider_cost_is_read_from_the_number_text(raw: bytes, cost: Decimal | None) -> None:
    result = parse_response("chat", raw)
    assert result.provider_cost == cost
    if cost is not None:
        assert str(result.provider_cost) == str(cost)


def test_provider_cost_without_the_raw_text_falls_back_to_the_float() -> None:
    assert extract_cost({"cost": 0.0018804}) == Decimal("0.0018804")
    assert extract_cost({"cost": 1.005e-05}) == Decimal("0.00001005")
    assert extract_cost({"cost": float("nan")}) is None
    assert extract_cost(None) is None


def test_stream_with_usage_on_every_chunk_decodes_only_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(data: bytes) -> Any:
            calls.append(data)
            return json.loads(data)

    monkeypatch.setattr(values, "json", CountingJson)  # every parser decodes through values.loads
    for name in ("xai_stream.sse", "perplexity_stream.sse"):
        calls.clear()
        _, expected, _ = STREAMS[name]
        assert run([fixture(name)])[0] == expected
        events = [e for e in events_of(fixture(name)) if e.data != b"[DONE]"]
        # the first chunk (for the model) and the last (its usage, in result()); not the others
        assert calls == [events[0].data, events[-1].data]


def test_stream_cut_in_the_last_usage_chunk_keeps_the_one_before() -> None:
    data = fixture("xai_stream.sse")
    events = events_of(data)
    last = events[-2].raw  # the final usage chunk, before [DONE]
    cut = data.index(last) + len(last) // 2
    result, _ = run([data[:cut]])
    # the previous chunk's cumulative usage (same counts here), and no error; a running count on a
    # content chunk, not the call's: the output is left to an estimate (at least that count)
    expected = STREAMS["xai_stream.sse"][1]
    seen = "Coca-Cola is a soft drink."
    assert result == dataclasses.replace(expected, output_text=seen, output_partial=True)


def test_openrouter_error_mid_stream() -> None:
    data = fixture("openrouter_stream.sse")
    cut = data.index(
        b'data: {"id":"gen-1764322460-Zr7yU3wP5nJk1HbC","provider":"OpenAI","model":"openai/gpt-4o-mini",'
        b'"object":"chat.completion.chunk","created":1764322460,"choices":[{"index":0,"delta":{"role":'
        b'"assistant","content":" picked'
    )
    error = {
        "id": "gen-1764322460-Zr7yU3wP5nJk1HbC",
        "object": "chat.completion.chunk",
        "created": 1764322460,
        "model": "openai/gpt-4o-mini",
        "provider": "OpenAI",
        "error": {"code": 502, "message": "Provider returned error"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    result, _ = run([data[:cut] + b"data: " + json.dumps(error).encode() + b"\n\n"])
    assert result == Metered(
        None, "openai/gpt-4o-mini", "502: Provider returned error", output_text="Routing"
    )


# --- the completion text, for an offline estimate, in the OpenAI and Anthropic parsers ----------


def test_openai_chat_stream_without_include_usage_gives_the_text() -> None:
    data = b"".join(
        e.raw for e in events_of(fixture("openai_chat_stream.sse")) if b'"choices":[]' not in e.data
    )
    result, _ = run([data])
    assert result.usage is None
    assert result.output_text == 'Hello! The word "usage": 12 is just text. ✓ ünïcödé'


def test_openai_responses_text_from_deltas_and_bodies() -> None:
    data = fixture("openai_responses_stream.sse")
    result, _ = run([data[: data.index(b"event: response.output_text.done")]], flavor="responses")
    assert (result.usage, result.output_text) == (None, "Paris is the capital.")
    result, _ = run([data], flavor="responses")
    assert result.usage is not None and result.output_text is None
    body = json.loads(fixture("openai_responses.json"))
    del body["usage"]
    assert parse_response("responses", json.dumps(body).encode()).output_text == "Hi!"


def test_anthropic_text_when_usage_is_missing() -> None:
    from addon.providers import anthropic_api

    stream = fixture("anthropic_stream.sse")
    events = [e for e in events_of(stream) if e.event not in ("message_start", "message_delta")]
    parser = anthropic_api.StreamParser("messages")
    for e in events:
        parser.feed(e)
    text = 'Let me look that up for you — one moment.Found it: the "usage" page says 42.'
    assert parser.result() == Metered(None, None, "no usage in stream", output_text=text)
    parser = anthropic_api.StreamParser("messages")
    for e in events_of(stream):
        parser.feed(e)
    assert parser.result().output_text is None  # usage came: no text decoded
    body = json.loads(fixture("anthropic_message.json"))
    body["content"].append({"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "7"}})
    del body["usage"]
    result = anthropic_api.parse_response("messages", json.dumps(body).encode())
    assert result.output_text == 'Based on the cached document, the answer is 7.{"q": "7"}'


def test_text_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    data = without_usage(fixture("mistral_stream.sse"))
    events = events_of(data)
    monkeypatch.setattr(openai_api, "TEXT_CAP", 13)  # characters returned
    result, _ = run([data])
    assert result.output_text == "Le mistral es"
    monkeypatch.setattr(openai_api, "TEXT_CAP", 1000)
    full, _ = run([data])
    monkeypatch.setattr(openai_api, "RAW_TEXT_CAP", len(events[0].data) + len(events[1].data))  # raw held
    parser = StreamParser("chat")
    for e in events:
        parser.feed(e)
    # What is held is decoded whenever the raw cap would be crossed: only TEXT_CAP cuts the text,
    # however the stream was chunked.
    assert parser.result().output_text == full.output_text and len(full.output_text or "") > 20
    assert parser._text.truncated is False


def test_text_is_extracted_once_even_if_result_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(data: bytes) -> Any:
            calls.append(data)
            return json.loads(data)

    monkeypatch.setattr(values, "json", CountingJson)  # every parser decodes through values.loads
    events = events_of(without_usage(fixture("cerebras_stream.sse")))
    parser = StreamParser("chat")
    for e in events[:2]:
        parser.feed(e)
    assert parser.result().output_text == "Wafer-scale"
    first = len(calls)
    for e in events[2:]:
        parser.feed(e)
    assert parser.result().output_text == "Wafer-scale chips."
    assert parser.result().output_text == "Wafer-scale chips."
    assert len(calls) == first + 2  # only the two new chunks ([DONE] is not JSON)


def test_xai_cost_in_usd_ticks_is_the_provider_cost() -> None:
    """docs.x.ai cost tracking: usage.cost_in_usd_ticks is the amount billed, tools included; 10^10 ticks
    a dollar. Priced from tokens alone (genai-prices has no x-ai tool prices) the call is $0.01575."""
    usage = {
        "prompt_tokens": 12000, "completion_tokens": 300, "total_tokens": 12300,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0},
        "num_sources_used": 0, "server_side_tool_usage": {"web_search": 3}, "cost_in_usd_ticks": 317500000,
    }  # fmt: skip
    body = {"id": "c1", "object": "chat.completion", "model": "grok-4.3", "usage": usage, "choices": []}
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "grok-4.3",
        "choices": [],
        "usage": usage,
    }
    stream = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    response = {"type": "response.completed", "response": {"model": "grok-4.3", "status": "completed"}}
    response["response"]["usage"] = {
        "input_tokens": 12000,
        "output_tokens": 300,
        "cost_in_usd_ticks": 317500000,
    }
    events = f"event: response.completed\ndata: {json.dumps(response)}\n\n".encode()
    for result in (
        parse_response("chat", json.dumps(body).encode()),
        run([stream[i : i + 5] for i in range(0, len(stream), 5)])[0],
        run([events], "responses")[0],
    ):
        assert result.provider_cost == Decimal("0.03175")
    tokens = GPUsage(input_tokens=12000, output_tokens=300)
    before = calc_price(tokens, "grok-4.3", provider_id="x-ai", genai_request_timestamp=DAY).total_price
    assert before == Decimal("0.01575")  # what was stored before: half the bill


@pytest.mark.parametrize(
    ("ticks", "cost"),
    [(0, Decimal(0)), (1, Decimal("1E-10")), (2.0e10, Decimal(2)), (-5, None), (1.5, None), ("9", None)],
)
def test_xai_ticks_are_exact_and_only_whole_numbers(ticks: object, cost: Decimal | None) -> None:
    assert extract_cost({"prompt_tokens": 1, "cost_in_usd_ticks": ticks}) == cost


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ({"model": "openai/gpt-4o"}, None),  # no fallback list
        ({"models": None}, None),
        ({"models": []}, fallback_lists.Fallbacks(())),
        (
            {"models": ["openai/gpt-4o", "anthropic/claude-opus-4.1"]},
            fallback_lists.Fallbacks(("openai/gpt-4o", "anthropic/claude-opus-4.1")),
        ),
        ({"models": "openai/gpt-4o"}, fallback_lists.Fallbacks((), "its models fallback list is not a list")),
        (
            {"models": ["openai/gpt-4o", None]},
            fallback_lists.Fallbacks(
                ("openai/gpt-4o",), "entry 2 of its models fallback list is not a model name"
            ),
        ),
        (
            {"models": [" "]},
            fallback_lists.Fallbacks((), "entry 1 of its models fallback list is not a model name"),
        ),
        (
            {"models": ["x" * 257]},
            fallback_lists.Fallbacks((), "entry 1 of its models fallback list is not a model name"),
        ),
        (
            {"models": ["a"] * 65},
            fallback_lists.Fallbacks(("a",) * 64, "its models fallback list has more than 64 entries"),
        ),
        (None, None),
    ],
)
def test_openrouter_fallback_models_are_read(body: Any, found: fallback_lists.Fallbacks | None) -> None:
    assert fallback_lists.fallback_models(body) == found


def test_openrouter_fallback_models_are_rewritten_in_place() -> None:
    body = {"model": "a", "models": ["a", "b"], "route": "fallback"}
    assert fallback_lists.with_fallback_models(body, ["a", "c"]) == {
        "model": "a",
        "models": ["a", "c"],
        "route": "fallback",
    }
    assert body["models"] == ["a", "b"]  # a new body: the client's is not changed
