"""OpenRouter's ``openrouter:fusion`` server tool: a panel of models and a judge, within the call.

OpenRouter's docs (guides/features/server-tools/fusion; the SDKs' FusionServerToolConfig): when the
executor invokes the tool, every model of ``parameters.analysis_models`` (1 to 8) answers the
prompt in parallel, then the judge, ``parameters.model`` (unset: the model handling the request),
compares their answers; ``max_completion_tokens`` caps each inner call; the call is billed as the
sum of those completions. Before, the tool was not read: in an environment allowing only
``*-mini``, a panel naming ``openai/gpt-4o`` went upstream, and nothing was reserved for it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import advisors
from tests import test_meter
from tests.test_meter import make_flow, run_request, sent_body

CHAT = "https://openrouter.ai/api/v1/chat/completions"
RESPONSES = "https://openrouter.ai/api/v1/responses"
MINI_ONLY = 'environments:\n  development:\n    models: {allow: ["*-mini"], on_disallowed: block}\n'
MINI_DOWNGRADE = (
    "environments:\n  development:\n    models:\n      allow: ['*-mini']\n"
    "      downgrade: {gpt-4o: gpt-4o-mini}\n"
)
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
MINI = "openai/gpt-4o-mini"


def fusion(**parameters: object) -> dict:
    return {"type": "openrouter:fusion", "parameters": parameters}


def chat(*tools: dict, model: str = MINI) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "tools": list(tools)}


async def refusal(meter: Meter, url: str, body: dict) -> bytes:
    flow = make_flow(url, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    return flow.response.content or b""


@pytest.mark.parametrize(
    "tool",
    [
        fusion(analysis_models=[MINI, "openai/gpt-4o"], model=MINI),  # a panel model
        fusion(analysis_models=[MINI], model="anthropic/claude-opus-4.6"),  # the judge
    ],
)
async def test_a_disallowed_panel_model_or_judge_is_refused(meter: Meter, tool: dict) -> None:
    meter._apply(parse_policies(MINI_ONLY))
    message = await refusal(meter, CHAT, chat(tool))
    assert b"openai/gpt-4o " in message or b"anthropic/claude-opus-4.6" in message


async def test_on_the_responses_api_too(meter: Meter) -> None:
    meter._apply(parse_policies(MINI_ONLY))
    body = {"model": MINI, "input": "hi", "tools": [fusion(analysis_models=["openai/gpt-4o"])]}
    assert b"openai/gpt-4o" in await refusal(meter, RESPONSES, body)


async def test_an_allowed_panel_and_judge_pass_unchanged(meter: Meter) -> None:
    meter._apply(parse_policies(MINI_ONLY))
    tool = fusion(analysis_models=[MINI, "google/gemini-2.5-flash-lite-mini"], model=MINI)
    flow = make_flow(CHAT, chat(tool))
    await run_request(meter, flow)
    assert flow.response is None and sent_body(flow)["tools"] == [tool]


async def test_a_tool_naming_no_panel_is_refused_where_models_are_restricted(meter: Meter) -> None:
    """Without analysis_models OpenRouter runs its default panel, which the request does not name."""
    meter._apply(parse_policies(MINI_ONLY))
    message = await refusal(meter, CHAT, chat({"type": "openrouter:fusion"}))
    assert b"names no panel" in message and b"analysis_models" in message
    preset = fusion(analysis_models=[MINI], preset="general-high")  # the preset's judge
    assert b"names no judge" in await refusal(meter, CHAT, chat(preset))


async def test_a_disallowed_panel_model_is_downgraded_in_its_place(meter: Meter) -> None:
    meter._apply(parse_policies(MINI_DOWNGRADE))
    tool = fusion(analysis_models=[MINI, "openai/gpt-4o"], model=MINI, max_tool_calls=4)
    flow = make_flow(CHAT, chat(tool))
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow)["tools"] == [fusion(analysis_models=[MINI, MINI], model=MINI, max_tool_calls=4)]


async def test_the_judge_defaults_to_the_requests_model(meter: Meter) -> None:
    """Unset, the judge is the model handling the request: downgraded with it (written in)."""
    meter._apply(parse_policies(MINI_DOWNGRADE))
    flow = make_flow(CHAT, chat(fusion(analysis_models=[MINI]), model="openai/gpt-4o"))
    await run_request(meter, flow)
    sent = sent_body(flow)
    assert sent["model"] == MINI and sent["tools"] == [fusion(analysis_models=[MINI], model=MINI)]


async def test_a_fusion_tool_inside_a_subagents_tools_is_held_too(meter: Meter) -> None:
    meter._apply(parse_policies(MINI_ONLY))
    inner = fusion(analysis_models=["openai/gpt-4o"])
    worker = {"type": "openrouter:subagent", "parameters": {"model": MINI, "tools": [inner]}}
    assert b"openai/gpt-4o" in await refusal(meter, CHAT, chat(worker))


async def test_every_panel_model_and_the_judge_are_reserved(meter: Meter) -> None:
    """All of them run at each invocation (three reserved, as an advisor's consultations), each
    writing up to max_completion_tokens: 3 x 1,000 x ($10 gpt-4o + $0.60 gpt-4o-mini + $5
    claude-haiku-4.5, the judge) per 1M = $0.0468 of output at least. Before: $0 for the tool
    (a dearest-only reservation would have been $0.030)."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = chat()
    alone = await test_meter.reserved_for(meter, CHAT, body)
    tool = fusion(
        analysis_models=["openai/gpt-4o", MINI],
        model="anthropic/claude-haiku-4.5",
        max_completion_tokens=1000,
    )
    fused = await test_meter.reserved_for(meter, CHAT, chat(tool))
    outputs = Decimal(3 * 1000) * (Decimal("10") + Decimal("0.60") + Decimal("5")) / 1_000_000
    assert outputs <= fused - alone < outputs + Decimal("0.001")  # plus their reading of the prompt


def test_the_members_are_read_with_their_places() -> None:
    body = chat(fusion(analysis_models=["a/x", "b/y"], model="c/z", max_completion_tokens=500))
    found = advisors.advisor_tools(body, openrouter=True)
    assert [(t.model, t.profile, t.max_tokens, t.fusion) for t in found.tools] == [
        ("a/x", 0, 500, True),
        ("b/y", 1, 500, True),
        ("c/z", None, 500, True),
    ]
    assert len(advisors.advisors_by_tool(found)) == 3  # each reserved, not the dearest alone
    assert advisors.advisor_tools(body).tools == ()  # Anthropic's hosts do not run it


async def test_the_fusion_plugin_is_refused_where_models_are_restricted(meter: Meter) -> None:
    """The plugin adds the tool (its panel and judge OpenRouter's defaults unless written). Before:
    let through, the panel unchecked."""
    meter._apply(parse_policies(MINI_ONLY))
    plugin = {"id": "fusion", "analysis_models": ["openai/gpt-4o"], "model": MINI}
    body = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "plugins": [plugin]}
    message = await refusal(meter, CHAT, body)
    assert b"fusion plugin" in message and b"openrouter:fusion tool" in message
    other = {**body, "plugins": [{"id": "web"}]}  # another plugin: no change
    flow = make_flow(CHAT, other)
    await run_request(meter, flow)
    assert flow.response is None


async def test_the_fusion_router_as_the_model_says_what_to_do(meter: Meter) -> None:
    meter._apply(parse_policies(MINI_ONLY))
    body = {"model": "openrouter/fusion", "messages": [{"role": "user", "content": "hi"}]}
    assert b"openrouter:fusion tool naming its panel and judge" in await refusal(meter, CHAT, body)
