"""Review round 8: failing tests for the host's id forms of a downgrade target (2a69b6d), advisor
tools, fallbacks and Message Batch reservations (13a9050), gateways' fallback lists and OpenRouter's
routing variants."""

from __future__ import annotations

import json
from decimal import Decimal

from addon.meter import Meter
from addon.model_rules import in_form_of
from addon.policies import parse_policies
from tests import test_meter
from tests.test_meter import make_flow, run_request

MESSAGE_BATCHES = "https://api.anthropic.com/v1/messages/batches"
HEADERS = {"x-api-key": "sk-ant-api03-" + "a" * 40, "anthropic-version": "2023-06-01"}
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


async def test_a_batch_mixing_models_reserves_its_dear_requests_at_their_model(meter: Meter) -> None:
    """A Message Batch whose requests ask for claude-haiku-4-5 (one tiny request) and
    claude-opus-4-8 (max_tokens 4,000) is reserved as if every request ran haiku: the model
    reserved is the alphabetically first of the batch's models (models[0]), so adding a single
    haiku request to an opus batch cuts its reservation about five-fold and lets the batch
    overshoot a budget cap that refuses the same opus requests sent alone."""
    meter._apply(parse_policies(BUDGET_ONLY))
    opus = {"model": "claude-opus-4-8", "max_tokens": 4000, "messages": []}
    haiku = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": []}
    alone = await test_meter.reserved_for(
        meter, MESSAGE_BATCHES, {"requests": [{"custom_id": "o", "params": opus}]}, HEADERS
    )
    mixed = await test_meter.reserved_for(
        meter,
        MESSAGE_BATCHES,
        {"requests": [{"custom_id": "o", "params": opus}, {"custom_id": "h", "params": haiku}]},
        HEADERS,
    )
    assert mixed >= alone * Decimal("0.9"), (alone, mixed)


def test_openrouter_target_for_an_anthropic_dash_zero_alias_is_openrouters_id() -> None:
    """Anthropic's aliases claude-sonnet-4-0 / claude-opus-4-0 are valid downgrade targets as the
    rule writes them. Through OpenRouter, anthropic/claude-opus-4.1 downgraded to claude-sonnet-4-0
    is sent as anthropic/claude-sonnet-4.0, which OpenRouter does not serve (400): its id is
    anthropic/claude-sonnet-4 (the alias still matches an allowlist naming claude-sonnet-4-0)."""
    assert (
        in_form_of("anthropic/claude-opus-4.1", "claude-sonnet-4-0", "openrouter")
        == "anthropic/claude-sonnet-4"
    )


def test_openrouter_target_for_an_anthropic_latest_alias_is_openrouters_id() -> None:
    """The shipped policies.yaml's allowlist names claude-3-5-haiku-latest (Anthropic's alias),
    so a user writes downgrade {"claude-opus-*": claude-3-5-haiku-latest}. Through OpenRouter,
    anthropic/claude-opus-4.1 is then sent as anthropic/claude-3.5-haiku-latest, which OpenRouter
    does not serve (400): the -latest alias is undated like OpenRouter's anthropic/claude-3.5-haiku,
    the id the date-stripping already gives claude-3-5-haiku-20241022."""
    assert in_form_of("anthropic/claude-opus-4.1", "claude-3-5-haiku-latest", "openrouter") == (
        "anthropic/claude-3.5-haiku"
    )


def test_openrouter_serves_a_sonar_target_under_perplexity() -> None:
    """vendor_of now knows sonar as Perplexity's, and OpenRouter serves perplexity/sonar, but
    OpenRouter's form has no prefix for the perplexity vendor: with downgrade {"*": sonar}
    (sonar allowed), OpenRouter's openai/gpt-4o is refused 403 instead of sent as perplexity/sonar."""
    assert in_form_of("openai/gpt-4o", "sonar", "openrouter") == "perplexity/sonar"


OPENROUTER_GATEWAY = (
    'providers:\n  router: {url: "https://llm.internal.example", api: openai, pricing_provider: openrouter}\n'
)
OPENROUTER_HAIKU_ONLY = (
    'environments:\n  development:\n    models: {allow: ["anthropic/claude-haiku-*"], on_disallowed: block}\n'
)


async def test_openrouters_models_fallback_list_behind_a_gateway_is_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """13a9050 reads openrouter:advisor behind a providers: gateway priced as OpenRouter (it
    passes the body on as it came), but not OpenRouter's `models` fallback list on the same
    gateway: the openai SDK's extra_body={"models": ["anthropic/claude-fable-5"]} through a
    LiteLLM/corporate router in front of OpenRouter, in a haiku-only environment (blocked), goes
    upstream untouched; OpenRouter runs claude-fable-5 when haiku fails, unchecked and unreserved,
    while the same body sent to openrouter.ai is refused 403."""
    meter._apply(parse_policies(OPENROUTER_GATEWAY + OPENROUTER_HAIKU_ONLY))
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "models": ["anthropic/claude-fable-5"]}
    direct = make_flow("https://openrouter.ai/api/v1/chat/completions", body)
    await run_request(meter, direct)
    assert direct.response is not None and direct.response.status_code == 403  # as on openrouter.ai
    flow = make_flow("https://llm.internal.example/v1/chat/completions", body)
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and state.record.provider == "router"
    assert flow.response is not None and flow.response.status_code == 403


LITELLM_GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai, pricing_provider: openai}\n'
)
MINI_ONLY = 'environments:\n  development:\n    models: {allow: ["*-mini"], on_disallowed: block}\n'


async def test_a_litellm_gateways_client_side_fallbacks_are_held_to_the_allowlist(meter: Meter) -> None:
    """LiteLLM's proxy takes client-side fallbacks in the request body (openai SDK:
    extra_body={"fallbacks": ["gpt-4o"]}; LiteLLM's "Client-Side Fallbacks" page) and runs them
    when the model asked for fails (a 429, a timeout). Through a providers: gateway in a
    *-mini-only environment (blocked), gpt-4o-mini with fallbacks ["gpt-4o"] goes upstream
    untouched: gpt-4o runs whenever mini is rate limited, unchecked and unreserved."""
    meter._apply(parse_policies(LITELLM_GATEWAY + MINI_ONLY))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "fallbacks": ["gpt-4o"]}
    flow = make_flow("https://llm.internal.example/v1/chat/completions", body)
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and state.record.provider == "litellm"
    assert flow.response is not None and flow.response.status_code == 403


async def test_an_advisor_nested_in_an_openrouter_advisors_own_tools_is_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """OpenRouter's advisor "may run as a sub-agent with its own tools": parameters.tools is a list
    of OpenRouter server tools, openrouter:advisor among them (the SDKs' AdvisorServerToolConfig).
    Only the outer tool's parameters.model (and its roster) is read: in a haiku-only environment
    (blocked) a tool pinning haiku whose sub-agent may consult claude-fable-5 goes upstream
    untouched, and Fable runs unchecked and unreserved."""
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    inner = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}
    tool = {
        "type": "openrouter:advisor",
        "parameters": {"model": "anthropic/claude-haiku-4.5", "tools": [inner]},
    }
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow("https://openrouter.ai/api/v1/chat/completions", body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


async def test_an_openrouter_routing_variant_is_reserved_at_its_models_price(meter: Meter) -> None:
    """OpenRouter's routing variants (:nitro, :floor, :online) run the same model at its price
    (the proxy keeps them on a downgrade target for that reason). Under a budget cap,
    anthropic/claude-opus-4.1 with max_tokens 4,000 reserves about $0.30, but the same call as
    anthropic/claude-opus-4.1:nitro reserves nothing: any number of such calls pass a cap that has
    no room left, and it is overshot by whatever they cost."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {
        "model": "anthropic/claude-opus-4.1",
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": "hi"}],
    }
    url = "https://openrouter.ai/api/v1/chat/completions"
    plain = await test_meter.reserved_for(meter, url, body)
    for variant in ("nitro", "floor", "online"):
        routed = await test_meter.reserved_for(
            meter, url, {**body, "model": f"anthropic/claude-opus-4.1:{variant}"}
        )
        assert routed >= plain * Decimal("0.9"), (variant, plain, routed)


# -- the fixes' other sides -----------------------------------------------------------------------


def test_openrouters_undated_anthropic_ids_match_anthropics_aliases() -> None:
    """The rewritten target must itself be allowed: an allowlist naming Anthropic's aliases allows
    OpenRouter's ids of the same models, so the downgrade is made rather than refused."""
    rules = (
        parse_policies(
            "environments:\n  development:\n    models:\n"
            "      allow: [claude-3-5-haiku-latest, claude-sonnet-4-0]\n"
            '      downgrade: {"claude-opus-*": claude-3-5-haiku-latest}\n'
        )
        .environment("development")
        .models
    )
    assert rules.resolve("anthropic/claude-opus-4.1", "openrouter") == (
        "downgraded",
        "anthropic/claude-3.5-haiku",
    )
    assert rules.is_allowed("anthropic/claude-sonnet-4") and not rules.is_allowed(
        "anthropic/claude-sonnet-4.5"
    )


async def test_a_litellm_fallback_is_downgraded_in_place(meter: Meter) -> None:
    """With a downgrade target, a disallowed client-side fallback is rewritten where it is written
    (a name stays a name, an object keeps its other members); the call reserves the dearest."""
    meter._apply(
        parse_policies(
            LITELLM_GATEWAY
            + "environments:\n  development:\n"
            + '    models: {allow: ["*-mini"], downgrade: {gpt-4o: gpt-4o-mini}}\n'
        )
    )
    body = {
        "model": "gpt-4o-mini",
        "messages": [],
        "fallbacks": ["gpt-4o", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}],
    }
    flow = make_flow("https://llm.internal.example/v1/chat/completions", body)
    await run_request(meter, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["fallbacks"] == [
        "gpt-4o-mini",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    ]


async def test_a_nested_advisor_is_downgraded_in_place(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    models:\n"
            '      allow: ["anthropic/claude-haiku-*"]\n'
            '      downgrade: {"anthropic/claude-fable-*": anthropic/claude-haiku-4.5}\n'
        )
    )
    inner = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}
    tool = {
        "type": "openrouter:advisor",
        "parameters": {"model": "anthropic/claude-haiku-4.5", "tools": [inner]},
    }
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow("https://openrouter.ai/api/v1/chat/completions", body)
    await run_request(meter, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["tools"][0]["parameters"]["tools"][0]["parameters"]["model"] == "anthropic/claude-haiku-4.5"
    assert sent["tools"][0]["parameters"]["model"] == "anthropic/claude-haiku-4.5"


async def test_a_free_variant_is_not_priced_as_the_paid_model(meter: Meter) -> None:
    """OpenRouter serves :free at $0: a :free id is never priced as its paid model."""
    assert meter.pricer.estimate("openrouter", "deepseek/deepseek-chat:free", 1000, 1000) == 0
    assert meter.pricer.estimate("openrouter", "anthropic/claude-opus-4.1:free", 1000, 1000) == 0
