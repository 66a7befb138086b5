"""A stateful call (previous_response_id, a conversation, previous_interaction_id) reserves the
history it carries: the provider bills it again as input, though the request body holds only the
new turn."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fake_responses_ws import RESPONSE_USAGE, create_event, dumps, response_created, response_terminal
from mitmproxy import http
from websocket_hooks import client_says, metered, open_session, server_says

from addon.budgets import Scope
from addon.carried_context import MAX_ID_LENGTH, CarriedContexts, carried_tokens, conversation_of
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import gemini_interactions, openai_api
from addon.sse import SSEDecoder
from addon.usage import Usage
from tests.test_meter import (
    DAY_BUDGET,
    feed,
    make_flow,
    output_usd,
    reserved_for,
    run_request,
    stream_response,
)
from tests.test_responses_ws_hooks import handshake

RESPONSES = "https://api.openai.com/v1/responses"
INTERACTIONS = "https://generativelanguage.googleapis.com/v1beta/interactions"
GEMINI_HEADERS = {"x-goog-api-key": "AIza-test-0123456789"}


def _response(answer_id: str, input_tokens: int, output_tokens: int, reasoning: int = 0) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-2024-08-06",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens,
        },
    }


async def _answer(meter: Meter, body: dict[str, Any], answer: dict[str, Any]) -> None:
    """One Responses call through the hooks, answered with ``answer`` (JSON)."""
    flow = make_flow(RESPONSES, body)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None, "the call was let through"
    flow.response = http.Response.make(200, json.dumps(answer).encode(), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


# -- the memory itself --------------------------------------------------------------------------


def test_carried_tokens_are_input_and_visible_output() -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=8_000, output_tokens=900, reasoning_tokens=400)
    assert carried_tokens(usage) == 10_000 + 900


def test_a_continuation_carries_what_its_answer_or_conversation_held() -> None:
    contexts = CarriedContexts()
    usage = Usage(input_tokens=700, output_tokens=300)
    contexts.remember("resp_1", conversation_of({"conversation": {"id": "conv_9"}}), usage)
    assert contexts.carried({"previous_response_id": "resp_1"}) == 1000
    assert contexts.carried({"conversation": "conv_9"}) == 1000
    assert contexts.carried({"conversation": {"id": "conv_9"}}) == 1000
    assert contexts.carried({"previous_interaction_id": "resp_1"}) == 1000
    # unknown ids, other types, no body: nothing carried
    assert contexts.carried({"previous_response_id": "resp_2"}) == 0
    assert contexts.carried({"previous_response_id": ["resp_1"]}) == 0
    assert contexts.carried({"conversation": 3}) == 0
    assert contexts.carried(None) == 0
    contexts.remember("resp_3", None, None)  # no usage: nothing known
    assert len(contexts) == 2


def test_the_oldest_is_forgotten_first() -> None:
    contexts = CarriedContexts(limit=3)
    for i in range(4):
        contexts.remember(f"resp_{i}", None, Usage(input_tokens=i + 1))
    assert contexts.carried({"previous_response_id": "resp_0"}) == 0
    assert [contexts.carried({"previous_response_id": f"resp_{i}"}) for i in (1, 2, 3)] == [2, 3, 4]
    assert len(contexts) == 3


# -- the parsers name the answer a later request may continue -----------------------------------


def test_a_responses_body_and_stream_name_their_answer() -> None:
    body = json.dumps(_response("resp_abc", 10, 5)).encode()
    assert openai_api.parse_response("responses", body).context_id == "resp_abc"
    # a chat completion is no stored answer
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "usage": usage}
    assert openai_api.parse_response("chat", json.dumps(chat).encode()).context_id is None
    parser = openai_api.StreamParser("responses")
    completed = {"type": "response.completed", "response": _response("resp_abc", 10, 5)}
    sse = SSEDecoder()
    for event in sse.feed(f"event: response.completed\ndata: {json.dumps(completed)}\n\n".encode()):
        parser.feed(event)
    assert parser.result().context_id == "resp_abc"


def test_an_interaction_names_itself() -> None:
    interaction = {
        "id": "v1_abc",
        "status": "completed",
        "model": "gemini-2.5-flash",
        "usage": {"total_input_tokens": 10, "total_output_tokens": 5},
    }
    parsed = gemini_interactions.parse_response("interactions", json.dumps(interaction).encode())
    assert parsed.context_id == "v1_abc"


# -- the reservation ------------------------------------------------------------------------------


async def test_a_continuation_reserves_the_history_it_carries(meter: Meter) -> None:
    """An agent loop on gpt-4o: turn one read 50,000 tokens and wrote 2,000 (500 of them
    reasoning, passed on with a tool's output). Turn two, naming previous_response_id, is billed
    those 52,000 tokens again as input; it reserved only its own body's few tokens."""
    meter._apply(parse_policies(DAY_BUDGET))
    await _answer(meter, {"model": "gpt-4o", "input": "start"}, _response("resp_turn1", 50_000, 2_000, 500))
    plain = {"model": "gpt-4o", "input": "next", "max_output_tokens": 100}
    alone = await reserved_for(meter, RESPONSES, plain)
    continued = await reserved_for(meter, RESPONSES, {**plain, "previous_response_id": "resp_turn1"})
    # a few bytes longer body aside, the difference is 52,000 input tokens at $2.50 per 1M
    carried = output_usd(52_000, "2.50")
    assert carried <= continued - alone < carried + Decimal("0.0001"), f"{continued - alone}"
    # an answer never seen here adds nothing
    unknown = await reserved_for(meter, RESPONSES, {**plain, "previous_response_id": "resp_elsewhere"})
    assert unknown - alone < Decimal("0.0001")


async def test_a_conversation_reserves_its_last_answer(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_BUDGET))
    first = {"model": "gpt-4o", "input": "start", "conversation": "conv_42"}
    await _answer(meter, first, _response("resp_a", 20_000, 1_000))
    await _answer(meter, {**first, "input": "more"}, _response("resp_b", 40_000, 1_000))
    plain = {"model": "gpt-4o", "input": "next", "max_output_tokens": 100}
    alone = await reserved_for(meter, RESPONSES, plain)
    continued = await reserved_for(meter, RESPONSES, {**plain, "conversation": {"id": "conv_42"}})
    assert continued - alone >= output_usd(41_000, "2.50")  # the latest state, not the first
    assert continued - alone < output_usd(41_000, "2.50") + Decimal("0.0001")


async def test_a_streamed_answer_is_remembered(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_BUDGET))
    flow = make_flow(RESPONSES, {"model": "gpt-4o", "input": "start", "stream": True})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    stream_response(flow, meter)
    completed = {"type": "response.completed", "response": _response("resp_s", 30_000, 1_000)}
    upstream = f"event: response.completed\ndata: {json.dumps(completed)}\n\n".encode()
    assert feed(flow, upstream, 7) == upstream
    await meter.response(flow)
    plain = {"model": "gpt-4o", "input": "next", "max_output_tokens": 100}
    alone = await reserved_for(meter, RESPONSES, plain)
    continued = await reserved_for(meter, RESPONSES, {**plain, "previous_response_id": "resp_s"})
    assert continued - alone >= output_usd(31_000, "2.50")


async def test_a_gemini_interaction_continuation_reserves_its_history(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_BUDGET))
    flow = make_flow(INTERACTIONS, {"model": "gemini-2.5-pro", "input": "start"}, headers=GEMINI_HEADERS)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    interaction = {
        "id": "v1_turn1",
        "status": "completed",
        "model": "gemini-2.5-pro",
        "usage": {"total_input_tokens": 80_000, "total_output_tokens": 1_000},
    }
    flow.response = http.Response.make(
        200, json.dumps(interaction).encode(), {"content-type": "application/json"}
    )
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    assert row.input_tokens == 80_000, row.error
    plain = {"model": "gemini-2.5-pro", "input": "next", "generation_config": {"max_output_tokens": 100}}
    alone = await reserved_for(meter, INTERACTIONS, plain, GEMINI_HEADERS)
    continued = await reserved_for(
        meter, INTERACTIONS, {**plain, "previous_interaction_id": "v1_turn1"}, GEMINI_HEADERS
    )
    assert continued - alone >= output_usd(81_000, "1.25")  # gemini-2.5-pro: $1.25 per 1M input


async def test_twenty_continuations_in_flight_hold_the_cap(meter: Meter) -> None:
    """The issue's guarantee: 20 simultaneous calls against a nearly spent budget overshoot it by
    at most one call's cost. Each continuation of a 100,000-token history costs at least $0.25
    on gpt-4o; $1 of room let all 20 through (about $5 of bills), reserved at a few tokens each."""
    meter._apply(parse_policies(DAY_BUDGET.replace("usd: 100", "usd: 1")))
    await _answer(meter, {"model": "gpt-4o", "input": "start"}, _response("resp_big", 99_000, 1_000))
    body = {"model": "gpt-4o", "input": "go on", "max_output_tokens": 50, "previous_response_id": "resp_big"}
    let_through = 0
    for _ in range(20):
        flow = make_flow(RESPONSES, body)
        flow.request.timestamp_start = datetime.now(UTC).timestamp()
        await run_request(meter, flow)
        let_through += flow.response is None
    reserved = meter.enforcer.budgets.reserved()[Scope("environment", "development")]
    # The first call cost $0.2575; each continuation reserves about $0.2505. Calls are let through
    # while room is left, so the third (room $0.24) still goes: at most one call over the cap.
    first = output_usd(99_000, "2.50") + output_usd(1_000, "10")
    assert let_through == 3, f"{let_through} of 20 let through, {reserved} reserved"
    assert first + reserved - Decimal(1) < reserved / 3


async def test_a_websocket_create_continuing_a_response_reserves_its_history(tmp_path: Path) -> None:
    """Responses over WebSocket: each response.create usually names the previous response."""
    for meter in metered(tmp_path):
        meter._apply(parse_policies(DAY_BUDGET))
        flow = handshake()
        await open_session(meter, flow)
        await client_says(meter, flow, create_event("gpt-5", "a"))
        await server_says(meter, flow, response_created("resp_1", "gpt-5", "a"))
        await server_says(meter, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, "a"))
        budgets = meter.enforcer.budgets
        assert budgets.reserved() == {}
        create = create_event("gpt-5", "a", max_output_tokens=10, previous_response_id="resp_1")
        await client_says(meter, flow, create)
        alone = meter.pricer.estimate("openai", "gpt-5", len(dumps(create)) // 4, 10, None)
        carried = budgets.reserved()[Scope("environment", "development")] - alone
        # 1,200 input and 300 output (100 of them reasoning): 1,500 tokens at gpt-5's $1.25 per 1M
        assert carried == output_usd(1_500, "1.25"), carried


def test_an_id_too_long_for_any_provider_is_never_kept() -> None:
    contexts = CarriedContexts()
    contexts.remember("r" * (MAX_ID_LENGTH + 1), "c" * 100_000, Usage(input_tokens=5))
    assert len(contexts) == 0


# -- found by the review of the change (failed before their fix) ---------------------------------


async def test_a_websocket_create_in_a_conversation_reserves_its_history(tmp_path: Path) -> None:
    """Responses over WebSocket with the Conversations API: each response.create names the same
    ``conversation``, which OpenAI bills again as input. Over HTTP the conversation's last answer
    is remembered and reserved; over WebSocket only the response id is (the socket path passes no
    request body to ``remember``), so every create of a WebSocket conversation reserves its own
    few tokens, however long the conversation: the overshoot the commit fixes, back again."""
    for m in metered(tmp_path):
        m._apply(parse_policies(DAY_BUDGET))
        flow = handshake()
        await open_session(m, flow)
        await client_says(m, flow, create_event("gpt-5", "a", conversation="conv_7"))
        await server_says(m, flow, response_created("resp_1", "gpt-5", "a"))
        await server_says(m, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, "a"))
        assert m.enforcer.budgets.reserved() == {}
        create = create_event("gpt-5", "a", max_output_tokens=10, conversation="conv_7")
        await client_says(m, flow, create)
        alone = m.pricer.estimate("openai", "gpt-5", len(dumps(create)) // 4, 10, None)
        carried = m.enforcer.budgets.reserved()[Scope("environment", "development")] - alone
        # 1,200 input and 300 output (100 of them reasoning): 1,500 tokens at gpt-5's $1.25 per 1M
        assert carried == output_usd(1_500, "1.25"), carried


async def test_a_chat_completion_conversation_field_is_not_kept_in_memory(meter: Meter) -> None:
    """The memory of carried contexts is said to hold ~1 MB at most (10,000 ids). But it keeps
    the ``conversation`` member of ANY metered request body that got usage back, whatever its API
    and size: a chat completion to OpenRouter (which ignores unknown members) carrying a 100 kB
    ``conversation`` value is kept, 10,000 such calls ~1 GB of proxy memory, and a chat completion
    continues no stored history anyway."""
    body = {"model": "openai/gpt-4o-mini", "messages": [], "conversation": "x" * 100_000}
    flow = make_flow("https://openrouter.ai/api/v1/chat/completions", body)
    await run_request(meter, flow)
    assert flow.response is None
    chat = {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "openai/gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    flow.response = http.Response.make(200, json.dumps(chat).encode(), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    assert len(meter.store.records) == 1  # type: ignore[union-attr]
    kept = sum(len(key) for key in meter.contexts._tokens)
    assert kept < 1_000, f"{kept} characters of request text kept for a chat completion"


async def test_a_stream_is_remembered_at_its_final_event(meter: Meter) -> None:
    """An agent continues a response as soon as response.completed reaches it, while upstream may
    still hold the body open: the continuation must already see the history it carries."""
    meter._apply(parse_policies(DAY_BUDGET))
    flow = make_flow(RESPONSES, {"model": "gpt-4o", "input": "start", "stream": True})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    stream_response(flow, meter)
    completed = {"type": "response.completed", "response": _response("resp_early", 30_000, 1_000)}
    upstream = f"event: response.completed\ndata: {json.dumps(completed)}\n\n".encode()
    flow.response.stream(upstream)  # the final event is through; the body has not ended
    plain = {"model": "gpt-4o", "input": "next", "max_output_tokens": 100}
    alone = await reserved_for(meter, RESPONSES, plain)
    continued = await reserved_for(meter, RESPONSES, {**plain, "previous_response_id": "resp_early"})
    assert continued - alone >= output_usd(31_000, "2.50")
