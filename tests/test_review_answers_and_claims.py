"""Reservations for several answers, fallback model lists and APP_ENV attribution.

Found by an independent review of the changes that added them; each test failed before its fix.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from mitmproxy import http

from addon.api_keys import key_fingerprint
from addon.attribution import attribute
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_attribution import proc
from tests.test_meter import (
    CHAT_URL,
    DAY_BUDGET,
    GEMINI_PRO,
    VERTEX_PRO,
    make_flow,
    output_usd,
    reserved_for,
    run_request,
)

GEMINI_HEADERS = {"x-goog-api-key": "AIza-test-0123456789"}


# -- 5c038ae: candidateCount / the output cap in the other spelling Google's parser takes ----------


@pytest.mark.parametrize(
    ("url", "config"),
    [
        # proto3 JSON: a parser takes the lowerCamelCase name AND the proto field name of EVERY
        # field, at any depth; the commit reads only all-camel or all-snake pairs.
        (
            f"{GEMINI_PRO}:generateContent",
            {"generationConfig": {"maxOutputTokens": 8000, "candidate_count": 8}},
        ),
        (
            f"{GEMINI_PRO}:generateContent",
            {"generation_config": {"max_output_tokens": 8000, "candidateCount": 8}},
        ),
        (
            f"{VERTEX_PRO}:streamGenerateContent",
            {"generationConfig": {"maxOutputTokens": 8000, "candidate_count": 8}},
        ),
    ],
)
async def test_gemini_candidate_count_in_mixed_spelling_is_reserved(
    meter: Meter, url: str, config: dict
) -> None:
    meter._apply(parse_policies(DAY_BUDGET))
    reserved = await reserved_for(meter, url, {"contents": [], **config}, GEMINI_HEADERS)
    assert reserved >= output_usd(8 * 8000, "10"), f"reserved {reserved} for up to 64,000 output tokens"


@pytest.mark.parametrize(
    "config",
    [
        {"generationConfig": {"max_output_tokens": 60000}},
        {"generation_config": {"maxOutputTokens": 60000}},
    ],
)
async def test_gemini_output_cap_in_mixed_spelling_is_reserved(meter: Meter, config: dict) -> None:
    """A cap above the p90 read in neither spelling pair: the call reserves 1,000 tokens of 60,000."""
    meter._apply(parse_policies(DAY_BUDGET))
    reserved = await reserved_for(
        meter, f"{GEMINI_PRO}:generateContent", {"contents": [], **config}, GEMINI_HEADERS
    )
    assert reserved >= output_usd(60000, "10"), f"reserved {reserved} for up to 60,000 output tokens"


# -- 5c038ae: the p90 history is of calls (n answers summed), now multiplied by n again ------------


def _finish_n_call(meter: Meter, n: int, per_answer: int) -> None:
    body = {"model": "gpt-4o", "n": n, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(CHAT_URL, body)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": n * per_answer,
            "total_tokens": 10 + n * per_answer,
        },
    }
    return flow, answer


async def test_p90_history_of_n_answer_calls_is_not_multiplied_twice(meter: Meter) -> None:
    """21 uncapped n=4 calls each wrote 4 x 2,000 tokens. The history keeps 8,000 per CALL, and
    reserved() is now read as per ANSWER: a new n=4 uncapped call reserves 4 x 8,000 = 32,000 output
    tokens (4x what such calls write), and a one-answer call 8,000 (4x)."""
    for _ in range(21):
        flow, answer = _finish_n_call(meter, 4, 2000)
        await run_request(meter, flow)
        flow.response = http.Response.make(
            200, json.dumps(answer).encode(), {"content-type": "application/json"}
        )
        meter.responseheaders(flow)
        await meter.response(flow)
    records = list(meter.store.records)  # type: ignore[union-attr]
    assert len(records) == 21 and all(r.output_tokens == 8000 for r in records)
    meter._on_finished(records)
    meter._apply(parse_policies(DAY_BUDGET))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    four = await reserved_for(meter, CHAT_URL, {**body, "n": 4})
    one = await reserved_for(meter, CHAT_URL, {**body, "n": 1})
    # three more answers of ~2,000 tokens each (what these calls' answers are), not 3 x 8,000
    assert four - one == output_usd(3 * 2000, "10"), f"{four - one} reserved for 3 more answers"


# -- 1b9f1c8: another provider's `models` fallback list (Perplexity's Agent API) ------------------

PERPLEXITY_RESPONSES = "https://api.perplexity.ai/v1/responses"


async def test_perplexity_models_list_is_held_to_the_allowlist(meter: Meter) -> None:
    """Perplexity's Agent API (metered here as the 'responses' flavor of api.perplexity.ai) takes a
    `models` list of up to 5, which TAKES PRECEDENCE over `model` (docs.perplexity.ai, Model
    Fallback). Only OpenRouter's list is checked: `model: sonar` passes the allowlist and
    claude-opus runs."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    models: {allow: ['sonar*'], on_disallowed: block}\n"
        )
    )
    body = {"model": "sonar", "models": ["anthropic/claude-opus-4.1"], "input": "hi"}
    flow = make_flow(PERPLEXITY_RESPONSES, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403, "claude-opus reached upstream"


# -- d65c68a: APP_ENV ignored ----------------------------------------------------------------------

DECLARED = parse_policies(
    f"""
default_environment: development
environments:
  development:
    models: {{allow: ["*-mini"], on_disallowed: block}}
  staging: {{}}
  production: {{}}
keys:
  ci:
    fingerprint: {key_fingerprint("sk-proj-review-key-0123456789abcd")}
    environment: staging
attribution:
  process_env:
    environment: [NODE_ENV, APP_ENV]
"""
)


def test_an_undeclared_first_variable_hides_a_declared_later_one() -> None:
    """process_env lists several names; jest sets NODE_ENV=test, the service sets APP_ENV=staging.
    The undeclared first value is dropped, and the declared APP_ENV is never looked at: the call
    lands in the default (development) instead of staging."""
    got = attribute(policies=DECLARED, process=proc(NODE_ENV="test", APP_ENV="staging"))
    assert (got.environment, got.environment_source) == ("staging", "process")


def test_a_key_bound_call_gets_no_error_about_an_app_env_that_played_no_part() -> None:
    """The key decides before the process: APP_ENV is never consulted, yet every such row now
    carries an error saying it was ignored and 'the next rule decides'."""
    key = "sk-proj-review-key-0123456789abcd"
    got = attribute(
        policies=DECLARED, api_key=key, fingerprint=key_fingerprint(key), process=proc(APP_ENV="test")
    )
    assert (got.environment, got.environment_source) == ("staging", "key")
    assert got.problems == []


async def test_a_legacy_completions_best_of_is_reserved_whole(meter: Meter) -> None:
    """README: a legacy completion's best_of (at most 20) is written and billed whole. The endpoint
    was not metered when this was written: nothing was reserved or checked."""
    meter._apply(parse_policies(DAY_BUDGET))
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "best_of": 20, "n": 1, "max_tokens": 4000}
    reserved = await reserved_for(meter, "https://api.openai.com/v1/completions", body)
    assert reserved >= output_usd(20 * 4000, "2")  # gpt-3.5-turbo-instruct: $2 per 1M output
