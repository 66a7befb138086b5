"""Review round 11: tests for 2e9d594 (a LiteLLM fallback object read as a request of its own,
`n` joining its hop's caps) and 916ef8f (a non-Anthropic -latest downgrade target refused on
OpenRouter/Perplexity); each failed before its fix, the two about a sub-agent inside a fallback
object (reserved at the hop's cap, not on top of it at its own) included."""

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


def test_openais_chatgpt_4o_latest_is_still_a_downgrade_target_on_openrouter() -> None:
    """916ef8f refuses every non-Anthropic `-latest` target on OpenRouter, saying OpenRouter lists
    no -latest id; but it lists openai/chatgpt-4o-latest (OpenAI's own API id chatgpt-4o-latest
    under its vendor). With downgrade {"gpt-4o*": chatgpt-4o-latest}, a call for openai/gpt-4o on
    OpenRouter was rewritten to openai/chatgpt-4o-latest and answered before; now the user's valid
    call is refused 403 by the proxy as a target it cannot write."""
    from addon.model_rules import in_form_of

    assert in_form_of("openai/gpt-4o", "chatgpt-4o-latest", "openrouter") == "openai/chatgpt-4o-latest"


async def test_a_litellm_fallback_objects_n_written_as_a_string_is_reserved_as_the_requests_is(
    meter: Meter,
) -> None:
    """The request's own `n` that is no integer ("8", 8.0: a server may read them as 8) is reserved
    at MAX_CHOICES, but a fallback object's `n` is read only when it is an int, so fallbacks
    [{"model": "gpt-4o", "n": "8"}] is reserved as one choice: under a budget cap each failed
    mini call overshoots it by the choices nobody reserved (the same object with n 8 reserves
    ~8x)."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    messages = [{"role": "user", "content": "hi"}]

    def body(n: object) -> dict[str, object]:
        return {
            "model": "gpt-4o-mini",
            "max_tokens": 4000,
            "messages": messages,
            "fallbacks": [{"model": "gpt-4o", "n": n}],
        }

    as_int = await test_meter.reserved_for(meter, GATEWAY_CHAT, body(8))
    for odd in ("8", 8.0):
        as_odd = await test_meter.reserved_for(meter, GATEWAY_CHAT, body(odd))
        assert as_odd >= as_int * Decimal("0.9"), (odd, as_int, as_odd)


async def test_a_litellm_fallback_objects_own_best_of_is_reserved(meter: Meter) -> None:
    """2e9d594 adds `n` to the members an object sets for its hop (CAP_FIELDS), but not
    `best_of`, which the request's reservation counts beside `n` (a legacy completion writes
    best_of candidates server-side, each billed): on a gateway's /v1/completions, babbage-002 with
    fallbacks [{"model": "gpt-3.5-turbo-instruct", "best_of": 8}] is reserved as one candidate
    (~0.002 USD), while gpt-3.5-turbo-instruct with best_of 8 on the request reserves ~0.016, so
    under a budget cap each failed call overshoots by 7 candidates nobody reserved."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    url = "https://llm.internal.example/v1/completions"
    on_request = await test_meter.reserved_for(
        meter, url, {"model": "gpt-3.5-turbo-instruct", "max_tokens": 1000, "prompt": "hi", "best_of": 8}
    )
    on_object = await test_meter.reserved_for(
        meter,
        url,
        {
            "model": "babbage-002",
            "max_tokens": 1000,
            "prompt": "hi",
            "fallbacks": [{"model": "gpt-3.5-turbo-instruct", "best_of": 8}],
        },
    )
    assert on_object >= on_request * Decimal("0.9"), (on_request, on_object)


async def test_a_sub_agent_inside_a_litellm_fallback_object_is_reserved_on_top_of_its_hop(
    meter: Meter,
) -> None:
    """An object's members replace the call's for its attempt, its `tools` too, so its hop runs
    the object's model and the sub-agent's consultations, as a request with that tool does (the
    same gpt-4o call with an openrouter:subagent gpt-4o tool on the request reserves both, ~0.070
    USD); but fallbacks [{"model": "gpt-4o", "tools": [subagent gpt-4o]}] is reserved at the
    dearer of the two only (~0.040, as gpt-4o alone), so under a budget cap each failed mini call
    overshoots by the sub-agent's share nobody reserved."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    messages = [{"role": "user", "content": "hi"}]
    tool = {"type": "openrouter:subagent", "parameters": {"model": "gpt-4o"}}
    on_request = await test_meter.reserved_for(
        meter, GATEWAY_CHAT, {"model": "gpt-4o", "max_tokens": 4000, "messages": messages, "tools": [tool]}
    )
    on_object = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {
            "model": "gpt-4o-mini",
            "max_tokens": 4000,
            "messages": messages,
            "fallbacks": [{"model": "gpt-4o", "tools": [tool]}],
        },
    )
    assert on_object >= on_request * Decimal("0.9"), (on_request, on_object)


async def test_a_sub_agent_inside_a_litellm_fallback_object_is_reserved_at_its_own_output_cap(
    meter: Meter,
) -> None:
    """A sub-agent's consultations write up to its own parameters.max_completion_tokens, not the
    call's max_tokens: on the request, gpt-4o-mini (max_tokens 100) with an openrouter:subagent
    gpt-4o tool capped at 16000 reserves ~0.48 USD; the same tool in a LiteLLM fallback object
    (fallbacks [{"model": "gpt-4o-mini", "tools": [that tool]}]) is reserved as gpt-4o writing
    the hop's 100 tokens (~0.001), so when the first attempt fails the sub-agent runs ~400x past
    what was reserved and a budget hard cap is overshot."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    messages = [{"role": "user", "content": "hi"}]
    tool = {"type": "openrouter:subagent", "parameters": {"model": "gpt-4o", "max_completion_tokens": 16000}}
    on_request = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {"model": "gpt-4o-mini", "max_tokens": 100, "messages": messages, "tools": [tool]},
    )
    on_object = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": messages,
            "fallbacks": [{"model": "gpt-4o-mini", "tools": [tool]}],
        },
    )
    assert on_object >= on_request * Decimal("0.5"), (on_request, on_object)
