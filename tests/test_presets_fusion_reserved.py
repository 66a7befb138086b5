"""OpenRouter presets and Fusion under budgets and prefixed rules (review round 13's findings).

Beside tests/test_review_round13.py: the figures each reservation now has, the forms the reviewer
named but did not test (a preset without vendor, the fusion plugin's and a preset-judged tool's
reservation, a preset in an Anthropic-API gateway's chain object), and what still matches.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from addon.meter import Meter
from addon.model_rules import FUSION_DEFAULT_JUDGE, FUSION_DEFAULT_PANEL, matches_any, model_matches
from addon.policies import parse_policies
from addon.pricing import openrouter_ceiling_models
from addon.providers import advisors, fallback_lists
from tests import test_meter
from tests.test_meter import make_flow, run_request

CHAT = "https://openrouter.ai/api/v1/chat/completions"
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
PROMPT = [{"role": "user", "content": "hi"}]
PRESET = "@preset/email-copywriter"


def output_usd(meter: Meter, model: str, tokens: int) -> Decimal:
    """What ``tokens`` of output cost at ``model``'s OpenRouter list price (no input)."""
    return meter.pricer.estimate("openrouter", model, 0, tokens)


async def test_a_model_before_a_preset_reserves_as_that_model(meter: Meter) -> None:
    """anthropic/claude-opus-4.6@preset/x reserved $0 (no price list names the id); now exactly
    what anthropic/claude-opus-4.6 reserves ($25 per 1M output: 4,000 tokens $0.10, plus input)."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "anthropic/claude-opus-4.6", "max_tokens": 4000, "messages": PROMPT}
    plain = await test_meter.reserved_for(meter, CHAT, body)
    preset = await test_meter.reserved_for(meter, CHAT, {**body, "model": body["model"] + PRESET})
    assert plain >= Decimal("0.10")
    # Up to the bytes of the longer name (24 of them: 6 tokens of input at $5 per 1M).
    assert plain <= preset <= plain + Decimal(6 * 5) / 1_000_000


async def test_a_bare_preset_reserves_the_dearest_model_openrouter_lists(meter: Meter) -> None:
    """@preset/x names no model here: it reserves as the dearest model of OpenRouter's price list
    (openai/o1-pro, $600 per 1M output: 4,000 tokens $2.40), a ceiling; before, $0."""
    meter._apply(parse_policies(BUDGET_ONLY))
    assert "openai/o1-pro" in openrouter_ceiling_models()
    body = {"model": PRESET, "max_tokens": 4000, "messages": PROMPT}
    reserved = await test_meter.reserved_for(meter, CHAT, body)
    assert reserved >= Decimal("2.40")
    assert reserved >= max(output_usd(meter, one, 4000) for one in openrouter_ceiling_models())


async def test_the_fusion_router_reserves_its_default_panel_and_judge(meter: Meter) -> None:
    """openrouter/fusion reserved $0; now its default judge's answer plus, at each of 3
    invocations, the default Quality panel (~anthropic/claude-opus-latest, ~openai/gpt-latest,
    ~google/gemini-pro-latest) and the judge: 4,000 output tokens each."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "openrouter/fusion", "max_tokens": 4000, "messages": PROMPT}
    reserved = await test_meter.reserved_for(meter, CHAT, body)
    judge = output_usd(meter, FUSION_DEFAULT_JUDGE, 4000)
    panel = sum((output_usd(meter, one, 4000) for one in FUSION_DEFAULT_PANEL), Decimal(0))
    assert judge > 0 and panel > judge  # genai-prices prices the aliases
    assert reserved >= judge + 3 * (panel + judge)


async def test_the_fusion_plugin_reserves_its_panel_and_judge(meter: Meter) -> None:
    """Unrestricted, the fusion plugin goes through (refused only where models are restricted) and
    reserved nothing of its panel or judge; now each, at each of 3 invocations, writing at least
    1,000 tokens (RESERVED_OUTPUT_TOKENS: the plugin sets no cap): openai/gpt-4o as panel and judge,
    2 x 3 x 1,000 x $10 per 1M = $0.06 more than the call alone. Without a panel or judge, the
    default panel and judge: 3 x 1,000 tokens of each of the 3 aliases and the judge."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 100, "messages": PROMPT}
    alone = await test_meter.reserved_for(meter, CHAT, body)
    plugin = {"id": "fusion", "analysis_models": ["openai/gpt-4o"], "model": "openai/gpt-4o"}
    named = await test_meter.reserved_for(meter, CHAT, {**body, "plugins": [plugin]})
    assert named - alone >= Decimal("0.06")
    defaults = await test_meter.reserved_for(meter, CHAT, {**body, "plugins": [{"id": "fusion"}]})
    members = (*FUSION_DEFAULT_PANEL, FUSION_DEFAULT_JUDGE)
    assert defaults - alone >= 3 * sum((output_usd(meter, one, 1000) for one in members), Decimal(0))


async def test_a_fusion_tool_judged_by_its_preset_reserves_the_default_judge(meter: Meter) -> None:
    """A fusion tool with a panel and a preset but no model runs the preset's judge: its panel was
    reserved, the judge not; now the default judge too (3 x 4,000 tokens of
    ~anthropic/claude-opus-latest)."""
    meter._apply(parse_policies(BUDGET_ONLY))
    params = {"analysis_models": ["openai/gpt-4o-mini"], "max_completion_tokens": 4000}
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 100, "messages": PROMPT}
    panel_only = {
        **body,
        "tools": [{"type": "openrouter:fusion", "parameters": {**params, "model": "openai/gpt-4o-mini"}}],
    }
    preset = {
        **body,
        "tools": [{"type": "openrouter:fusion", "parameters": {**params, "preset": "general-high"}}],
    }
    without = await test_meter.reserved_for(meter, CHAT, panel_only)
    with_preset = await test_meter.reserved_for(meter, CHAT, preset)
    judge = output_usd(meter, FUSION_DEFAULT_JUDGE, 4000) - output_usd(meter, "openai/gpt-4o-mini", 4000)
    assert with_preset - without >= 3 * judge - Decimal("0.0001")  # the bytes of the two tools differ


def test_reserved_only_members_are_never_checked_or_rewritten() -> None:
    """The default panel is reserved (advisors_by_tool) but is no advisor of the request's: the
    allowlist check reads ``tools``, and the refusal still says why (no panel)."""
    body = {"model": "openai/gpt-4o", "tools": [{"type": "openrouter:fusion", "parameters": {}}]}
    found = advisors.advisor_tools(body, openrouter=True)
    assert found.tools == () and found.error is not None and "names no panel" in found.error
    assert [t.model for t in found.reserved_only] == [*FUSION_DEFAULT_PANEL, "openai/gpt-4o"]
    assert sum(len(v) for v in advisors.advisors_by_tool(found).values()) == 4


@pytest.mark.parametrize(
    ("rule", "model", "matches"),
    [
        ("claude-haiku-*", "claude-haiku-4.5@preset/x", False),  # the reviewer saw it pass
        ("claude-haiku-*", "anthropic/claude-haiku-4.5@preset/x", False),
        ("anthropic/claude-haiku-*", "anthropic/claude-haiku-4.5@preset/x", False),
        ("anthropic/*", "anthropic/claude-haiku-4.5@preset/x", False),
        ("*x", "claude-haiku-4.5@preset/x", False),
        ("anthropic/claude-haiku-4.5@preset/x", "anthropic/claude-haiku-4.5@preset/x", True),
        ("@preset/email-copywriter", "@preset/email-copywriter", True),
        ("@preset/*", "@preset/email-copywriter", True),  # a rule naming presets
        ("anthropic/claude-haiku-4.5", "anthropic/claude-haiku-4.5", True),  # unchanged
        ("claude-haiku-*", "anthropic/claude-haiku-4.5", True),  # unchanged
    ],
)
def test_a_preset_matches_only_a_rule_naming_presets(rule: str, model: str, matches: bool) -> None:
    assert model_matches(rule, model) is matches
    assert matches_any([rule], model) is matches


async def test_a_preset_without_vendor_is_refused_under_a_plain_glob(meter: Meter) -> None:
    """claude-haiku-4.5@preset/x matched claude-haiku-* as written and went upstream; now refused,
    saying why."""
    policy = 'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
    meter._apply(parse_policies(policy))
    flow = make_flow(CHAT, {"model": "claude-haiku-4.5@preset/email-copywriter", "messages": PROMPT})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "OpenRouter preset email-copywriter" in json.loads(flow.response.text or "{}")["error"]["message"]


async def test_a_preset_in_an_anthropic_gateways_chain_object_is_checked(meter: Meter) -> None:
    """On an api: anthropic gateway priced as OpenRouter, a `fallbacks` chain object carrying a
    preset (its members copied over the call by a LiteLLM router in front) went upstream unchecked;
    now refused where only claude-haiku-* is allowed."""
    policy = (
        'providers:\n  orgw: {url: "https://llm.internal.example", api: anthropic,'
        " pricing_provider: openrouter}\n"
        'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
    )
    meter._apply(parse_policies(policy))
    haiku = "anthropic/claude-haiku-4.5"
    body = {"model": haiku, "max_tokens": 100, "messages": PROMPT, "fallbacks": [{"model": haiku}]}
    url = "https://llm.internal.example/v1/messages"
    plain = make_flow(url, body, headers={"x-api-key": "k" * 40})
    await run_request(meter, plain)
    assert plain.response is None  # allowed without the preset
    body["fallbacks"] = [{"model": haiku, "preset": "email-copywriter"}]
    flow = make_flow(url, body, headers={"x-api-key": "k" * 40})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403, json.dumps(body)


def test_a_preset_keeps_the_lists_other_readings() -> None:
    """with_preset kept the models, places and caps but dropped ``tool_objects`` (where fallback
    objects set their own tools): now only the error is added. (A preset field that reads as a slug is
    folded into the model instead, m@preset/slug: this one, with an @, cannot be.)"""
    body = {
        "model": "openai/gpt-4o-mini",
        "preset": "x@y",
        "fallbacks": [{"model": "openai/gpt-4o-mini", "tools": [{"type": "image_generation"}]}],
    }
    found = fallback_lists.gateway_fallbacks(body)
    assert found is not None and found.error is not None and "preset" in found.error
    assert found.tool_objects == (("fallbacks", 0),)


async def test_a_gateway_fallback_objects_fusion_plugin_is_reserved_for_its_hop(meter: Meter) -> None:
    """Unrestricted, a LiteLLM gateway's fallback object carrying the fusion plugin (copied over
    the call for its attempt) reserved only its model; now its hop also reserves the plugin's panel
    and judge (openai/gpt-4o each, 3 invocations of at least 1,000 tokens: $0.06 more)."""
    gateway = (
        'providers:\n  litellm: {url: "https://llm.internal.example", api: openai,'
        " pricing_provider: openrouter}\n"
    )
    meter._apply(parse_policies(gateway + BUDGET_ONLY))
    mini = "openai/gpt-4o-mini"
    body = {"model": mini, "max_tokens": 100, "messages": PROMPT, "fallbacks": [{"model": mini}]}
    url = "https://llm.internal.example/v1/chat/completions"
    alone = await test_meter.reserved_for(meter, url, body)
    plugin = {"id": "fusion", "analysis_models": ["openai/gpt-4o"], "model": "openai/gpt-4o"}
    fused = await test_meter.reserved_for(
        meter, url, {**body, "fallbacks": [{"model": mini, "plugins": [plugin]}]}
    )
    assert fused - alone >= Decimal("0.06")


async def test_a_price_entry_for_a_preset_wins_over_its_stand_in(meter: Meter) -> None:
    """A `prices:` entry written for the preset's id prices its reservation (not the ceiling)."""
    policy = BUDGET_ONLY + 'prices:\n  "openrouter/@preset/*": {input: 1, output: 2}\n'
    meter._apply(parse_policies(policy))
    body = {"model": PRESET, "max_tokens": 4000, "messages": PROMPT}
    reserved = await test_meter.reserved_for(meter, CHAT, body)
    assert Decimal("0.008") <= reserved < Decimal("0.0081")  # 4,000 x $2 per 1M, and the prompt's bytes
