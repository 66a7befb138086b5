"""OpenRouter's Anthropic-compatible endpoint, ``/api/v1/messages``: metered, and its fallback
lists (``models``, and ``fallbacks: [{model}]``, the shape Anthropic's SDKs send) held to the
allowlist as on chat completions.

Before: the path was not metered at all (no row, no reservation), only its body ``model`` was
checked as an unmetered request's, refused rather than downgraded, and neither list was read:
``models: [allowed, forbidden]`` reached upstream untouched in a restricted environment.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import fallback_lists
from tests.test_meter import (
    DAY_BUDGET,
    FIXTURES,
    ONLY_MINI,
    OPUS,
    feed,
    make_flow,
    reserved_for,
    run_request,
    sent_body,
    stream_response,
)

MESSAGES = "https://openrouter.ai/api/v1/messages"
MINI = "openai/gpt-4o-mini"
BUDGET = "    budget: {usd: 100, period: day}\n"


def messages_body(**extra: object) -> dict:
    return {"model": MINI, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_the_messages_endpoint_is_metered(meter: Meter) -> None:
    flow = make_flow(MESSAGES, messages_body())
    await run_request(meter, flow)
    body = (FIXTURES / "anthropic_message.json").read_bytes()
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    usage = json.loads(body)["usage"]
    assert (rec.provider, rec.api_flavor, rec.action) == ("openrouter", "messages", "allowed")
    assert rec.model_requested == rec.model_sent == MINI
    assert rec.output_tokens == usage["output_tokens"] and rec.input_tokens >= usage["input_tokens"]
    assert rec.usage_source == "reported"


async def test_a_messages_stream_is_metered_and_passed_on_unchanged(meter: Meter) -> None:
    flow = make_flow(MESSAGES, messages_body(stream=True))
    original = flow.request.content
    await run_request(meter, flow)
    assert flow.request.content == original  # nothing added to an Anthropic-shaped request
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    assert feed(flow, upstream, 11) == upstream
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.provider, rec.api_flavor, rec.streamed) == ("openrouter", "messages", True)
    assert rec.input_tokens > 0 and rec.output_tokens > 0 and rec.usage_source == "reported"


async def test_a_disallowed_model_is_downgraded_in_place(meter: Meter) -> None:
    """As on chat completions: the body's model rewritten (before: refused as an unmetered path)."""
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade")))
    flow = make_flow(MESSAGES, messages_body(model=OPUS))
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow)["model"] == MINI
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == ("downgraded", OPUS, MINI)


@pytest.mark.parametrize(
    ("extra", "rewritten"),
    [
        ({"models": [MINI, OPUS]}, {"models": [MINI, MINI]}),
        ({"fallbacks": [{"model": OPUS}]}, {"fallbacks": [{"model": MINI}]}),
        ({"fallbacks": [{"model": "openai/o4-mini"}, {"model": OPUS}]}, None),
    ],
)
async def test_fallback_lists_are_downgraded_like_the_model(
    meter: Meter, extra: dict, rewritten: dict | None
) -> None:
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade")))
    body = messages_body(**extra)
    flow = make_flow(MESSAGES, body)
    await run_request(meter, flow)
    assert flow.response is None
    if rewritten is None:
        rewritten = {"fallbacks": [{"model": "openai/o4-mini"}, {"model": MINI}]}
    assert sent_body(flow) == {**body, **rewritten}
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.action, state.record.model_requested, state.record.model_sent) == (
        "downgraded",
        MINI,
        MINI,
    )
    assert state.notice is not None and OPUS in state.notice


@pytest.mark.parametrize("extra", [{"models": [MINI, OPUS]}, {"fallbacks": [{"model": OPUS}]}])
async def test_fallback_lists_are_refused_when_blocked(meter: Meter, extra: dict) -> None:
    meter._apply(parse_policies(ONLY_MINI.format(rule="block") + BUDGET))
    flow = make_flow(MESSAGES, messages_body(**extra))
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["x-tokometer-refused"] == "blocked" and OPUS in flow.response.text
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == ("blocked", OPUS, None)
    assert meter.enforcer.budgets.reserved() == {}


@pytest.mark.parametrize(
    "fallbacks",
    [
        {"model": OPUS},
        [OPUS],
        [{"model": 7}],
        [{"model": ""}],
        [{"name": OPUS}],
        [{"model": MINI}] * 65,
    ],
)
async def test_an_unreadable_fallbacks_list_is_refused_where_models_are_restricted(
    meter: Meter, fallbacks: object
) -> None:
    body = messages_body(fallbacks=fallbacks)
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade")))
    flow = make_flow(MESSAGES, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "fallbacks" in flow.response.text
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['*']}\n"))
    unrestricted = make_flow(MESSAGES, body)
    await run_request(meter, unrestricted)
    assert unrestricted.response is None and sent_body(unrestricted) == body


@pytest.mark.parametrize("extra", [{"models": [MINI, OPUS]}, {"fallbacks": [{"model": OPUS}]}])
async def test_a_call_with_fallbacks_reserves_its_most_expensive_model(meter: Meter, extra: dict) -> None:
    meter._apply(parse_policies(DAY_BUDGET))
    plain, dear = messages_body(), messages_body(**extra)
    cheap = await reserved_for(meter, MESSAGES, plain)
    dearest = await reserved_for(meter, MESSAGES, dear)
    assert dearest > cheap
    size = len(json.dumps(dear)) // 4
    assert dearest >= meter.pricer.estimate("openrouter", OPUS, size, 1000)


def test_the_fallbacks_list_is_read_and_rewritten() -> None:
    body = {"model": "a", "fallbacks": [{"model": "b"}, {"model": "c"}]}
    found = fallback_lists.openrouter_fallbacks(body)
    assert found is not None and found.models == ("b", "c") and found.error is None
    assert fallback_lists.with_fallback_models(body, ["b", "a"], found) == {
        "model": "a",
        "fallbacks": [{"model": "b"}, {"model": "a"}],
    }
    assert body["fallbacks"] == [{"model": "b"}, {"model": "c"}]  # the client's body is not changed
    both = {"models": ["a", "b"], "fallbacks": [{"model": "c"}]}
    found = fallback_lists.openrouter_fallbacks(both)
    assert found is not None and found.models == ("a", "b", "c")
    assert fallback_lists.with_fallback_models(both, ["a", "x", "y"], found) == {
        "models": ["a", "x"],
        "fallbacks": [{"model": "y"}],
    }
    assert fallback_lists.openrouter_fallbacks({"model": "a"}) is None
    assert fallback_lists.fallback_models({"fallbacks": [{"model": "c"}]}) is None  # Perplexity: models only
