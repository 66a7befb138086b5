"""Google's Interactions API (``POST /v1beta/interactions``): paths, bodies, streams, errors,
background interactions and agents, in the shapes of the google-genai SDK's types
(``google/genai/_gaos/types/interactions``)."""

from __future__ import annotations

import itertools
import json
import random
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.test import taddons

from addon import pricing
from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import Registry
from addon.providers.gemini_interactions import (
    StreamParser,
    extract_usage,
    flavor_for_path,
    interaction_id,
    is_interactions_path,
    parse_response,
    request_model,
    with_model,
)
from addon.sse import SSEDecoder
from addon.stream_tap import StreamTap
from addon.usage import Metered, Usage
from tests.test_meter import CollectingStore, make_flow, run_request, stream_response

WHEN = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
GOOGLE = Registry().by_name("google")
URL = "https://generativelanguage.googleapis.com/v1beta/interactions"
ID = "v1_ChdpbnRlcmFjdGlvbi0xEgR0ZXN0"

# A turn with a cached prefix, thinking and a function call: total_input_tokens INCLUDES the
# cached ones; total_output_tokens excludes the thoughts; tool-use prompt tokens are input too.
USAGE = {
    "total_input_tokens": 2113,
    "total_cached_tokens": 2037,
    "total_output_tokens": 120,
    "total_thought_tokens": 281,
    "total_tool_use_tokens": 40,
    "total_tokens": 2554,
    "input_tokens_by_modality": [{"modality": "text", "tokens": 2113}],
    "cached_tokens_by_modality": [{"modality": "text", "tokens": 2037}],
    "output_tokens_by_modality": [{"modality": "text", "tokens": 120}],
    "tool_use_tokens_by_modality": [{"modality": "text", "tokens": 40}],
}
COMPLETED = {
    "id": ID,
    "object": "interaction",
    "model": "gemini-2.5-flash",
    "status": "completed",
    "created": "2026-11-02T10:00:00Z",
    "updated": "2026-11-02T10:00:04Z",
    "service_tier": "standard",
    "steps": [
        {"type": "thought", "signature": "c2lnbmF0dXJl", "summary": [{"type": "text", "text": "Plan."}]},
        {"type": "function_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"type": "function_result", "call_id": "call_1", "result": [{"type": "text", "text": "18C"}]},
        {"type": "model_output", "content": [{"type": "text", "text": "It is 18C in Paris."}]},
    ],
    "usage": USAGE,
}
EXPECTED = Usage(
    input_tokens=2153,  # 2113 prompt + 40 tool-use prompt
    cache_read_tokens=2037,
    output_tokens=401,  # 120 answer + 281 thoughts
    reasoning_tokens=281,
)


# --- paths and requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "flavor", "one"),
    [
        ("/v1beta/interactions", "interactions", True),
        ("/v1/interactions", "interactions", True),
        ("/v1beta/interactions/", "interactions", True),
        ("/v1beta/interactions?alt=sse", "interactions", True),
        (f"/v1beta/interactions/{ID}", None, True),
        (f"/v1/interactions/{ID}?stream=true&last_event_id=evt-3", None, True),
        (f"/v1beta/interactions/{ID}/cancel", None, False),
        ("/v1beta/models/gemini-2.5-flash:generateContent", None, False),
        ("/v1beta/openai/chat/completions", None, False),
        ("/interactions", None, False),
    ],
)
def test_paths(path: str, flavor: str | None, one: bool) -> None:
    assert flavor_for_path(path) == flavor
    assert is_interactions_path(path) is one


def test_interaction_id_of_a_get() -> None:
    assert interaction_id(f"/v1beta/interactions/{ID}?stream=true") == ID
    assert interaction_id("/v1beta/interactions") is None


def test_the_google_provider_routes_each_path_to_its_parser() -> None:
    assert GOOGLE is not None
    assert GOOGLE.flavor_for_path("/v1beta/interactions") == "interactions"
    assert GOOGLE.flavor_for_path("/v1beta/models/gemini-2.5-flash:streamGenerateContent") == "stream"
    assert GOOGLE.flavor_for_path("/v1beta/openai/chat/completions") == "chat"
    assert GOOGLE.flavor_for_path(f"/v1beta/interactions/{ID}") is None  # a GET, not a create
    assert GOOGLE.request_model("/v1beta/interactions", {"model": "gemini-3-flash-preview"}) == (
        "gemini-3-flash-preview"
    )
    assert GOOGLE.stream_framing("/v1beta/interactions", "text/event-stream; charset=utf-8") == "sse"
    assert GOOGLE.stream_framing(f"/v1beta/interactions/{ID}?stream=true", "text/event-stream") == "sse"
    assert GOOGLE.stream_framing("/v1beta/interactions", "application/json") is None
    assert isinstance(GOOGLE.stream_parser("interactions"), StreamParser)
    body = json.dumps(COMPLETED).encode()
    assert GOOGLE.parse_response("interactions", body, {}).usage == EXPECTED
    assert GOOGLE.with_model is not None
    assert GOOGLE.with_model(
        "/v1beta/interactions", {"model": "gemini-2.5-pro", "input": "hi"}, "gemini-2.5-flash"
    ) == (
        "/v1beta/interactions",
        {"model": "gemini-2.5-flash", "input": "hi"},
    )


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"model": "gemini-2.5-flash", "input": "hi"}, "gemini-2.5-flash"),
        (
            {"agent": "deep-research-pro-preview-12-2025", "input": "hi", "background": True},
            "deep-research-pro-preview-12-2025",
        ),
        ({"model": "", "input": "hi"}, None),
        ({"model": 3, "input": "hi"}, None),
        ({"input": "hi", "previous_interaction_id": ID}, None),
        (None, None),
    ],
)
def test_request_model_is_the_model_or_the_agent(body: dict[str, Any] | None, model: str | None) -> None:
    assert request_model("/v1beta/interactions", body) == model


def test_with_model_rewrites_the_body_and_keeps_the_rest() -> None:
    body = {"model": "gemini-2.5-pro", "input": "hi", "stream": True, "previous_interaction_id": ID}
    path, new = with_model("/v1beta/interactions", body, "models/gemini-2.5-flash")
    assert (path, new) == ("/v1beta/interactions", body | {"model": "gemini-2.5-flash"})
    assert body["model"] == "gemini-2.5-pro"  # the original is left alone


@pytest.mark.parametrize(
    "body",
    [
        {"agent": "deep-research-pro-preview-12-2025", "input": "hi"},
        {"agent_config": {"type": "deep-research"}, "input": "hi"},
        None,
    ],
)
def test_with_model_refuses_an_agent_or_no_body(body: dict[str, Any] | None) -> None:
    with pytest.raises(ValueError):
        with_model("/v1beta/interactions", body, "gemini-2.5-flash")


# --- whole bodies -----------------------------------------------------------------------------


def test_completed_interaction() -> None:
    result = parse_response("interactions", json.dumps(COMPLETED).encode())
    assert result.usage == EXPECTED
    assert (result.model, result.error, result.service_tier) == ("gemini-2.5-flash", None, "standard")
    assert result.response_id is None  # finished: nothing to follow
    assert result.output_text is None  # usage came: no text kept


def test_modalities_and_search_queries() -> None:
    """Image and audio input, generated image output, cached audio; Google Search queries billed
    per query on Gemini 3, per grounded prompt (at most one) before it."""
    usage = {
        "total_input_tokens": 1800,
        "total_cached_tokens": 300,
        "total_output_tokens": 1400,
        "input_tokens_by_modality": [
            {"modality": "text", "tokens": 200},
            {"modality": "image", "tokens": 1000},
            {"modality": "audio", "tokens": 600},
        ],
        "cached_tokens_by_modality": [{"modality": "audio", "tokens": 300}],
        "output_tokens_by_modality": [
            {"modality": "text", "tokens": 110},
            {"modality": "image", "tokens": 1290},
        ],
        "grounding_tool_count": [{"type": "google_search", "count": 3}, {"type": "google_maps", "count": 2}],
    }
    three = extract_usage(usage, "gemini-3-flash-preview")
    assert three == Usage(
        input_tokens=1800,
        cache_read_tokens=300,
        output_tokens=1400,
        web_searches=3,
        input_audio_tokens=600,
        input_image_tokens=1000,
        output_image_tokens=1290,
        cache_audio_read_tokens=300,
    )
    two = extract_usage(usage, "gemini-2.5-flash")
    assert two is not None and two.web_searches == 1


def test_early_versions_name_the_thoughts_reasoning() -> None:
    usage = extract_usage({"total_input_tokens": 10, "total_output_tokens": 5, "total_reasoning_tokens": 7})
    assert usage == Usage(input_tokens=10, output_tokens=12, reasoning_tokens=7)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty response body"),
        (b"not json", "response body is not JSON"),
        (b"[1, 2]", "response body is not a JSON object"),
        (b'{"id": "x", "status": "completed"}', "no usage in response"),
        (b'{"id": "x", "status": "completed", "usage": {}}', "no usage in response"),
        (b'{"id": "x", "status": "completed", "usage": "lots"}', "no usage in response"),
        (
            b'{"error": {"code": 400, "message": "Invalid value at \'model\'",'
            b' "status": "INVALID_ARGUMENT"}}',
            "INVALID_ARGUMENT: Invalid value at 'model'",
        ),
        (
            b'{"error": {"code": "invalid_request", "message": "input is required"}}',
            "invalid_request: input is required",
        ),
        (b'{"error": {}}', "error without a message"),
    ],
)
def test_bodies_without_usage_never_raise(raw: bytes, error: str) -> None:
    result = parse_response("interactions", raw)
    assert (result.usage, result.error) == (None, error)


def test_failed_interaction_keeps_its_usage_and_says_why() -> None:
    failed = COMPLETED | {
        "status": "failed",
        "errors": [{"code": "RESOURCE_EXHAUSTED", "message": "The model is overloaded."}],
    }
    result = parse_response("interactions", json.dumps(failed).encode())
    assert result.usage == EXPECTED
    assert result.error == "RESOURCE_EXHAUSTED: The model is overloaded."


def test_an_interaction_without_usage_gives_its_text() -> None:
    body = {k: v for k, v in COMPLETED.items() if k != "usage"}
    result = parse_response("interactions", json.dumps(body).encode())
    assert result.usage is None and result.error == "no usage in response"
    assert result.output_text == '{"city": "Paris"}It is 18C in Paris.'  # the call's arguments, the answer


def test_a_background_interaction_is_answered_in_progress() -> None:
    running = {
        "id": ID,
        "object": "interaction",
        "agent": "deep-research-pro-preview-12-2025",
        "status": "in_progress",
    }
    result = parse_response("interactions", json.dumps(running).encode())
    assert (result.usage, result.error) == (None, None)
    assert (result.response_id, result.response_status) == (ID, "in_progress")
    assert result.model == "deep-research-pro-preview-12-2025"


def test_requires_action_and_requires_continuation_are_billed_as_they_come() -> None:
    for status in ("requires_action", "requires_continuation", "incomplete"):
        result = parse_response("interactions", json.dumps(COMPLETED | {"status": status}).encode())
        assert (result.usage, result.error, result.response_id) == (EXPECTED, None, None)


# --- streams ----------------------------------------------------------------------------------


def _events(usage: dict[str, Any] = USAGE, model: str = "gemini-2.5-flash") -> list[dict[str, Any]]:
    """A streamed interaction as the API sends it (the SDK's InteractionSSEEvent variants)."""
    running = {"id": ID, "object": "interaction", "model": model, "status": "in_progress"}
    partial = {"total_input_tokens": usage["total_input_tokens"], "total_output_tokens": 3}
    events: list[dict[str, Any]] = [
        {"event_type": "interaction.created", "interaction": running},
        {"event_type": "interaction.status_update", "interaction_id": ID, "status": "in_progress"},
        {"event_type": "step.start", "index": 0, "step": {"type": "thought"}},
        {
            "event_type": "step.delta",
            "index": 0,
            "delta": {"type": "thought_summary", "content": {"type": "text", "text": "Plan."}},
        },
        {"event_type": "step.stop", "index": 0, "usage": partial, "step_usage": partial},
        {"event_type": "step.start", "index": 1, "step": {"type": "model_output"}},
        {"event_type": "step.delta", "index": 1, "delta": {"type": "text", "text": "It is 18C "}},
        {"event_type": "step.delta", "index": 1, "delta": {"type": "text", "text": "in Paris. ☀"}},
        {"event_type": "step.stop", "index": 1},
        {
            "event_type": "interaction.completed",
            "interaction": running | {"status": "completed", "usage": usage, "service_tier": "standard"},
        },
    ]
    for n, event in enumerate(events):
        event["event_id"] = f"evt-{n}"
    return events


def _sse(events: list[dict[str, Any]], named: bool = True, done: bool = True) -> bytes:
    out = b"".join(
        (f"event: {e['event_type']}\n" if named else "").encode()
        + b"data: "
        + json.dumps(e).encode()
        + b"\n\n"
        for e in events
    )
    return out + (b"data: [DONE]\n\n" if done else b"")


def _parse(data: bytes, cuts: list[int] | None = None) -> tuple[Metered, bool]:
    parser = StreamParser()
    decoder = SSEDecoder()
    bounds = [0, *(cuts or []), len(data)]
    for a, b in itertools.pairwise(bounds):
        for event in decoder.feed(data[a:b]):
            parser.feed(event)
    for event in decoder.close():
        parser.feed(event)
    return parser.result(), parser.done


@pytest.mark.parametrize("named", [True, False])
def test_stream_usage_is_the_completed_events(named: bool) -> None:
    result, done = _parse(_sse(_events(), named=named))
    assert done
    assert result.usage == EXPECTED
    assert (result.model, result.error, result.service_tier) == ("gemini-2.5-flash", None, "standard")
    assert (result.response_id, result.response_status) == (None, "completed")


def test_stream_split_randomly_and_at_every_byte() -> None:
    data = _sse(_events()).replace(b"\n", b"\r\n")
    rng = random.Random(20261102)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        assert _parse(data, cuts) == (_parse(data)[0], True)
    small = _sse(_events()[-2:])
    assert all(_parse(small, [i])[0].usage == EXPECTED for i in range(1, len(small)))


def test_stream_through_the_tap_passes_every_byte_and_meters() -> None:
    assert GOOGLE is not None
    data = _sse(_events())
    rng = random.Random(7)
    for _ in range(50):
        tap = StreamTap(GOOGLE, "interactions", None, framing="sse")
        cuts = sorted(rng.sample(range(1, len(data)), 25))
        out = bytearray()
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            piece = tap(data[a:b])
            out += piece if isinstance(piece, bytes) else b"".join(piece)
        tap(b"")
        assert bytes(out) == data
        assert tap.result().usage == EXPECTED and tap.final_event_seen


def test_running_totals_overwrite_and_are_never_added() -> None:
    """step.stop's usage and step.delta's metadata.total_usage are the interaction's running
    total: a stream cut before interaction.completed keeps the last one."""
    events = _events()[:-1]
    events.insert(
        7,
        {
            "event_type": "step.delta",
            "index": 1,
            "delta": {"type": "text", "text": "x"},
            "metadata": {"total_usage": {"total_input_tokens": 2113, "total_output_tokens": 9}},
        },
    )
    result, done = _parse(_sse(events, done=False))
    assert not done
    assert result.usage == Usage(input_tokens=2113, output_tokens=9)
    full, _ = _parse(_sse([*events, _events()[-1]]))
    assert full.usage == EXPECTED


def test_a_stream_cut_before_any_usage_keeps_its_text_and_id() -> None:
    result, done = _parse(_sse(_events()[:2] + _events()[5:8], done=False))
    assert not done and result.usage is None and result.error is None
    assert (result.response_id, result.response_status) == (ID, "in_progress")
    assert result.output_text == "It is 18C in Paris. ☀"


def test_error_event_mid_stream() -> None:
    error = {"event_type": "error", "error": {"code": "INTERNAL", "message": "Internal error encountered."}}
    result, done = _parse(_sse([*_events()[:7], error], done=False))
    assert done and result.usage == Usage(input_tokens=2113, output_tokens=3)  # the running total so far
    assert result.error == "INTERNAL: Internal error encountered."


def test_stream_body_read_whole() -> None:
    result = parse_response("interactions", _sse(_events()))
    assert result.usage == EXPECTED and result.error is None


def test_garbage_stream_never_raises() -> None:
    parser = StreamParser()
    decoder = SSEDecoder()
    junk = b'data: {"event_type": "interaction.completed", "interaction": [1]}\n\ndata: {not json\n\n'
    junk += b'data: {"event_type": "step.stop", "usage": {"total_input_tokens": "many"}}\n\n'
    junk += b"event: step.delta\ndata: 42\n\n: comment\n\ndata:\n\n"
    for event in decoder.feed(junk) + decoder.close():
        parser.feed(event)
    result = parser.result()
    assert result.usage == Usage()  # a usage object with no readable count: zeros, never a crash
    assert parser.done


# --- prices -----------------------------------------------------------------------------------


def _genai_prices(usage: Usage, model: str) -> Decimal:
    counts = {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.web_searches:
        counts["web_searches"] = usage.web_searches
    found = calc_price(PriceUsage(**counts), model, provider_id="google", genai_request_timestamp=WHEN)
    return found.total_price


def test_price_is_exact() -> None:
    # gemini-2.5-flash: (2153 - 2037) uncached x $0.30/M + 2037 cached x $0.03/M + 401 x $2.50/M
    result = parse_response("interactions", json.dumps(COMPLETED).encode())
    assert result.usage is not None
    price = pricing.price("google", result.model, result.usage, WHEN)
    expected = (
        Decimal(116) * Decimal("0.30") + Decimal(2037) * Decimal("0.03") + Decimal(401) * Decimal("2.50")
    ) / 10**6
    assert (price.status, price.model) == ("priced", "gemini-2.5-flash")
    assert price.cost_usd == expected == _genai_prices(result.usage, "gemini-2.5-flash")


def test_search_queries_are_priced_per_query_on_gemini_3() -> None:
    usage = {**USAGE, "grounding_tool_count": [{"type": "google_search", "count": 4}]}
    body = COMPLETED | {"model": "gemini-3-flash-preview", "usage": usage}
    result = parse_response("interactions", json.dumps(body).encode())
    assert result.usage is not None and result.usage.web_searches == 4
    price = pricing.price("google", result.model, result.usage, WHEN)
    assert price.cost_usd == _genai_prices(result.usage, "gemini-3-flash-preview")
    searches = price.cost_usd - _genai_prices(
        Usage(
            input_tokens=result.usage.input_tokens,
            cache_read_tokens=result.usage.cache_read_tokens,
            output_tokens=result.usage.output_tokens,
        ),
        "gemini-3-flash-preview",
    )
    assert searches == Decimal("0.056")  # 4 queries at $14 per 1,000


def test_an_agent_is_recorded_and_left_unpriced_not_priced_zero() -> None:
    """Deep Research reports tokens, but no price list knows the agent: its row says so
    ('unknown_model', cost NULL) instead of a made-up or zero price."""
    body = COMPLETED | {"model": None, "agent": "deep-research-pro-preview-12-2025"}
    del body["model"]
    result = parse_response("interactions", json.dumps(body).encode())
    assert (result.usage, result.model) == (EXPECTED, "deep-research-pro-preview-12-2025")
    price = pricing.price("google", result.model, result.usage, WHEN)
    assert (price.status, price.cost_usd) == ("unknown_model", None)


# --- the meter: background interactions -------------------------------------------------------


async def _answer(meter: Meter, flow: http.HTTPFlow, body: dict[str, Any]) -> None:
    flow.response = http.Response.make(200, json.dumps(body), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


def _meter(tmp_path: Path, tctx: taddons.context, addon: Meter) -> CollectingStore:
    tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
    store = CollectingStore()
    addon.store = store  # type: ignore[assignment]
    return store


async def test_a_background_interaction_is_billed_once_on_the_get_that_sees_it_finished(
    tmp_path: Path,
) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        headers = {"x-goog-api-key": "AIza-bg-key", "x-metering-tags": '{"team": "research"}'}
        post = make_flow(
            URL, {"model": "gemini-2.5-flash", "input": "A long report.", "background": True}, headers=headers
        )
        await run_request(addon, post)
        running = {"id": ID, "object": "interaction", "model": "gemini-2.5-flash", "status": "in_progress"}
        await _answer(addon, post, running)
        for body in (running, COMPLETED, COMPLETED):  # polled: running, finished, read again
            get = make_flow(f"{URL}/{ID}", b"", method="GET", headers={"x-goog-api-key": "AIza-bg-key"})
            await run_request(addon, get)
            await _answer(addon, get, body)
        started, billed = store.records
        assert (started.api_flavor, started.price_status, started.cost_usd) == (
            "interactions",
            "background",
            0,
        )
        assert (billed.path, billed.api_flavor, billed.streamed) == (
            f"/v1beta/interactions/{ID}",
            "interactions",
            False,
        )
        assert (billed.input_tokens, billed.cache_read_tokens, billed.output_tokens) == (2153, 2037, 401)
        assert (billed.team, billed.model_requested) == ("research", "gemini-2.5-flash")
        assert billed.key_fingerprint == started.key_fingerprint is not None
        addon._price(billed)
        assert billed.cost_usd == _genai_prices(EXPECTED, "gemini-2.5-flash")


async def test_a_background_stream_the_client_left_is_billed_on_its_resumed_get(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        body = {
            "agent": "deep-research-pro-preview-12-2025",
            "input": "Research.",
            "background": True,
            "stream": True,
        }
        post = make_flow(URL, body, headers={"x-goog-api-key": "AIza-bg-key"})
        await run_request(addon, post)
        stream_response(post, addon)
        post.response.stream(_sse(_events(model="deep-research-pro-preview-12-2025")[:3], done=False))  # type: ignore[operator,union-attr]
        post.error = Error("client disconnected")
        addon.error(post)
        get = make_flow(f"{URL}/{ID}?stream=true&last_event_id=evt-2", b"", method="GET")
        await run_request(addon, get)
        stream_response(get, addon)
        get.response.stream(_sse(_events(model="deep-research-pro-preview-12-2025")[3:]))  # type: ignore[operator,union-attr]
        get.response.stream(b"")  # type: ignore[operator,union-attr]
        await addon.response(get)
        started, billed = store.records
        assert (started.aborted, started.price_status) == (True, "background")
        assert (billed.streamed, billed.output_tokens, billed.model_requested) == (
            True,
            401,
            "deep-research-pro-preview-12-2025",
        )


async def test_a_plain_stream_the_client_left_is_not_taken_for_a_background_one(tmp_path: Path) -> None:
    """Without "background": true nothing runs on to bill later: the row is the call's own
    (its tokens counted offline), and no GET is awaited."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        post = make_flow(URL, {"model": "gemini-2.5-flash", "input": "Say hello", "stream": True})
        await run_request(addon, post)
        stream_response(post, addon)
        post.response.stream(_sse(_events()[:7], done=False))  # type: ignore[operator,union-attr]
        post.error = Error("client disconnected")
        addon.error(post)
        for task in list(addon._estimates):
            await task
        [row] = store.records
        assert row.aborted and row.price_status != "background"
        assert row.input_tokens == 2113 and row.output_tokens == 3  # the last running total seen
        assert not addon._background.get(ID)


# -- review: running totals of a background interaction, steps as input ------------------------


async def test_background_stream_left_after_a_running_total_is_still_followed(tmp_path: Path) -> None:
    """A background stream cut after a step.stop's running total: the interaction runs on
    upstream, so the POST must stay $0 'background' and the resumed GET bill the whole usage."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        body = {"model": "gemini-2.5-flash", "input": "Research.", "background": True, "stream": True}
        post = make_flow(URL, body, headers={"x-goog-api-key": "AIza-bg-key"})
        await run_request(addon, post)
        stream_response(post, addon)
        post.response.stream(_sse(_events()[:6], done=False))  # through the first step.stop (usage)
        post.error = Error("client disconnected")
        addon.error(post)
        for task in list(addon._estimates):
            await task
        started = store.records[0]
        assert (started.price_status, addon._background.get(ID) is not None) == ("background", True), (
            started.price_status,
            started.input_tokens,
            started.output_tokens,
        )
        get = make_flow(f"{URL}/{ID}?stream=true&last_event_id=evt-5", b"", method="GET")
        await run_request(addon, get)
        stream_response(get, addon)
        get.response.stream(_sse(_events()[6:]))
        get.response.stream(b"")
        await addon.response(get)
        for task in list(addon._estimates):
            await task
        rows = store.records
        assert rows[0].price_status == "background", [(r.path, r.price_status, r.output_tokens) for r in rows]
        assert len(rows) == 2 and rows[1].output_tokens == 401


async def test_a_retrieval_stream_cut_mid_way_does_not_claim_the_interaction(tmp_path: Path) -> None:
    """GET ?stream=true of a background interaction, cut after a running total while it still
    runs: a partial total must not claim (and close) it; the later GET that sees it finished bills."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        post = make_flow(URL, {"model": "gemini-2.5-flash", "input": "x", "background": True})
        await run_request(addon, post)
        running = {"id": ID, "object": "interaction", "model": "gemini-2.5-flash", "status": "in_progress"}
        await _answer(addon, post, running)
        get = make_flow(f"{URL}/{ID}?stream=true", b"", method="GET")
        await run_request(addon, get)
        stream_response(get, addon)
        get.response.stream(_sse(_events()[:6], done=False))
        get.error = Error("client disconnected")
        addon.error(get)
        poll = make_flow(f"{URL}/{ID}", b"", method="GET")
        await run_request(addon, poll)
        await _answer(addon, poll, COMPLETED)
        billed = [r for r in store.records if r.price_status != "background"]
        assert [r.output_tokens for r in billed] == [401], [(r.path, r.output_tokens) for r in billed]


def test_offline_estimate_counts_an_input_of_steps() -> None:
    """The SDK's InteractionsInput is Content | list[Step] | list[Content] | str
    (_gaos/types/interactions/interactionsinput.py); a stateless multi-turn conversation sends the
    steps (user_input, model_output, function_call, function_result) back as input."""
    from addon.token_estimate import estimate_input

    text = "The quick brown fox jumps over the lazy dog. " * 50
    as_string = estimate_input("interactions", {"model": "gemini-2.5-flash", "input": text}, None)
    steps = [{"type": "user_input", "content": [{"type": "text", "text": text}]}]
    assert estimate_input("interactions", {"model": "gemini-2.5-flash", "input": steps}, None) == as_string
    history = [
        {"type": "user_input", "content": [{"type": "text", "text": "Weather?"}]},
        {"type": "function_call", "id": "c1", "name": "get_weather", "arguments": {"city": text}},
        {"type": "function_result", "call_id": "c1", "name": "get_weather", "result": text},
        {"type": "model_output", "content": [{"type": "text", "text": text}]},
    ]
    assert (
        estimate_input("interactions", {"model": "gemini-2.5-flash", "input": history}, None)
        >= 3 * as_string * 0.9
    )


def test_tool_use_prompts_count_by_modality_too() -> None:
    """Tool-use prompt tokens are input, in their modality: audio a tool returned is audio input."""
    usage = {
        "total_input_tokens": 100,
        "total_output_tokens": 10,
        "total_tool_use_tokens": 40,
        "input_tokens_by_modality": [{"modality": "text", "tokens": 100}],
        "tool_use_tokens_by_modality": [{"modality": "audio", "tokens": 40}],
    }
    assert extract_usage(usage, "gemini-2.5-flash") == Usage(
        input_tokens=140, output_tokens=10, input_audio_tokens=40
    )


def test_offline_estimate_counts_the_tools_declared() -> None:
    """Declared tools are prompt tokens: the same body with a tool estimates higher by its JSON."""
    from addon.token_estimate import estimate_input

    body = {"model": "gemini-2.5-flash", "input": "What is the weather in Paris?"}
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The current weather of a city, in degrees Celsius.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    bare = estimate_input("interactions", body, None)
    with_tool = estimate_input("interactions", {**body, "tools": [tool]}, None)
    compact = json.dumps(tool, separators=(",", ":"))  # tools are counted as compact JSON
    assert with_tool - bare == estimate_input("interactions", {"input": compact}, "gemini-2.5-flash") > 20


async def test_a_cancelled_background_interaction_is_settled_by_its_cancel(tmp_path: Path) -> None:
    """POST /v1beta/interactions/{id}/cancel answers with the interaction as it stands: its usage
    (work done before the cancel) is billed on the cancel's row, once."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        post = make_flow(URL, {"model": "gemini-2.5-flash", "input": "x", "background": True})
        await run_request(addon, post)
        await _answer(
            addon,
            post,
            {"id": ID, "object": "interaction", "model": "gemini-2.5-flash", "status": "in_progress"},
        )
        cancel = make_flow(f"{URL}/{ID}/cancel", b"", method="POST")
        await run_request(addon, cancel)
        await _answer(addon, cancel, COMPLETED | {"status": "cancelled"})
        poll = make_flow(f"{URL}/{ID}", b"", method="GET")
        await run_request(addon, poll)
        await _answer(addon, poll, COMPLETED)
        assert [(r.path.rsplit("/", 1)[-1], r.price_status) for r in store.records] == [
            ("interactions", "background"),
            ("cancel", None),
        ]
        assert (
            store.records[1].output_tokens
            == extract_usage(COMPLETED["usage"], "gemini-2.5-flash").output_tokens
        )


async def test_a_background_interaction_holds_its_reservation_until_billed(tmp_path: Path) -> None:
    """As an OpenAI background response: the POST's reservation stays held while the interaction
    runs (a running total seen by a GET settles nothing), until the GET that sees it finished bills it."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        store = _meter(tmp_path, tctx, addon)
        addon._apply(parse_policies("environments:\n  development:\n    budget: {usd: 100, period: day}\n"))
        dev = Scope("environment", "development")
        headers = {"x-goog-api-key": "AIza-bg-key"}
        post = make_flow(URL, {"model": "gemini-2.5-pro", "input": "x", "background": True}, headers=headers)
        post.request.timestamp_start = time.time()
        await run_request(addon, post)
        running = {"id": ID, "object": "interaction", "model": "gemini-2.5-pro", "status": "in_progress"}
        await _answer(addon, post, running)
        addon._on_finished(store.records)
        estimate = addon.enforcer.budgets.reserved().get(dev)
        assert estimate is not None and estimate > 0
        for body in (running | {"usage": COMPLETED["usage"]}, COMPLETED):  # a running total, then done
            get = make_flow(f"{URL}/{ID}", b"", method="GET", headers=headers)
            get.request.timestamp_start = time.time()
            await run_request(addon, get)
            await _answer(addon, get, body)
            if body is not COMPLETED:
                assert len(store.records) == 1 and addon.enforcer.budgets.reserved() == {dev: estimate}
        _, billed = store.records
        addon._price(billed)
        addon._on_finished([billed])
        assert addon.enforcer.budgets.reserved() == {}
        [status] = addon.enforcer.budgets.status(datetime.now(UTC))
        assert status["spent"] == billed.cost_usd > 0
