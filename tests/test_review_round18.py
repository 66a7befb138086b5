"""Review round 18 (105a48a any @preset/ id is a preset, 1ffad2a late WebSocket users, 6946804
the larger of chat's two caps, 0567502 unmetered lookup wait, c72459d Fallbacks.chain): failing
tests for the defects found."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from mitmproxy import http

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.pricing import Pricer
from addon.reservation import max_output_tokens
from tests.test_meter import make_flow, run_request, submitted

OPENROUTER_CHAT = "https://openrouter.ai/api/v1/chat/completions"
ONE_DOLLAR = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"
GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai, pricing_provider: openai}\n'
)
GATEWAY_RESPONSES = "https://llm.internal.example/v1/responses"


async def _let_through(meter: Meter, url: str, body: dict[str, Any], calls: int = 20) -> int:
    """How many of ``calls`` concurrent calls of ``body`` pass with $0.05 left of a $1 budget."""
    meter.enforcer.budgets.record((Scope("environment", "development"),), Decimal("0.95"), datetime.now(UTC))
    flows = [make_flow(url, body) for _ in range(calls)]
    for flow in flows:
        flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
    await asyncio.gather(*(run_request(meter, flow) for flow in flows))
    return sum(1 for flow in flows if flow.response is None)


@pytest.mark.parametrize(
    "body",
    [
        {"model": " @preset/x"},  # the model part before @preset/ is a blank
        {"model": "\t@preset/x"},
        {"model": " ", "preset": "x"},  # folded by model_with_preset to " @preset/x"
    ],
    ids=["space", "tab", "blank-model-with-preset-field"],
)
async def test_a_preset_with_a_blank_model_part_is_reserved_at_the_bare_preset_ceiling(
    meter: Meter, body: dict[str, Any]
) -> None:
    """$0.05 left of $1, no allowlist; 20 concurrent OpenRouter calls of 4,000 output tokens.
    {"model": "@preset/x"} (the preset's own model, unknown here) is reserved at the dearest model
    OpenRouter lists: 1 of 20 let through. Write a blank before it (" @preset/x", "\\t@preset/x",
    or {"model": " ", "preset": "x"}, folded to " @preset/x") and _OPENROUTER_PRESET reads it
    "cleanly" as m@preset/slug with m = " ": preset_model returns " ", which no price list has, so
    each call reserves $0 and all 20 pass, each running whatever model the preset names. A blank
    is no model: the id names the bare preset. Expected at most 1 of 20; actual 20 of 20."""
    meter._apply(parse_policies(ONE_DOLLAR))
    request = {**body, "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}
    allowed = await _let_through(meter, OPENROUTER_CHAT, request)
    assert allowed <= 1, f"{allowed} of 20 let through with $0.05 left (bare @preset/x: 1 of 20)"


def test_a_responses_cap_beside_a_chat_cap_is_read_at_the_larger() -> None:
    """6946804 reads a body with both chat caps at the larger, because "a server behind a gateway
    may obey either". A body with max_tokens 1 and max_output_tokens 16000 (a Responses request; a
    vLLM-style server behind a gateway ignores the unknown chat field and obeys max_output_tokens)
    is still read at the chat cap alone: the loop over max_output_tokens is never reached once a
    chat cap is found. Expected 16000; actual 1."""
    assert max_output_tokens({"max_tokens": 1, "max_output_tokens": 16000}) == 16000


async def test_a_responses_call_through_a_gateway_is_not_reserved_at_a_stray_chat_cap(meter: Meter) -> None:
    """$0.05 left of $1; 20 concurrent POST /v1/responses through an `api: openai` gateway, model
    gpt-4o, max_output_tokens 4000 ($0.04 of output each): 2 of 20 pass. Add "max_tokens": 1 (a
    field the Responses API does not define; a server that ignores unknown fields writes up to
    4000 tokens all the same) and each is reserved at 1 output token (about $0.00002 of output):
    all 20 pass. Expected at most 2 of 20; actual 20 of 20."""
    meter._apply(parse_policies(GATEWAY + ONE_DOLLAR))
    body = {"model": "gpt-4o", "input": "hi", "max_output_tokens": 4000, "max_tokens": 1}
    allowed = await _let_through(meter, GATEWAY_RESPONSES, body)
    assert allowed <= 2, f"{allowed} of 20 let through with $0.05 left (max_output_tokens alone: 2 of 20)"


# OpenRouter's preset API (docs: API Reference, Presets): POST /api/v1/presets/{slug}/chat/completions
# (and /responses, /messages) saves the inference body's config as a preset version and answers
# the preset object; nothing is run, nothing billed.
PRESET_SAVED = {
    "data": {
        "created_at": "2026-04-20T10:00:00Z",
        "description": None,
        "designated_version": {
            "config": {"max_tokens": 1024, "model": "openai/gpt-4o"},
            "created_at": "2026-04-20T10:00:00Z",
            "id": "550e8400-e29b-41d4-a716-446655440000",
        },
        "slug": "my-preset",
    }
}


async def test_saving_an_openrouter_preset_is_not_recorded_as_a_billed_call(meter: Meter) -> None:
    """A client saves a preset: POST https://openrouter.ai/api/v1/presets/my-preset/chat/completions
    with {"model": "openai/gpt-4o", "max_tokens": 1024, messages: a 200-sentence system prompt}.
    OpenRouter stores the config and answers the preset object (no usage: nothing ran). The path
    ends in /chat/completions, so the proxy reads it as a chat call: reserved, checked against
    the allowlist and budget (refused 403/402 where gpt-4o is not allowed or the budget is spent),
    and recorded as an openrouter chat row for openai/gpt-4o, usage estimated (1,214 input
    tokens), priced $0.003035, counted in spend and budgets. Expected no billed row; actual one
    row of $0.003035."""
    meter._apply(parse_policies(""))
    system = "You are a helpful assistant. " * 200
    body = {
        "model": "openai/gpt-4o",
        "max_tokens": 1024,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hello!"}],
    }
    flow = make_flow("https://openrouter.ai/api/v1/presets/my-preset/chat/completions", body)
    await run_request(meter, flow)
    flow.response = http.Response.make(
        200, json.dumps(PRESET_SAVED).encode(), {"content-type": "application/json"}
    )
    meter.responseheaders(flow)
    await meter.response(flow)
    rows = await submitted(meter)
    pricer = Pricer.for_policies(meter.policies)
    for row in rows:
        pricer(row)
    billed = [(row.api_flavor, row.model_requested, row.cost_usd) for row in rows if row.cost_usd]
    assert billed == [], f"saving a preset recorded as {billed}"
