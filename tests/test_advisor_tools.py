"""Advisor tools wherever they run, executor/advisor pairs, and fallbacks lists a rewrite would
make repeat a model (after the review of 4002a9a: tests/test_review_anthropic_iterations.py).
"""

from __future__ import annotations

from decimal import Decimal

from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import advisors
from addon.providers.anthropic_api import repeated_fallbacks
from tests import test_meter
from tests.test_meter import make_flow, run_request, sent_body

MESSAGES = "https://api.anthropic.com/v1/messages"
MESSAGE_BATCHES = "https://api.anthropic.com/v1/messages/batches"
OPENROUTER_CHAT = "https://openrouter.ai/api/v1/chat/completions"
OPENROUTER_RESPONSES = "https://openrouter.ai/api/v1/responses"
OPENROUTER_MESSAGES = "https://openrouter.ai/api/v1/messages"
HEADERS = {"x-api-key": "sk-ant-api03-" + "a" * 40, "anthropic-version": "2023-06-01"}
HAIKU_ONLY = 'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
OPENROUTER_HAIKU_ONLY = (
    'environments:\n  development:\n    models: {allow: ["anthropic/claude-haiku-*"], on_disallowed: block}\n'
)
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


def advisor(model: str = "claude-opus-4-8", **caps: int) -> dict:
    return {"type": "advisor_20260301", "name": "advisor", "model": model, **caps}


def anthropic_flow(url: str, body: dict) -> http.HTTPFlow:
    flow = make_flow(url, body, headers=HEADERS)
    del flow.request.headers["authorization"]
    return flow


# -- where advisors are read ----------------------------------------------------------------


async def test_openrouters_advisor_naming_no_model_is_refused_where_models_are_restricted(
    meter: Meter,
) -> None:
    """Without parameters.model the executor picks the advisor per consultation: unknowable."""
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    body = {"model": "anthropic/claude-haiku-4.5", "input": "hi", "tools": [{"type": "openrouter:advisor"}]}
    flow = make_flow(OPENROUTER_RESPONSES, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"executor picks the advisor" in (flow.response.content or b"")


async def test_an_allowed_openrouter_advisor_passes_unchanged(meter: Meter) -> None:
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    tool = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-haiku-4.5"}}
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, flow)
    assert flow.response is None and sent_body(flow)["tools"] == [tool]


async def test_the_anthropic_shape_on_openrouters_messages_api_is_held_to_the_allowlist(meter: Meter) -> None:
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    body = {
        "model": "anthropic/claude-haiku-4.5",
        "max_tokens": 10,
        "messages": [],
        "tools": [advisor("anthropic/claude-opus-4.8")],
    }
    flow = make_flow(OPENROUTER_MESSAGES, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


async def test_an_openrouter_advisor_is_reserved_at_its_rates(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "anthropic/claude-haiku-4.5", "max_tokens": 10, "messages": []}
    alone = await test_meter.reserved_for(meter, OPENROUTER_CHAT, body)
    parameters = {"model": "anthropic/claude-opus-4.6", "max_completion_tokens": 4000}
    advised = {**body, "tools": [{"type": "openrouter:advisor", "parameters": parameters}]}
    reserved = await test_meter.reserved_for(meter, OPENROUTER_CHAT, advised)
    # Three consultations (no max_uses on OpenRouter's tool), each up to 4,000 tokens at Opus's $25.
    assert reserved - alone >= Decimal(3 * 4000 * 25) / 1_000_000


async def test_bedrock_and_vertex_bodies_are_not_read_for_advisors() -> None:
    """Anthropic's advisor tool is not available on Bedrock or Vertex AI (Claude Code's advisor
    page): those providers read none (their request is answered 400 upstream, nothing billed)."""
    from addon.providers import Registry

    registry = Registry()
    for name in ("aws", "vertex"):
        provider = registry.by_name(name)
        assert provider is not None and provider.advisor_tools is None


# -- Message Batches ---------------------------------------------------------------------------


async def test_a_batch_request_whose_advisor_names_no_model_is_refused_where_models_are_restricted(
    meter: Meter,
) -> None:
    meter._apply(parse_policies(HAIKU_ONLY))
    tool = {"type": "advisor_20260301", "name": "advisor"}
    params = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [], "tools": [tool]}
    flow = anthropic_flow(MESSAGE_BATCHES, {"requests": [{"custom_id": "a", "params": params}]})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


async def test_a_batch_request_falling_back_to_a_disallowed_model_is_refused_naming_it(meter: Meter) -> None:
    meter._apply(parse_policies(HAIKU_ONLY))
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "messages": [],
        "fallbacks": [{"model": "claude-opus-4-8"}],
    }
    flow = anthropic_flow(MESSAGE_BATCHES, {"requests": [{"custom_id": "a", "params": params}]})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"claude-opus-4-8" in (flow.response.content or b"")


# -- executor/advisor pairs --------------------------------------------------------------------


def test_pairs_follow_anthropics_rule() -> None:
    assert advisors.pair_known_valid("claude-haiku-4-5", "claude-opus-4-8")
    assert advisors.pair_known_valid("claude-sonnet-4-6", "claude-opus-4-7-20260401")
    assert advisors.pair_known_valid("claude-opus-4-8", "claude-fable-5")
    assert not advisors.pair_known_valid("claude-haiku-4-5", "claude-sonnet-4-5")
    assert not advisors.pair_known_valid("claude-opus-4-8", "claude-opus-4-7")
    assert not advisors.pair_known_valid("claude-fable-5", "claude-opus-5")
    assert advisors.pair_known_invalid("claude-sonnet-4-6", "claude-haiku-4-5")
    assert advisors.pair_known_invalid("claude-fable-5", "claude-opus-4-8")
    assert not advisors.pair_known_invalid("claude-haiku-4-5", "claude-sonnet-4-5")  # not known either way
    assert not advisors.pair_known_invalid("claude-haiku-4-5", "some-gateway-alias")


EXECUTOR_DOWNGRADED = """
environments:
  development:
    models:
      allow: ["claude-haiku-*", "claude-opus-4-7"]
      on_disallowed: downgrade
      downgrade: {"claude-opus-4-8": claude-opus-4-7}
"""


async def test_an_executor_rewritten_above_its_advisor_is_refused(meter: Meter) -> None:
    """The advisor is sent as asked (allowed), but the call's rule writes in an executor more
    capable than it: claude-opus-4-8 advised by claude-opus-4-7, a pair Anthropic rejects."""
    policy = (
        "environments:\n  development:\n    models:\n"
        '      allow: ["claude-opus-4-8", "claude-opus-4-7"]\n      on_disallowed: downgrade\n'
        '      downgrade: {"claude-haiku-*": claude-opus-4-8}\n'
    )
    meter._apply(parse_policies(policy))
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "messages": [],
        "tools": [advisor("claude-opus-4-7")],
    }
    flow = anthropic_flow(MESSAGES, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"cannot be advised" in (flow.response.content or b"")


async def test_an_executor_downgrade_keeping_a_valid_advisor_goes_through(meter: Meter) -> None:
    meter._apply(parse_policies(EXECUTOR_DOWNGRADED))
    body = {
        "model": "claude-opus-4-8",
        "max_tokens": 10,
        "messages": [],
        "tools": [advisor("claude-opus-4-7")],
    }
    flow = anthropic_flow(MESSAGES, body)
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow)["model"] == "claude-opus-4-7"


# -- fallbacks a rewrite would make repeat ------------------------------------------------------


def test_only_the_repeats_a_rewrite_makes_are_dropped() -> None:
    fable, opus, sonnet = "claude-fable-5", "claude-opus-4-8", "claude-sonnet-5"
    # The call downgraded to opus: the entry naming opus goes; sonnet stays.
    assert repeated_fallbacks(fable, opus, (opus, sonnet), [opus, sonnet]) == [0]
    # Two entries rewritten to the same target: the second goes.
    assert repeated_fallbacks(fable, fable, ("claude-opus-4-6", "claude-opus-4-7"), [opus, opus]) == [1]
    # What the client wrote itself stays (its list, its answer).
    assert repeated_fallbacks(fable, fable, (fable,), [fable]) == []
    assert repeated_fallbacks(fable, opus, (opus, opus), [opus, opus]) == [0, 1]


async def test_a_fallbacks_list_left_empty_by_dropping_is_removed(meter: Meter) -> None:
    policy = (
        "environments:\n  development:\n    models:\n"
        '      allow: ["claude-opus-*"]\n      on_disallowed: downgrade\n'
        '      downgrade: {"claude-fable-*": claude-opus-4-8}\n'
    )
    meter._apply(parse_policies(policy))
    body = {
        "model": "claude-fable-5",
        "max_tokens": 10,
        "messages": [],
        "fallbacks": [{"model": "claude-opus-4-8"}],
    }
    flow = anthropic_flow(MESSAGES, body)
    await run_request(meter, flow)
    assert flow.response is None
    sent = sent_body(flow)
    assert sent["model"] == "claude-opus-4-8" and "fallbacks" not in sent
    state = meter.call_state(flow)
    assert state is not None and state.notice is not None and "dropped" in state.notice


async def test_a_chain_reserves_each_hop_once_and_the_advisor_once(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "claude-haiku-4-5", "max_tokens": 1000, "messages": []}
    alone = await test_meter.reserved_for(meter, MESSAGES, body, HEADERS)
    advised = {**body, "tools": [advisor(max_tokens=1000, max_uses=1)]}
    with_advisor = await test_meter.reserved_for(meter, MESSAGES, advised, HEADERS)
    chained = {**advised, "fallbacks": [{"model": "claude-haiku-4-5"}]}
    both = await test_meter.reserved_for(meter, MESSAGES, chained, HEADERS)
    # The fallback hop adds one more haiku call (its body a few bytes longer), no second advisor.
    assert alone <= both - with_advisor < alone * Decimal("1.1"), (alone, with_advisor, both)


# -- after review round 7 (tests/test_review_round7.py) ---------------------------------------

OPENROUTER_FABLE_TO_OPUS = (
    "environments:\n  development:\n    models:\n"
    '      allow: ["anthropic/claude-haiku-*", "anthropic/claude-opus-*"]\n'
    "      on_disallowed: downgrade\n"
    '      downgrade: {"anthropic/claude-fable-*": anthropic/claude-opus-4.8}\n'
)


async def test_a_named_advisor_profile_is_downgraded_in_place(meter: Meter) -> None:
    """Only the profile's model is rewritten; the tool's own model and the profile's other
    members go as they came."""
    meter._apply(parse_policies(OPENROUTER_FABLE_TO_OPUS))
    profile = {"name": "architect", "model": "anthropic/claude-fable-5", "instructions": "be brief"}
    tool = {
        "type": "openrouter:advisor",
        "parameters": {"model": "anthropic/claude-haiku-4.5", "advisors": [profile]},
    }
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, flow)
    assert flow.response is None
    params = sent_body(flow)["tools"][0]["parameters"]
    assert params["model"] == "anthropic/claude-haiku-4.5"
    assert params["advisors"] == [{**profile, "model": "anthropic/claude-opus-4.8"}]


def test_profiles_inherit_the_tools_model_and_an_unreadable_roster_is_unreadable() -> None:
    tool = {
        "type": "openrouter:advisor",
        "parameters": {"model": "m-top", "max_completion_tokens": 50, "advisors": [{"name": "a"}]},
    }
    found = advisors.advisor_tools({"tools": [tool]}, openrouter=True)
    assert found.error is None
    assert [(t.model, t.max_tokens, t.profile) for t in found.tools] == [
        ("m-top", 50, None),
        ("m-top", 50, 0),
    ]
    bad = {"type": "openrouter:advisor", "parameters": {"model": "m-top", "advisors": {"name": "a"}}}
    assert advisors.advisor_tools({"tools": [bad]}, openrouter=True).error is not None
    nameless = {"type": "openrouter:advisor", "parameters": {"advisors": [{"name": "a", "model": 5}]}}
    assert advisors.advisor_tools({"tools": [nameless]}, openrouter=True).error is not None


async def test_default_fallbacks_reserve_one_more_hop_where_models_are_not_restricted(meter: Meter) -> None:
    """'default' names no model: the hop Anthropic picks is reserved at the model sent."""
    meter._apply(parse_policies(BUDGET_ONLY))
    plain = {"model": "claude-opus-4-8", "max_tokens": 4000, "messages": []}
    alone = await test_meter.reserved_for(meter, MESSAGES, plain, HEADERS)
    chained = await test_meter.reserved_for(meter, MESSAGES, {**plain, "fallbacks": "default"}, HEADERS)
    assert 2 * alone <= chained < Decimal("2.01") * alone, (alone, chained)  # the body is longer


async def test_a_batch_requests_fallback_hops_are_reserved(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGET_ONLY))
    params = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []}
    alone = await test_meter.reserved_for(
        meter, MESSAGE_BATCHES, {"requests": [{"custom_id": "a", "params": params}]}, HEADERS
    )
    chained = {**params, "fallbacks": [{"model": "claude-opus-4-8", "max_tokens": 4000}]}
    body = {"requests": [{"custom_id": "a", "params": chained}]}
    reserved = await test_meter.reserved_for(meter, MESSAGE_BATCHES, body, HEADERS)
    assert reserved - alone >= Decimal(4000 * 25) / 1_000_000 / 2, (alone, reserved)
