"""Review round 13: failing tests for defects confirmed in dba2aae, 7589a67 and 91540c4 (no fix).

Each test states what the user sees, and the expected and actual figures.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from tests import test_meter
from tests.test_meter import make_flow, run_request

CHAT = "https://openrouter.ai/api/v1/chat/completions"
GATEWAY_CHAT = "https://llm.internal.example/v1/chat/completions"
GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai,'
    " pricing_provider: openrouter}\n"
)
HAIKU_ONLY = 'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
ONE_DOLLAR = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"
HAIKU = "anthropic/claude-haiku-4.5"
OPUS = "anthropic/claude-opus-4.6"  # $5 / $25 per 1M on OpenRouter
PROMPT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "model",
    [f"{OPUS}@preset/email-copywriter", "@preset/email-copywriter", "openrouter/fusion"],
)
async def test_twenty_simultaneous_preset_calls_overshoot_by_at_most_one_call(
    meter: Meter, model: str
) -> None:
    """Unrestricted (a budget, no allowlist), a preset or the Fusion router as the model reserves
    $0: the reservation prices the model id as written, which no price list knows, while the row is
    later priced at the model the response names (so no 'unpriced model escaping a budget' warning
    says so either). $0.05 left of $1, each call may write 4,000 output tokens (of claude-opus-4.6
    through anthropic/claude-opus-4.6@preset/..., $0.10; more through a panel): expected at most 1
    of 20 let through; actual 20 (up to ~$2 over a $1 budget). Even the model named before @preset/
    is not used: anthropic/claude-opus-4.6@preset/x reserves $0, anthropic/claude-opus-4.6 $0.10013."""
    meter._apply(parse_policies(ONE_DOLLAR))
    meter.enforcer.budgets.record((Scope("environment", "development"),), Decimal("0.95"), datetime.now(UTC))
    body = {"model": model, "max_tokens": 4000, "messages": PROMPT}
    flows = [make_flow(CHAT, body) for _ in range(20)]
    for flow in flows:
        flow.request.timestamp_start = datetime.now(UTC).timestamp()
        await run_request(meter, flow)
    allowed = sum(1 for flow in flows if flow.response is None)
    assert allowed <= 1, (
        f"{allowed} of 20 {model} calls let through with $0.05 left, each writing up to 4,000 tokens"
    )


@pytest.mark.parametrize(
    "own",
    [{"preset": "email-copywriter"}, {"plugins": [{"id": "fusion", "analysis_models": ["openai/gpt-4o"]}]}],
    ids=["preset", "fusion-plugin"],
)
async def test_a_gateway_fallback_objects_preset_or_fusion_plugin_is_checked(meter: Meter, own: dict) -> None:
    """A providers: gateway priced as OpenRouter (LiteLLM) copies a fallback object's members over
    the request for its attempt (fallback_lists.litellm_fallbacks reads the object's models list
    and tools for that reason), so {"fallbacks": [{"model": haiku, "preset": "email-copywriter"}]}
    sends the preset to OpenRouter on the fallback attempt, its models and tools unchecked. The
    same members at the top level are refused 403 (with_preset / with_fusion_plugin read only the
    request's own body). Where only claude-haiku-* is allowed: expected 403, actual let through."""
    meter._apply(parse_policies(GATEWAY + HAIKU_ONLY))
    top = make_flow(GATEWAY_CHAT, {"model": HAIKU, "messages": PROMPT, **own})
    await run_request(meter, top)
    assert top.response is not None and top.response.status_code == 403  # holds today
    body = {"model": HAIKU, "messages": PROMPT, "fallbacks": [{"model": HAIKU, **own}]}
    flow = make_flow(GATEWAY_CHAT, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403, json.dumps(body)


async def test_an_unrestricted_fusion_tools_known_judge_is_reserved(meter: Meter) -> None:
    """Where models are not restricted (a budget only), a fusion tool naming no panel goes
    through (fusion_members' error is acted on only where models are restricted), and nothing of
    it is reserved. Yet its judge is known: unset, the request's model, openai/gpt-4o, writing up
    to 4,000 tokens at each of the 3 reserved invocations = $0.12 ($10 per 1M); and OpenRouter
    documents the default panel (the Quality preset: ~anthropic/claude-opus-latest,
    ~openai/gpt-latest, ~google/gemini-pro-latest, which genai-prices prices). Expected >= $0.12
    more than the same call without the tool; actual +$0.0000575 (the tool's JSON's tokens).
    Where models are restricted this tool is refused."""
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 100, period: day}\n"))
    body = {"model": "openai/gpt-4o", "max_tokens": 1000, "messages": PROMPT}
    alone = await test_meter.reserved_for(meter, CHAT, body)
    tool = {"type": "openrouter:fusion", "parameters": {"max_completion_tokens": 4000}}
    fused = await test_meter.reserved_for(meter, CHAT, {**body, "tools": [tool]})
    judge = Decimal(3 * 4000) * Decimal(10) / 1_000_000  # $0.12
    assert fused - alone >= judge, f"reserved {fused - alone} for the tool, expected >= {judge}"


ANTHROPIC_GATEWAY = (
    'providers:\n  orgw: {url: "https://llm.internal.example", api: anthropic,'
    " pricing_provider: openrouter}\n"
)


@pytest.mark.parametrize(
    "own",
    [{"preset": "email-copywriter"}, {"plugins": [{"id": "fusion", "analysis_models": ["openai/gpt-4o"]}]}],
    ids=["preset", "fusion-plugin"],
)
async def test_an_anthropic_api_gateway_priced_as_openrouter_checks_a_preset_and_the_fusion_plugin(
    meter: Meter, own: dict
) -> None:
    """A providers: gateway on the Anthropic API priced as OpenRouter (in front of OpenRouter's
    /api/v1/messages) is read as OpenRouter there: its `models` list and an openrouter:fusion
    tool naming openai/gpt-4o are refused 403. But its fallback_models is anthropic_api's, not
    with_preset / with_fusion_plugin, so a `preset` field or the fusion plugin beside an allowed
    model goes upstream, the preset's models and the plugin's panel unchecked; the same body sent
    to openrouter.ai/api/v1/messages is refused. Where only claude-haiku-* is allowed: expected
    403, actual let through."""
    meter._apply(parse_policies(ANTHROPIC_GATEWAY + HAIKU_ONLY))
    body = {"model": HAIKU, "max_tokens": 100, "messages": PROMPT, **own}
    direct = make_flow("https://openrouter.ai/api/v1/messages", body)
    await run_request(meter, direct)
    assert direct.response is not None and direct.response.status_code == 403  # holds today
    flow = make_flow("https://llm.internal.example/v1/messages", body, headers={"x-api-key": "k" * 40})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403, json.dumps(body)


@pytest.mark.parametrize("rule", ["anthropic/claude-haiku-*", "anthropic/*"])
async def test_a_preset_suffix_is_refused_under_a_rule_written_with_a_prefix(meter: Meter, rule: str) -> None:
    """README (How model ids match): where models are restricted, a preset as the model is refused
    unless a rule names it as written ("@preset/slug"). Under a rule written with OpenRouter's
    prefix, which README documents (anthropic/claude-haiku-*), the glob's * runs over the suffix:
    anthropic/claude-haiku-4.5@preset/email-copywriter matches it and goes upstream, the preset's
    fallback models and tools (any vendor's) unchecked; under claude-haiku-* the same id is
    refused. Expected 403 saying why (the preset); actual let through."""
    policy = f'environments:\n  development:\n    models: {{allow: ["{rule}"], on_disallowed: block}}\n'
    meter._apply(parse_policies(policy))
    flow = make_flow(CHAT, {"model": f"{HAIKU}@preset/email-copywriter", "messages": PROMPT})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "OpenRouter preset email-copywriter" in json.loads(flow.response.text or "{}")["error"]["message"]
