"""Review round 7: failing tests for the header lookups, the journal encoder, pricing, and the
advisor tools / fallback chains (commits 5ebbbbf, bd87811, 3fd8423, ca1970c, 3af3559, fdde453)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from tests import test_meter
from tests.test_meter import make_flow, run_request, sent_body

MESSAGES = "https://api.anthropic.com/v1/messages"
OPENROUTER_CHAT = "https://openrouter.ai/api/v1/chat/completions"
HEADERS = {"x-api-key": "sk-ant-api03-" + "a" * 40, "anthropic-version": "2023-06-01"}
OPENROUTER_HAIKU_ONLY = (
    'environments:\n  development:\n    models: {allow: ["anthropic/claude-haiku-*"], on_disallowed: block}\n'
)


def anthropic_flow(url: str, body: dict) -> http.HTTPFlow:
    flow = make_flow(url, body, headers=HEADERS)
    del flow.request.headers["authorization"]
    return flow


async def test_openrouter_named_advisor_profiles_are_held_to_the_allowlist(meter: Meter) -> None:
    """OpenRouter's openrouter:advisor takes a roster of named advisor profiles in
    parameters.advisors, each with its own model (a selected profile's config takes precedence
    over the tool's). Only parameters.model is read: in a haiku-only environment (blocked) a call
    whose tool pins haiku but offers a claude-fable-5 profile goes upstream untouched, and the
    executor consults Fable, unchecked and unreserved."""
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    tool = {
        "type": "openrouter:advisor",
        "parameters": {
            "model": "anthropic/claude-haiku-4.5",
            "advisors": [{"name": "architect", "model": "anthropic/claude-fable-5"}],
        },
    }
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"claude-fable-5" in (flow.response.content or b"")


FABLE_TO_OPUS_WITH_BUDGET = (
    "environments:\n  development:\n    models:\n"
    '      allow: ["claude-opus-*"]\n      on_disallowed: downgrade\n'
    '      downgrade: {"claude-fable-*": claude-opus-4-8}\n'
    "    budget: {usd: 100, period: day}\n"
)


async def test_a_fallback_dropped_by_the_downgrade_is_not_reserved(meter: Meter) -> None:
    """claude-fable-5 falling back to claude-opus-4-8, downgraded to claude-opus-4-8: the fallback
    entry is dropped (it would fall back to itself) and the call runs opus alone, yet the chain
    reserved opus twice (the model sent and the dropped hop). Against a nearly spent cap the call
    is refused for a budget it fits in, and calls started together count each other double."""
    meter._apply(parse_policies(FABLE_TO_OPUS_WITH_BUDGET))
    plain = {"model": "claude-opus-4-8", "max_tokens": 4000, "messages": []}
    alone = await test_meter.reserved_for(meter, MESSAGES, plain, HEADERS)
    body = {**plain, "model": "claude-fable-5", "fallbacks": [{"model": "claude-opus-4-8"}]}
    flow = anthropic_flow(MESSAGES, body)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None
    sent = sent_body(flow)
    assert sent["model"] == "claude-opus-4-8" and "fallbacks" not in sent
    reserved = sum(meter.enforcer.budgets.reserved().values(), Decimal(0))
    assert reserved < alone * Decimal("1.1"), (alone, reserved)


MESSAGE_BATCHES = "https://api.anthropic.com/v1/messages/batches"
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


async def test_a_batch_requests_advisor_consultations_are_reserved(meter: Meter) -> None:
    """A Message Batch request with an advisor tool (claude-opus-4-8, max_tokens 4,000, max_uses 3)
    may write 12,000 tokens at Opus's rates ($0.30, $0.15 at the batch discount) besides its own
    10. The batch is reserved "at the dearest model its requests may run", the advisor's price for
    the requests' own input and 10 output tokens: about $0.0003, so batches started together pass a
    hard cap that has room for none of their consultations (a plain call reserves them)."""
    meter._apply(parse_policies(BUDGET_ONLY))
    tool = {
        "type": "advisor_20260301",
        "name": "advisor",
        "model": "claude-opus-4-8",
        "max_tokens": 4000,
        "max_uses": 3,
    }
    params = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [], "tools": [tool]}
    body = {"requests": [{"custom_id": "a", "params": params}]}
    reserved = await test_meter.reserved_for(meter, MESSAGE_BATCHES, body, HEADERS)
    assert reserved >= Decimal(3 * 4000 * 25) / 1_000_000 / 2, reserved


OPENROUTER_GATEWAY = (
    'providers:\n  router: {url: "https://llm.internal.example", api: openai, pricing_provider: openrouter}\n'
)


async def test_openrouters_advisor_behind_an_openai_compatible_gateway_is_held_to_the_allowlist(
    meter: Meter,
) -> None:
    """A providers: gateway (api: openai) in front of OpenRouter (LiteLLM, a corporate router)
    passes the tools on as they came, as ca1970c says of Anthropic's advisor tool, which it now
    reads there. OpenRouter's own openrouter:advisor is not read on a gateway: in a haiku-only
    environment (blocked) the executor consults claude-fable-5 through the gateway, unchecked
    and unreserved, while the same tool sent to openrouter.ai is refused."""
    meter._apply(parse_policies(OPENROUTER_GATEWAY + OPENROUTER_HAIKU_ONLY))
    tool = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow("https://llm.internal.example/v1/chat/completions", body)
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and state.record.provider == "router"
    assert flow.response is not None and flow.response.status_code == 403


OPENROUTER_MESSAGES = "https://openrouter.ai/api/v1/messages"


async def test_anthropic_advisor_caps_are_not_trusted_on_openrouters_messages_api(meter: Meter) -> None:
    """On OpenRouter's /api/v1/messages the Anthropic-shaped advisor tool carries its model only
    (OpenRouter's advisor page: "The model is the only setting it carries"; caps go in
    openrouter:advisor's parameters on chat or Responses). The proxy still reserves by the tool's
    max_uses and max_tokens: a tool saying max_uses 1, max_tokens 100 reserves one 100-token
    consultation of claude-opus-4.8, though OpenRouter runs the advisor uncapped, so it reserves
    less than the same tool without caps (3 consultations, the advisor's usual output) and calls
    against a hard cap pass that it has no room for."""
    meter._apply(parse_policies(BUDGET_ONLY))
    base = {"model": "anthropic/claude-haiku-4.5", "max_tokens": 10, "messages": []}
    tool = {"type": "advisor_20260301", "name": "advisor", "model": "anthropic/claude-opus-4.8"}
    uncapped = await test_meter.reserved_for(meter, OPENROUTER_MESSAGES, {**base, "tools": [tool]})
    capped_tool = {**tool, "max_uses": 1, "max_tokens": 100}
    capped = await test_meter.reserved_for(meter, OPENROUTER_MESSAGES, {**base, "tools": [capped_tool]})
    assert capped >= uncapped, (capped, uncapped)
