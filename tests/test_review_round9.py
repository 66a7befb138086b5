"""Review round 9: failing tests for 7721f82 (LiteLLM client-side fallbacks on a providers:
gateway, nested advisors, batch reservations by model, OpenRouter variants and aliases)."""

from __future__ import annotations

import json
from decimal import Decimal

from addon.meter import Meter
from addon.policies import parse_policies
from tests import test_meter

LITELLM_GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai, pricing_provider: openai}\n'
)
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
GATEWAY_CHAT = "https://llm.internal.example/v1/chat/completions"


async def test_a_litellm_fallback_objects_own_output_cap_is_reserved(meter: Meter) -> None:
    """LiteLLM's client-side fallback objects carry the parameters the fallback runs with
    ({"model": "gpt-4o", "max_tokens": 16000, ...}: the object's members override the request's),
    and 7721f82 keeps those members when it checks the object. But the call is reserved with the
    request's own cap: gpt-4o-mini with max_tokens 1 and fallbacks [{"model": "gpt-4o",
    "max_tokens": 16000}] reserves $0.0001, where the same gpt-4o fallback with the request asking
    for 16,000 tokens reserves $0.16, so under a budget cap each rate-limited call can overshoot
    it by ~$0.16 (gpt-4o writes 16,000 tokens nobody reserved)."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    messages = [{"role": "user", "content": "hi"}]
    capped_request = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {"model": "gpt-4o-mini", "max_tokens": 16000, "messages": messages, "fallbacks": ["gpt-4o"]},
    )
    capped_fallback = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {
            "model": "gpt-4o-mini",
            "max_tokens": 1,
            "messages": messages,
            "fallbacks": [{"model": "gpt-4o", "max_tokens": 16000}],
        },
    )
    assert capped_fallback >= capped_request * Decimal("0.9"), (capped_request, capped_fallback)


MINI_ONLY = 'environments:\n  development:\n    models: {allow: ["*-mini"], on_disallowed: block}\n'


async def test_a_litellm_gateways_context_window_and_content_policy_fallbacks_are_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """7721f82 reads LiteLLM's client-side `fallbacks`, but LiteLLM's router reads two more
    fallback lists from the same request body (router.py, async_function_with_fallbacks:
    kwargs.get("context_window_fallbacks"), kwargs.get("content_policy_fallbacks"), each
    [{"gpt-4o-mini": ["gpt-4o"]}]). In a *-mini-only environment (blocked), gpt-4o-mini with
    context_window_fallbacks naming gpt-4o goes upstream untouched: a long prompt that overflows
    mini's window runs on gpt-4o, unchecked and unreserved, while the same list under `fallbacks`
    is refused 403."""
    meter._apply(parse_policies(LITELLM_GATEWAY + MINI_ONLY))
    for field in ("context_window_fallbacks", "content_policy_fallbacks"):
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            field: [{"gpt-4o-mini": ["gpt-4o"]}],
        }
        flow = test_meter.make_flow(GATEWAY_CHAT, body)
        await test_meter.run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403, field


async def test_a_litellm_router_format_fallback_list_naming_allowed_models_is_let_through(
    meter: Meter,
) -> None:
    """LiteLLM's router reads a request's `fallbacks` in its own format too, a list of
    {model group: [fallback groups]} mappings (get_fallback_model_group: [{"gpt-4o-mini":
    ["gpt-4o-mini-2024-07-18"]}], {"*": [...]} for any group), the format of its config's
    router_settings.fallbacks. 7721f82 reads only names and {"model": ...} objects: such a
    mapping "names no model", so in a *-mini-only environment a call whose fallbacks name only
    allowed models is refused 403, breaking valid traffic that went through before."""
    meter._apply(parse_policies(LITELLM_GATEWAY + MINI_ONLY))
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "fallbacks": [{"gpt-4o-mini": ["gpt-4o-mini-2024-07-18"]}],
    }
    flow = test_meter.make_flow(GATEWAY_CHAT, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is None, flow.response and flow.response.get_text()


def test_an_openrouter_target_from_a_dated_anthropic_snapshot_is_allowed_by_that_snapshot() -> None:
    """7721f82 makes OpenRouter's undated Anthropic ids match allowlists naming Anthropic's
    -latest / -0 aliases "so the rewritten target is allowed", and the README documents a dated
    target (claude-haiku-4-5-20251001) as sent to OpenRouter as anthropic/claude-haiku-4.5. But an
    allowlist naming the snapshot itself, with the same snapshot as the downgrade target (the file
    is accepted: the target is allowed), does not allow that rewritten id: on OpenRouter,
    anthropic/claude-opus-4.1 is refused 403 instead of downgraded (on Anthropic's own API it is
    downgraded), although anthropic/claude-haiku-4.5 is the one haiku 4.5 snapshot."""
    rules = (
        parse_policies(
            "environments:\n  development:\n    models:\n"
            "      allow: [claude-haiku-4-5-20251001]\n"
            '      downgrade: {"claude-opus-*": claude-haiku-4-5-20251001}\n'
        )
        .environment("development")
        .models
    )
    assert rules.resolve("claude-opus-4-1", "anthropic") == ("downgraded", "claude-haiku-4-5-20251001")
    assert rules.resolve("anthropic/claude-opus-4.1", "openrouter") == (
        "downgraded",
        "anthropic/claude-haiku-4.5",
    )


ANTHROPIC_GATEWAY_TO_OPENROUTER = (
    "providers:\n"
    '  router: {url: "https://llm.internal.example", api: anthropic, pricing_provider: openrouter}\n'
)
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-api03-" + "a" * 40, "anthropic-version": "2023-06-01"}


async def test_a_fallback_entrys_max_tokens_on_an_anthropic_gateway_priced_as_openrouter_is_reserved(
    meter: Meter,
) -> None:
    """Regression in 7721f82: a providers: gateway with api: anthropic and pricing_provider:
    openrouter now reads `fallbacks` with gateway_fallbacks instead of Anthropic's chain reader, so
    the reservation no longer takes each entry's own max_tokens (fallback_max_tokens is read for
    Anthropic's chain only). claude-haiku-4.5 with max_tokens 1 and fallbacks [{"model":
    "anthropic/claude-opus-4.1", "max_tokens": 16000}] reserved $1.20 before this commit and
    reserves $0.00075 now: under a budget cap, each call whose haiku attempt fails lets opus write
    16,000 tokens nobody reserved (the commit message says an api: anthropic gateway still reads
    `fallbacks` as Anthropic's server-side chain)."""
    meter._apply(parse_policies(ANTHROPIC_GATEWAY_TO_OPENROUTER + BUDGET_ONLY))
    url = "https://llm.internal.example/v1/messages"
    messages = [{"role": "user", "content": "hi"}]
    fallback = {"model": "anthropic/claude-opus-4.1"}
    request_capped = await test_meter.reserved_for(
        meter,
        url,
        {
            "model": "anthropic/claude-haiku-4.5",
            "max_tokens": 16000,
            "messages": messages,
            "fallbacks": [fallback],
        },
        ANTHROPIC_HEADERS,
    )
    entry_capped = await test_meter.reserved_for(
        meter,
        url,
        {
            "model": "anthropic/claude-haiku-4.5",
            "max_tokens": 1,
            "messages": messages,
            "fallbacks": [{**fallback, "max_tokens": 16000}],
        },
        ANTHROPIC_HEADERS,
    )
    assert entry_capped >= request_capped * Decimal("0.9"), (request_capped, entry_capped)


async def test_a_kept_member_of_a_litellm_fallback_object_naming_more_fallbacks_is_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """LiteLLM runs a fallback object by copying its members over the call's parameters
    (async_completion_with_fallbacks: fallback_config.pop("model"); kwargs.update(fallback_config))
    and calling acompletion again, which reads `fallbacks` once more. 7721f82 checks an object's
    `model` and keeps every other member as it is: in a *-mini-only environment (blocked),
    fallbacks [{"model": "gpt-4o-mini", "fallbacks": ["gpt-4o"]}] goes upstream untouched, and
    gpt-4o runs when both mini attempts fail, unchecked and unreserved, while the same gpt-4o one
    level up is refused 403."""
    meter._apply(parse_policies(LITELLM_GATEWAY + MINI_ONLY))
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "fallbacks": [{"model": "gpt-4o-mini", "fallbacks": ["gpt-4o"]}],
    }
    flow = test_meter.make_flow(GATEWAY_CHAT, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


OPENROUTER_HAIKU_ONLY = (
    'environments:\n  development:\n    models: {allow: ["anthropic/claude-haiku-*"], on_disallowed: block}\n'
)
OPENROUTER_CHAT = "https://openrouter.ai/api/v1/chat/completions"


async def test_an_openrouter_subagent_worker_model_is_held_to_the_allowlist(meter: Meter) -> None:
    """OpenRouter's openrouter:subagent server tool (beta, beside openrouter:advisor) runs its
    parameters.model as a worker "billed as normal token usage on each worker model and reported on
    the parent request" (openrouter.ai/docs/guides/features/server-tools/subagent). No reader
    knows it: in a haiku-only environment (blocked), a haiku call carrying
    {"type": "openrouter:subagent", "parameters": {"model": "anthropic/claude-fable-5"}} goes
    upstream untouched and Fable runs unchecked and unreserved."""
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    tool = {"type": "openrouter:subagent", "parameters": {"model": "anthropic/claude-fable-5"}}
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = test_meter.make_flow(OPENROUTER_CHAT, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


async def test_an_advisor_nested_under_a_subagent_in_an_advisors_tools_is_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """7721f82 reads openrouter:advisor tools nested in an advisor's parameters.tools, but only
    those listed there directly: a sub-agent tool in between (openrouter:subagent, whose worker
    "can carry its own nested tools") hides the advisor it carries. In a haiku-only environment
    (blocked), advisor(haiku) > parameters.tools > subagent(haiku) > parameters.tools >
    advisor(claude-fable-5) goes upstream untouched, and Fable runs unchecked and unreserved."""
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    fable = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}
    worker = {
        "type": "openrouter:subagent",
        "parameters": {"model": "anthropic/claude-haiku-4.5", "tools": [fable]},
    }
    tool = {
        "type": "openrouter:advisor",
        "parameters": {"model": "anthropic/claude-haiku-4.5", "tools": [worker]},
    }
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = test_meter.make_flow(OPENROUTER_CHAT, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


# -- the other sides: what the fixes rewrite, reserve and still refuse ---------------------------

MINI_DOWNGRADE = (
    'environments:\n  development:\n    models: {allow: ["*-mini"], downgrade: {gpt-4o: gpt-4o-mini}}\n'
)


async def test_litellm_router_format_and_nested_fallbacks_are_downgraded_in_place(meter: Meter) -> None:
    """A disallowed model in a router-format mapping, in an object's own fallbacks, or in
    context_window_fallbacks is rewritten where it is written; the group keys and other members
    are kept."""
    meter._apply(parse_policies(LITELLM_GATEWAY + MINI_DOWNGRADE))
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "fallbacks": [
            {"gpt-4o-mini": ["gpt-4o-mini-2024-07-18", "gpt-4o"]},
            {"model": "gpt-4o", "max_tokens": 5, "fallbacks": ["gpt-4o"]},
        ],
        "context_window_fallbacks": [{"gpt-4o-mini": ["gpt-4o"]}],
    }
    flow = test_meter.make_flow(GATEWAY_CHAT, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["fallbacks"] == [
        {"gpt-4o-mini": ["gpt-4o-mini-2024-07-18", "gpt-4o-mini"]},
        {"model": "gpt-4o-mini", "max_tokens": 5, "fallbacks": ["gpt-4o-mini"]},
    ]
    assert sent["context_window_fallbacks"] == [{"gpt-4o-mini": ["gpt-4o-mini"]}]


async def test_litellm_fallbacks_nested_too_deep_or_unreadable_are_refused_where_models_are_restricted(
    meter: Meter,
) -> None:
    meter._apply(parse_policies(LITELLM_GATEWAY + MINI_ONLY))
    deep: dict = {"model": "gpt-4o-mini"}
    for _ in range(6):
        deep = {"model": "gpt-4o-mini", "fallbacks": [deep]}
    for fallbacks in ([deep], [{"gpt-4o-mini": "gpt-4o"}], [{"gpt-4o-mini": [7]}]):
        body = {"model": "gpt-4o-mini", "messages": [], "fallbacks": fallbacks}
        flow = test_meter.make_flow(GATEWAY_CHAT, body)
        await test_meter.run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403, fallbacks


async def test_an_openrouter_subagent_worker_is_downgraded_in_place_and_reserved(meter: Meter) -> None:
    """A disallowed worker is rewritten in the tool (a nested advisor under it too), and the
    worker's runs are reserved besides the call, as an advisor's consultations are."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    budget: {usd: 100, period: day}\n    models:\n"
            '      allow: ["anthropic/claude-haiku-*", "anthropic/claude-opus-*"]\n'
            '      downgrade: {"anthropic/claude-fable-*": anthropic/claude-haiku-4.5}\n'
        )
    )
    fable = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}
    worker = {
        "type": "openrouter:subagent",
        "parameters": {"model": "anthropic/claude-fable-5", "tools": [fable]},
    }
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [worker]}
    flow = test_meter.make_flow(OPENROUTER_CHAT, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["tools"][0]["parameters"]["model"] == "anthropic/claude-haiku-4.5"
    assert sent["tools"][0]["parameters"]["tools"][0]["parameters"]["model"] == "anthropic/claude-haiku-4.5"
    plain = {"model": "anthropic/claude-haiku-4.5", "max_tokens": 10, "messages": []}
    alone = await test_meter.reserved_for(meter, OPENROUTER_CHAT, plain)
    opus_worker = {"type": "openrouter:subagent", "parameters": {"model": "anthropic/claude-opus-4.1"}}
    with_worker = await test_meter.reserved_for(meter, OPENROUTER_CHAT, {**plain, "tools": [opus_worker]})
    assert with_worker > alone * 5, (alone, with_worker)  # opus writes at $75 per 1M tokens


def test_an_openrouter_id_is_not_allowed_by_a_snapshot_of_a_model_with_several() -> None:
    rules = (
        parse_policies(
            "environments:\n  development:\n    models:\n      allow: [claude-3-5-sonnet-20241022]\n"
        )
        .environment("development")
        .models
    )
    assert not rules.is_allowed("anthropic/claude-3.5-sonnet")
    assert rules.is_allowed("claude-3-5-sonnet-20241022")


async def test_openrouters_models_list_behind_an_anthropic_gateway_is_still_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """Keeping Anthropic's reading of `fallbacks` there, OpenRouter's `models` list is read beside
    it: refused when no rule lets an entry run, else rewritten in place."""
    url = "https://llm.internal.example/v1/messages"
    body = {
        "model": "anthropic/claude-haiku-4.5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "models": ["anthropic/claude-fable-5"],
    }
    meter._apply(parse_policies(ANTHROPIC_GATEWAY_TO_OPENROUTER + OPENROUTER_HAIKU_ONLY))
    flow = test_meter.make_flow(url, body, headers=ANTHROPIC_HEADERS)
    await test_meter.run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    meter._apply(
        parse_policies(
            ANTHROPIC_GATEWAY_TO_OPENROUTER
            + "environments:\n  development:\n    models:\n"
            + '      allow: ["anthropic/claude-haiku-*"]\n'
            + '      downgrade: {"anthropic/claude-fable-*": anthropic/claude-haiku-4.5}\n'
        )
    )
    flow = test_meter.make_flow(url, body, headers=ANTHROPIC_HEADERS)
    await test_meter.run_request(meter, flow)
    assert flow.response is None
    assert json.loads(flow.request.content or b"")["models"] == ["anthropic/claude-haiku-4.5"]
