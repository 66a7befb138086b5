"""The models an Anthropic Messages call runs besides its ``model``, held to the allowlist and
reserved: the advisor tool's (``tools[i].model``, beta ``advisor-tool-2026-03-01``) and the
server-side fallbacks' (``fallbacks``, beta ``server-side-fallback-2026-07-01``: a list of
``{"model": ...}`` objects, or ``"default"``, the models Anthropic picks).

Before, neither was read on api.anthropic.com: claude-opus ran as the advisor, or as a fallback,
of a call from an environment allowing claude-haiku-* only, and the call reserved haiku's price.
The first two tests are a reviewer's (round 2), moved here.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import make_flow, output_usd, reserved_for, run_request, sent_body

MESSAGES = "https://api.anthropic.com/v1/messages"
KEY = "sk-ant-api03-" + "a" * 40
ANTHROPIC_HAIKU_ONLY = (
    'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
)
DOWNGRADE = """
environments:
  development:
    budget: {usd: 100, period: day}
    models:
      allow: ["claude-haiku-*", "claude-sonnet-*"]
      on_disallowed: downgrade
      downgrade: {"claude-opus-*": claude-sonnet-4-5}
"""
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


def _anthropic_flow(body: dict, beta: str) -> http.HTTPFlow:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "anthropic-beta": beta}
    flow = make_flow(MESSAGES, body, headers=headers)
    del flow.request.headers["authorization"]
    return flow


def advisor(model: str = "claude-opus-4-6", **caps: int) -> dict:
    return {"type": "advisor_20260301", "name": "advisor", "model": model, **caps}


@pytest.mark.parametrize("fallbacks", [[{"model": "claude-opus-5"}], "default"])
async def test_anthropic_server_side_fallbacks_are_held_to_the_allowlist(
    meter: Meter, fallbacks: object
) -> None:
    """The commit reads ``fallbacks: [{"model": ...}]`` as "the shape Anthropic's SDKs send", but
    only on OpenRouter. Anthropic's own API takes that field (server-side fallback, beta
    ``server-side-fallback-...``; a list of models, or ``"default"``: the model Anthropic
    recommends): a refused answer is retried on the fallback model, which runs and is billed. On
    api.anthropic.com the field is never read: claude-opus is let through from an environment
    that allows claude-haiku-* only (blocked), unchecked and reserved at haiku's price."""
    meter._apply(parse_policies(ANTHROPIC_HAIKU_ONLY))
    body = {
        "model": "claude-haiku-5-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "fallbacks": fallbacks,
    }
    flow = _anthropic_flow(body, "server-side-fallback-2026-07-01")
    await run_request(meter, flow)
    if flow.response is None:  # let through: then no fallback may name a disallowed model
        sent = sent_body(flow).get("fallbacks")
        assert isinstance(sent, list), f"fallbacks {sent!r} sent upstream unchecked"
        assert all(str(entry.get("model", "")).startswith("claude-haiku-") for entry in sent), sent


async def test_an_anthropic_advisor_tool_model_is_held_to_the_allowlist(meter: Meter) -> None:
    """Anthropic's advisor tool (``{"type": "advisor_20260301", "model": ...}`` in ``tools``, beta
    ``advisor-tool-2026-03-01``) has the executor consult another model mid-request, billed at
    that model's rates: a model named in a tool, as the Responses image_generation tool's is
    (which the proxy checks). Here it is never read: a haiku-only environment (blocked) lets
    claude-opus run as the advisor of an allowed haiku call."""
    meter._apply(parse_policies(ANTHROPIC_HAIKU_ONLY))
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "refactor this"}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6"}],
    }
    flow = _anthropic_flow(body, "advisor-tool-2026-03-01")
    await run_request(meter, flow)
    if flow.response is None:  # let through: then the advisor must be an allowed model
        [tool] = sent_body(flow)["tools"]
        assert str(tool.get("model", "")).startswith("claude-haiku-"), tool


async def test_a_blocked_advisor_is_refused_naming_it(meter: Meter) -> None:
    meter._apply(parse_policies(ANTHROPIC_HAIKU_ONLY))
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "tools": [advisor()]}
    flow = _anthropic_flow(body, "advisor-tool-2026-03-01")
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"claude-opus-4-6" in flow.response.content and b"advisor" in flow.response.content


# A downgrade target that can advise haiku (Anthropic's advisor tool compatibility table: Opus 4.8
# and 4.7 advise Haiku 4.5). This test first downgraded to claude-sonnet-4-5, a pair Anthropic
# rejects (the review of 4002a9a): such a target now refuses the call instead (see
# tests/test_review_anthropic_iterations.py).
ADVISOR_DOWNGRADE = """
environments:
  development:
    budget: {usd: 100, period: day}
    models:
      allow: ["claude-haiku-*", "claude-sonnet-*", "claude-opus-4-8"]
      on_disallowed: downgrade
      downgrade: {"claude-opus-4-6": claude-opus-4-8}
"""


async def test_a_disallowed_advisor_is_downgraded_in_place(meter: Meter) -> None:
    """Only the tool's ``model`` changes; the call's model, the tool's other members and the other
    tools are sent as they came; the client is told (X-Tokometer-Notice); the advisor's tokens then
    bill at the model it ran, on a row saying it was downgraded from the one asked for."""
    meter._apply(parse_policies(ADVISOR_DOWNGRADE))
    weather = {"name": "weather", "input_schema": {"type": "object"}}
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [],
        "tools": [weather, advisor(max_uses=2)],
    }
    flow = _anthropic_flow(body, "advisor-tool-2026-03-01")
    await run_request(meter, flow)
    assert flow.response is None
    sent = sent_body(flow)
    assert sent["model"] == "claude-haiku-4-5"
    assert sent["tools"] == [weather, {**advisor(max_uses=2), "model": "claude-opus-4-8"}]
    state = meter.call_state(flow)
    assert state is not None and state.notice is not None and "advisor tool" in state.notice
    usage = {
        "input_tokens": 5,
        "output_tokens": 5,
        "iterations": [
            {
                "type": "advisor_message",
                "model": "claude-opus-4-8-20260505",
                "input_tokens": 50,
                "output_tokens": 9,
            }
        ],
    }
    answer = {"id": "m", "type": "message", "model": "claude-haiku-4-5", "content": [], "usage": usage}
    flow.response = http.Response.make(200, json.dumps(answer).encode(), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = [r for r in meter.store.records if r.model_reported != "claude-haiku-4-5"]  # type: ignore[union-attr]
    assert (row.model_requested, row.model_sent, row.action) == (
        "claude-opus-4-6",
        "claude-opus-4-8",
        "downgraded",
    )


async def test_a_disallowed_fallback_is_downgraded_in_place_keeping_its_overrides(meter: Meter) -> None:
    meter._apply(parse_policies(DOWNGRADE))
    entry = {"model": "claude-opus-4-6", "max_tokens": 300, "thinking": {"type": "disabled"}}
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "fallbacks": [entry]}
    flow = _anthropic_flow(body, "server-side-fallback-2026-07-01")
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow)["fallbacks"] == [{**entry, "model": "claude-sonnet-4-5"}]
    assert "models" not in sent_body(flow)  # OpenRouter's list is never added


@pytest.mark.parametrize(
    "fallbacks", ["default", {"model": "claude-haiku-4-5"}, [{"max_tokens": 10}], [{"model": 4}], ["x"]]
)
async def test_a_fallbacks_value_that_cannot_be_read_whole_is_refused_where_models_are_restricted(
    meter: Meter, fallbacks: object
) -> None:
    meter._apply(parse_policies(ANTHROPIC_HAIKU_ONLY))
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "fallbacks": fallbacks}
    flow = _anthropic_flow(body, "server-side-fallback-2026-07-01")
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


async def test_default_fallbacks_pass_where_every_model_is_allowed(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "fallbacks": "default"}
    flow = _anthropic_flow(body, "server-side-fallback-2026-07-01")
    await run_request(meter, flow)
    assert flow.response is None and sent_body(flow)["fallbacks"] == "default"


HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


async def test_the_advisors_consultations_are_reserved_at_its_rates(meter: Meter) -> None:
    """Each of the tool's max_uses consultations may write its max_tokens at the advisor's rates:
    2 x 4,000 output tokens of Opus 4.6 ($25 per 1M) = $0.20. Before: the call reserved haiku's
    100 output tokens alone (about $0.0005)."""
    meter._apply(parse_policies(BUDGET_ONLY))
    tools = [advisor(max_tokens=4000, max_uses=2)]
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "tools": tools}
    reserved = await reserved_for(meter, MESSAGES, body, HEADERS)
    assert reserved >= output_usd(8000, "25"), reserved
    assert reserved < output_usd(8000, "25") + Decimal("0.01")


async def test_an_advisor_without_caps_reserves_a_bound(meter: Meter) -> None:
    """No max_uses, no max_tokens: ADVISOR_USES_RESERVED (3) consultations of the advisor's usual
    output here (at least RESERVED_OUTPUT_TOKENS, 1,000): 3,000 Opus output tokens, $0.075."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "tools": [advisor()]}
    assert await reserved_for(meter, MESSAGES, body, HEADERS) >= output_usd(3 * 1000, "25")


async def test_a_fallback_is_reserved_at_its_own_max_tokens_and_rates(meter: Meter) -> None:
    """The dearest model the call may run on, at the cap its attempt has: opus 4.6's 4,000 output
    tokens ($0.10), not haiku's 100 (before: $0.0005)."""
    meter._apply(parse_policies(BUDGET_ONLY))
    fallbacks = [{"model": "claude-opus-4-6", "max_tokens": 4000}]
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [], "fallbacks": fallbacks}
    reserved = await reserved_for(meter, MESSAGES, body, HEADERS)
    assert output_usd(4000, "25") <= reserved < output_usd(4000, "25") + Decimal("0.01")
