"""Review round 12: failing tests for 82fa1e3 (OpenAI's chatgpt-4o-latest a downgrade target on
OpenRouter again) and 30791a7 (a LiteLLM fallback object's own tools reserved on top of its hop),
and the fallback-object reading around them (fallback_lists._own / _Reader, Meter.request's
hop_capped). Each test failed on the code reviewed (30791a7)."""

from __future__ import annotations

from decimal import Decimal

from addon.meter import Meter
from addon.policies import parse_policies
from tests import test_meter

LITELLM_GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai, pricing_provider: openai}\n'
)
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
GATEWAY_CHAT = "https://llm.internal.example/v1/chat/completions"
GATEWAY_RESPONSES = "https://llm.internal.example/v1/responses"
MESSAGES = [{"role": "user", "content": "hi"}]


def test_openais_other_latest_aliases_are_not_sent_to_openrouter_as_ids_it_does_not_list() -> None:
    """82fa1e3 exempts every OpenAI `-latest` name from the round-10 rule (`vendor != "openai"`),
    not chatgpt-4o-latest alone. OpenAI's gpt-5-chat-latest and codex-mini-latest are aliases
    OpenRouter lists without their `-latest` (openai/gpt-5-chat, openai/codex-mini; genai-prices'
    OpenRouter table has no openai/gpt-5-chat-latest or openai/codex-mini-latest). With a downgrade
    {"gpt-5*": gpt-5-chat-latest}, a call for openai/gpt-5 on OpenRouter is rewritten to
    openai/gpt-5-chat-latest and fails upstream with an invalid-model 400 (before 82fa1e3 the proxy
    refused it with its reason). Expected: None (refused) or the listed id; actual:
    "openai/gpt-5-chat-latest", "openai/codex-mini-latest"."""
    from addon.model_rules import in_form_of

    assert in_form_of("openai/gpt-5", "gpt-5-chat-latest", "openrouter") in (None, "openai/gpt-5-chat")
    assert in_form_of("openai/o4-mini", "codex-mini-latest", "openrouter") in (None, "openai/codex-mini")


async def test_a_litellm_fallback_object_s_members_carry_over_to_the_next_entries(meter: Meter) -> None:
    """LiteLLM's run_async_fallback applies each object with `kwargs.update(mg)` on the one kwargs
    dict it loops with, so an object's members stay set for every later entry of the list: with
    max_tokens 100 and fallbacks [{"model": "gpt-4o-mini", "max_tokens": 16000}, {"model":
    "gpt-4o"}], the gpt-4o attempt runs with max_tokens 16000 (up to ~0.160 USD, as gpt-4o at 16000
    reserves), but the call reserves ~0.0096 (mini at 16000; gpt-4o at the request's 100). Twenty
    such calls against a nearly spent budget are all let through and may overshoot it by ~3 USD,
    not by one call's cost."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    gpt_4o_at_16000 = await test_meter.reserved_for(
        meter, GATEWAY_CHAT, {"model": "gpt-4o", "max_tokens": 16000, "messages": MESSAGES}
    )
    carried = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": MESSAGES,
            "fallbacks": [{"model": "gpt-4o-mini", "max_tokens": 16000}, {"model": "gpt-4o"}],
        },
    )
    assert carried >= gpt_4o_at_16000 * Decimal("0.9"), (gpt_4o_at_16000, carried)


async def test_a_litellm_fallback_objects_max_output_tokens_is_reserved_on_a_responses_call(
    meter: Meter,
) -> None:
    """On a gateway's /v1/responses the output cap is `max_output_tokens` (read for the request by
    _max_output_tokens), but an object's own caps are only CAP_FIELDS (max_tokens,
    max_completion_tokens): gpt-4o-mini with max_output_tokens 100 and fallbacks [{"model":
    "gpt-4o", "max_output_tokens": 16000}] reserves ~0.00108 USD (gpt-4o at 100), while the gpt-4o
    attempt may write 16000 tokens (~0.160, as the same call on gpt-4o reserves): ~150x short."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    on_request = await test_meter.reserved_for(
        meter, GATEWAY_RESPONSES, {"model": "gpt-4o", "max_output_tokens": 16000, "input": "hi"}
    )
    on_object = await test_meter.reserved_for(
        meter,
        GATEWAY_RESPONSES,
        {
            "model": "gpt-4o-mini",
            "max_output_tokens": 100,
            "input": "hi",
            "fallbacks": [{"model": "gpt-4o", "max_output_tokens": 16000}],
        },
    )
    assert on_object >= on_request * Decimal("0.9"), (on_request, on_object)


async def test_an_image_generation_tool_inside_a_litellm_fallback_object_is_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """An object's `tools` replace the call's for its attempt (30791a7 reserves them so), but only
    their advisor / sub-agent models are held to the allowlist (_Reader.members): on a gateway's
    /v1/responses, in an environment allowing *-mini and gpt-image-1-mini (blocked otherwise), an
    image_generation tool naming gpt-image-1 on the request is refused 403, while the same tool in
    fallbacks [{"model": "gpt-4o-mini", "tools": [that tool]}] goes upstream untouched (no
    response: let through) and gpt-image-1 runs unchecked when the first attempt fails."""
    meter._apply(
        parse_policies(
            LITELLM_GATEWAY + "environments:\n  development:\n    models: "
            '{allow: ["*-mini", "gpt-image-1-mini"], on_disallowed: block}\n'
        )
    )
    tool = {"type": "image_generation", "model": "gpt-image-1"}
    top = test_meter.make_flow(GATEWAY_RESPONSES, {"model": "gpt-4o-mini", "input": "draw", "tools": [tool]})
    await test_meter.run_request(meter, top)
    assert top.response is not None and top.response.status_code == 403  # the baseline
    nested = test_meter.make_flow(
        GATEWAY_RESPONSES,
        {"model": "gpt-4o-mini", "input": "draw", "fallbacks": [{"model": "gpt-4o-mini", "tools": [tool]}]},
    )
    await test_meter.run_request(meter, nested)
    assert nested.response is not None and nested.response.status_code == 403


async def test_a_litellm_fallback_object_clearing_max_tokens_is_reserved_uncapped(meter: Meter) -> None:
    """Low severity. An object's `"max_tokens": null` is copied over the request's (LiteLLM's
    kwargs.update), so its attempt runs with no cap, as a request without max_tokens (reserved at
    the model's usual output, ~0.0100 USD for gpt-4o here); _own reads a cap only when it is a
    positive int, so the hop keeps the request's 100 and reserves ~0.0011 (9x short)."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    uncapped = await test_meter.reserved_for(meter, GATEWAY_CHAT, {"model": "gpt-4o", "messages": MESSAGES})
    cleared = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": MESSAGES,
            "fallbacks": [{"model": "gpt-4o", "max_tokens": None}],
        },
    )
    assert cleared >= uncapped * Decimal("0.9"), (uncapped, cleared)
