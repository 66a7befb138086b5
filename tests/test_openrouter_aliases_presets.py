"""OpenRouter's ``~vendor/family-latest`` aliases and its presets, where models are restricted and
where they are not.

OpenRouter's docs (guides/routing/routers/latest-resolution): ``~author/family-latest`` resolves to
the newest model of the family when the call runs, and the response's ``model`` is the concrete
model that served it (``anthropic/claude-opus-4.7``). Its presets (guides/features/presets) are
named configurations (model or fallback models, provider routing, system prompt, tools) used as
``"model": "@preset/slug"``, ``"preset": "slug"`` beside a model, or ``"model": "m@preset/slug"``;
the request's own parameters are shallow-merged over the preset's.

The choice: an alias names no model the proxy can check (the family's newest changes with time and
its name is no prefix of its models': ``~google/gemini-flash-latest`` is gemini-3-flash-preview),
so it matches only a rule that names it as written (``~anthropic/claude-haiku-latest``, or
``~anthropic/*``), never one for plain names; a preset's models are OpenRouter's settings, not the
request's, so any use of one is refused where models are restricted (one named as written by a
rule, ``@preset/slug``, excepted); the refusal says why and what to do. Unrestricted, both are
metered at the model the response names.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.model_rules import in_form_of
from addon.policies import parse_policies
from addon.record import CallRecord
from tests.test_meter import make_flow, run_request

CHAT = "https://openrouter.ai/api/v1/chat/completions"
HAIKU_ONLY = 'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
ALIAS_NAMED = (
    "environments:\n  development:\n"
    '    models: {allow: ["~anthropic/claude-haiku-latest"], on_disallowed: block}\n'
)
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


async def asked(meter: Meter, body: dict) -> http.HTTPFlow:
    flow = make_flow(CHAT, {**body, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(meter, flow)
    return flow


def refusal_of(flow: http.HTTPFlow) -> str:
    assert flow.response is not None and flow.response.status_code == 403
    return json.loads(flow.response.text or "{}")["error"]["message"]


# -- ~vendor/family-latest ------------------------------------------------------------------------


async def test_an_alias_is_refused_by_a_rule_for_plain_names_saying_why_and_what_to_do(meter: Meter) -> None:
    """Before: refused with the bare "model ~anthropic/claude-haiku-latest is not allowed" (the
    caller could not tell that naming the alias in policies.yaml, or the model, would do)."""
    meter._apply(parse_policies(HAIKU_ONLY))
    message = refusal_of(await asked(meter, {"model": "~anthropic/claude-haiku-latest"}))
    assert "OpenRouter's alias for the newest model of a family" in message
    assert '"~anthropic/claude-haiku-latest"' in message  # how to allow it by name
    assert "anthropic/claude-haiku-4.5" not in message  # no model guessed for it


async def test_an_alias_named_by_a_rule_is_let_through_as_written(meter: Meter) -> None:
    meter._apply(parse_policies(ALIAS_NAMED))
    flow = await asked(meter, {"model": "~anthropic/claude-haiku-latest"})
    assert flow.response is None
    assert json.loads(flow.request.text or "{}")["model"] == "~anthropic/claude-haiku-latest"
    other = await asked(meter, {"model": "~anthropic/claude-opus-latest"})
    assert "OpenRouter's alias" in refusal_of(other)


async def test_an_alias_downgraded_by_name_is_sent_in_openrouters_form(meter: Meter) -> None:
    """Before: the plain target was sent as written, "claude-haiku-4-5", an id OpenRouter does not
    list (a 400 upstream)."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    models:\n      allow: [claude-haiku-*]\n"
            '      downgrade: {"~anthropic/claude-opus-latest": claude-haiku-4-5}\n'
        )
    )
    flow = await asked(meter, {"model": "~anthropic/claude-opus-latest"})
    assert flow.response is None
    assert json.loads(flow.request.text or "{}")["model"] == "anthropic/claude-haiku-4.5"


@pytest.mark.parametrize(
    ("requested", "target", "sent"),
    [
        ("~anthropic/claude-opus-latest", "claude-haiku-4-5", "anthropic/claude-haiku-4.5"),
        ("~openai/gpt-latest", "gpt-4o-mini", "openai/gpt-4o-mini"),
        ("~google/gemini-flash-latest", "gemini-2.5-flash", "google/gemini-2.5-flash"),
        ("~anthropic/claude-opus-latest", "openai/gpt-4o-mini", "openai/gpt-4o-mini"),  # as written
        ("~someone/model-latest", "unknown-model", None),  # whose model it is: not knowable
    ],
)
def test_a_plain_target_for_an_alias_takes_openrouters_form(
    requested: str, target: str, sent: str | None
) -> None:
    assert in_form_of(requested, target, "openrouter") == sent


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["@preset/email-copywriter", "anthropic/claude-haiku-4.5@preset/email-copywriter"]
)
async def test_a_preset_as_the_model_is_refused_saying_why_and_what_to_do(meter: Meter, model: str) -> None:
    meter._apply(parse_policies(HAIKU_ONLY))
    message = refusal_of(await asked(meter, {"model": model}))
    assert "OpenRouter preset email-copywriter" in message
    assert "send the model itself" in message


async def test_a_preset_field_beside_an_allowed_model_is_refused(meter: Meter) -> None:
    """The preset's settings are shallow-merged under the request's: its fallback ``models`` and
    its tools (advisors, sub-agents) run models the request does not show. Before: let through
    (anthropic/claude-haiku-4.5 is allowed), the preset's models unchecked."""
    meter._apply(parse_policies(HAIKU_ONLY))
    flow = await asked(meter, {"model": "anthropic/claude-haiku-4.5", "preset": "email-copywriter"})
    message = refusal_of(flow)
    assert "OpenRouter preset email-copywriter" in message and "send the model itself" in message


async def test_without_a_preset_the_same_call_goes_through(meter: Meter) -> None:
    meter._apply(parse_policies(HAIKU_ONLY))
    flow = await asked(meter, {"model": "anthropic/claude-haiku-4.5"})
    assert flow.response is None


# -- unrestricted: metered at the model the response names ---------------------------------------


async def answered(meter: Meter, body: dict, answer: dict) -> CallRecord:
    flow = await asked(meter, body)
    assert flow.response is None
    flow.response = http.Response.make(200, json.dumps(answer).encode(), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    meter.pricer(row)
    return row


def completion(usage: dict) -> dict:
    return {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "anthropic/claude-haiku-4.5",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": usage,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"model": "~anthropic/claude-haiku-latest"},
        {"model": "@preset/email-copywriter"},
        {"model": "openai/gpt-4o@preset/email-copywriter"},
        {"model": "openai/gpt-4o", "preset": "email-copywriter"},
    ],
)
async def test_unrestricted_it_is_priced_at_the_model_the_response_names(meter: Meter, body: dict) -> None:
    """1,000 input and 200 output tokens of claude-haiku-4.5 ($1 / $5 per 1M): $0.002."""
    meter._apply(parse_policies(BUDGET_ONLY))
    row = await answered(meter, body, completion({"prompt_tokens": 1000, "completion_tokens": 200}))
    # The preset field is read as OpenRouter runs it: {"model": m, "preset": s} is m@preset/s.
    requested = body["model"] + (f"@preset/{body['preset']}" if "preset" in body else "")
    assert (row.model_requested, row.model_reported) == (requested, "anthropic/claude-haiku-4.5")
    assert row.cost_usd == Decimal("0.002") and row.price_status == "priced"


async def test_unrestricted_openrouters_own_cost_stands(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGET_ONLY))
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "cost": 0.0021}
    row = await answered(meter, {"model": "@preset/email-copywriter"}, completion(usage))
    assert row.model_reported == "anthropic/claude-haiku-4.5" and row.cost_usd == Decimal("0.0021")


async def test_a_preset_field_through_a_gateway_in_front_of_openrouter_is_refused(meter: Meter) -> None:
    """A providers: gateway priced as OpenRouter passes the body on, the preset field with it."""
    gateway = (
        'providers:\n  litellm: {url: "https://llm.internal.example", api: openai,'
        " pricing_provider: openrouter}\n"
    )
    meter._apply(parse_policies(gateway + HAIKU_ONLY))
    body = {"model": "anthropic/claude-haiku-4.5", "preset": "email-copywriter", "messages": []}
    flow = make_flow("https://llm.internal.example/v1/chat/completions", body)
    await run_request(meter, flow)
    assert "OpenRouter preset email-copywriter" in refusal_of(flow)
