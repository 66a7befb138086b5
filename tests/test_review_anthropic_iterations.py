"""A review of 57fa514 (Anthropic's ``usage.iterations`` metered) and 4002a9a (the advisor tool
and server-side fallbacks held to the allowlist and reserved): tests that fail on those commits.
"""

from __future__ import annotations

import json
from decimal import Decimal

from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import batches
from addon.providers.anthropic_api import parse_response
from tests import test_meter
from tests.test_meter import make_flow, run_request, sent_body

MESSAGES = "https://api.anthropic.com/v1/messages"
MESSAGE_BATCHES = "https://api.anthropic.com/v1/messages/batches"
KEY = "sk-ant-api03-" + "a" * 40
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-6"  # $5 / $25 per 1M input / output
FABLE = "claude-fable-5"  # $10 / $50
FALLBACK = "claude-opus-4-8"  # $5 / $25
HAIKU_ONLY = 'environments:\n  development:\n    models: {allow: ["claude-haiku-*"], on_disallowed: block}\n'
GATEWAY = (
    "providers:\n"
    '  gateway: {url: "https://llm.internal.example", api: anthropic, pricing_provider: anthropic}\n'
)


def advisor(model: str = OPUS, **caps: int) -> dict:
    return {"type": "advisor_20260301", "name": "advisor", "model": model, **caps}


def entry(kind: str, model: str | None, inp: int, out: int, read: int = 0, write: int = 0) -> dict:
    found = {
        "type": kind,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    return found if model is None else {**found, "model": model}


def message(usage: dict, model: str = HAIKU, stop_reason: str = "end_turn") -> bytes:
    return json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "done"}],
            "stop_reason": stop_reason,
            "usage": usage,
        }
    ).encode()


def _anthropic_flow(url: str, body: dict, beta: str | None = None) -> http.HTTPFlow:
    headers = dict(HEADERS)
    if beta is not None:
        headers["anthropic-beta"] = beta
    flow = make_flow(url, body, headers=headers)
    del flow.request.headers["authorization"]
    return flow


def usd(tokens: int, per_million: str) -> Decimal:
    return Decimal(tokens) * Decimal(per_million) / 1_000_000


# -- allowlist ------------------------------------------------------------------------------


async def test_an_advisor_on_an_anthropic_compatible_gateway_is_held_to_the_allowlist(meter: Meter) -> None:
    """README's own example ``gateway: {url: ..., api: anthropic, pricing_provider: anthropic}``
    (a corporate gateway or LiteLLM in front of Anthropic) passes the advisor tool on as it came.
    The check is gated on ``provider.name == "anthropic"``, so on the gateway (named ``gateway``)
    a haiku-only environment (blocked) lets claude-opus-4-6 run as the advisor, unchecked and
    unreserved; the same gateway's ``fallbacks`` IS checked (fallback_models is inherited), so
    only the advisor slips through. The user sees Opus advisor spend in an environment whose
    policy says haiku only."""
    meter._apply(parse_policies(GATEWAY + HAIKU_ONLY))
    body = {"model": HAIKU, "max_tokens": 100, "messages": [], "tools": [advisor()]}
    flow = _anthropic_flow("https://llm.internal.example/v1/messages", body, "advisor-tool-2026-03-01")
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and state.record.provider == "gateway"
    if flow.response is None:  # let through: then the advisor must be an allowed model
        [tool] = sent_body(flow)["tools"]
        assert str(tool.get("model", "")).startswith("claude-haiku-"), tool


async def test_an_advisor_tool_in_a_message_batch_is_held_to_the_allowlist(meter: Meter) -> None:
    """A Message Batch's requests are checked by ``params.model`` alone (batches.read_inline):
    a request whose advisor tool names claude-opus-4-6 goes upstream from a haiku-only
    environment (blocked), as the plain Messages call 4002a9a now refuses. The user sees Opus
    advisor tokens billed on a batch the allowlist was meant to hold to haiku."""
    meter._apply(parse_policies(HAIKU_ONLY))
    params = {"model": HAIKU, "max_tokens": 100, "messages": [], "tools": [advisor()]}
    body = {"requests": [{"custom_id": "q0", "params": params}]}
    flow = _anthropic_flow(MESSAGE_BATCHES, body, "advisor-tool-2026-03-01")
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


DOWNGRADE = """
environments:
  development:
    models:
      allow: ["claude-haiku-*", "claude-sonnet-*"]
      on_disallowed: downgrade
      downgrade: {"claude-opus-*": claude-sonnet-4-5}
"""
# Anthropic's advisor tool page: "The executor model ... and the advisor model ... must form a valid
# pair. The advisor must be at least as capable as the executor." Its table names Claude Opus 4.8
# and Opus 4.7 as the advisors of Haiku 4.5, Sonnet 4.6 and Opus 4.6.
ADVISORS_OF_HAIKU = ("claude-opus-4-8", "claude-opus-4-7")


async def test_an_advisor_downgrade_never_sends_a_pair_anthropic_rejects(meter: Meter) -> None:
    """4002a9a downgrades a disallowed advisor by writing the environment's downgrade target in as
    ``tools[i].model`` whatever that target is: here claude-opus-4-8 (a valid advisor of haiku)
    becomes claude-sonnet-4-5, which is no advisor model of any executor. Anthropic answers 400
    to that pair, so a call the policy meant to let through (downgraded) fails upstream, after the
    proxy told the client (X-Tokometer-Notice) it was downgraded. A target that cannot advise the
    executor should refuse the call (403, naming the advisor) instead."""
    meter._apply(parse_policies(DOWNGRADE))
    body = {"model": HAIKU, "max_tokens": 100, "messages": [], "tools": [advisor("claude-opus-4-8")]}
    flow = _anthropic_flow(MESSAGES, body, "advisor-tool-2026-03-01")
    await run_request(meter, flow)
    if flow.response is None:
        [tool] = sent_body(flow)["tools"]
        assert tool["model"] in ADVISORS_OF_HAIKU, f"an advisor pair Anthropic rejects: {tool}"
    else:
        assert flow.response.status_code == 403


FABLE_DOWNGRADED = """
environments:
  development:
    models:
      allow: ["claude-haiku-*", "claude-opus-*"]
      on_disallowed: downgrade
      downgrade: {"claude-fable-*": claude-opus-4-8}
"""


async def test_a_downgraded_call_never_falls_back_to_the_model_it_now_runs(meter: Meter) -> None:
    """Anthropic's own recommended setup: ``claude-fable-5`` with ``fallbacks: [{"model":
    "claude-opus-4-8"}]``. In an environment downgrading fable to opus-4-8 the proxy rewrites
    ``model`` and leaves ``fallbacks`` as it is (its entry is allowed): the request sent is
    opus-4-8 falling back to opus-4-8. Anthropic's SDK: "Some models don't support fallbacks; on
    those models, a list of fallback models returns a 400 error", and a fallback to the model
    that just declined is none anyway: the user's downgraded call fails upstream (or retries the
    same refusal) where it should have gone through without the list, or been refused."""
    meter._apply(parse_policies(FABLE_DOWNGRADED))
    fallbacks = [{"model": FALLBACK}]
    body = {"model": FABLE, "max_tokens": 100, "messages": [], "fallbacks": fallbacks}
    flow = _anthropic_flow(MESSAGES, body, "server-side-fallback-2026-07-01")
    await run_request(meter, flow)
    if flow.response is None:
        sent = sent_body(flow)
        assert sent["model"] == FALLBACK  # the downgrade
        listed = sent.get("fallbacks") or []
        assert all(e.get("model") != sent["model"] for e in listed), f"{sent['model']} falls back to itself"
    else:
        assert flow.response.status_code == 403


# -- metering -------------------------------------------------------------------------------


def test_a_message_batch_results_compaction_tokens_are_counted() -> None:
    """The batch results reader (batches.ResultsReader) reads each line's top-level usage only:
    a succeeded request whose compaction read 3,000 and wrote 400 tokens (not in the top-level
    usage, Anthropic's SDK says, which 57fa514 acts on for plain and streamed calls) is billed
    100 in and 40 out, the compaction lost."""
    usage = {
        "input_tokens": 100,
        "output_tokens": 40,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "iterations": [entry("compaction", None, 3000, 400), entry("message", None, 100, 40)],
    }
    line = {
        "custom_id": "q0",
        "result": {
            "type": "succeeded",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": HAIKU,
                "content": [{"type": "text", "text": "done"}],
                "stop_reason": "end_turn",
                "usage": usage,
            },
        },
    }
    reader = batches.ResultsReader()
    reader.feed(json.dumps(line).encode() + b"\n")
    reader.close()
    [(key, found)] = reader.usage_by_model().items()
    assert key[0] == HAIKU
    assert (found.input_tokens, found.output_tokens) == (3100, 440)


def test_a_chain_whose_every_hop_declined_prices_each_hop_at_its_model() -> None:
    """Every hop declined (no ``fallback_message``: stop_reason refusal), the top-level usage the
    sum of both hops: fable wrote 5 tokens, then the fallback claude-opus-4-8 wrote 400 before it
    refused too (a refusal after output is billed). 57fa514 splits the hops off only when a
    fallback served the answer, so here all 405 output tokens are priced at fable's $50 (the
    model echoed) instead of opus's 400 at $25: the user is overcharged about $0.01 a call, and
    no row says opus ran."""
    hops = [entry("message", FABLE, 100, 5), entry("message", FALLBACK, 100, 400)]
    usage = {"input_tokens": 200, "output_tokens": 405, "iterations": hops}
    metered = parse_response("messages", message(usage, model=FABLE, stop_reason="refusal"))
    assert metered.usage is not None
    # The row priced at fable's rates carries fable's hop only; opus's is a row of its own.
    assert (metered.usage.input_tokens, metered.usage.output_tokens) == (100, 5)
    assert metered.iterations is not None
    assert dict(metered.iterations.declined).get(FALLBACK) is not None


# -- budgets --------------------------------------------------------------------------------

BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


async def test_a_fallback_chain_reserves_the_declined_hop_and_the_fallback_together(meter: Meter) -> None:
    """A mid-stream refusal is billed for what the declined model wrote, and the fallback then
    runs and is billed too (57fa514 meters exactly that: the declined hop's row at its own rates
    beside the served answer's). So a fable call (max_tokens 4,000: up to $0.20 of output) with an
    opus-4-8 fallback (4,000: $0.10) may cost $0.30, yet 4002a9a reserves the dearest of the two
    alone ($0.20): against a hard cap, calls started together pass that the cap has no room for,
    and the user's budget is overshot by a third of each such call."""
    meter._apply(parse_policies(BUDGET_ONLY))
    fallbacks = [{"model": FALLBACK, "max_tokens": 4000}]
    body = {"model": FABLE, "max_tokens": 4000, "messages": [], "fallbacks": fallbacks}
    reserved = await test_meter.reserved_for(meter, MESSAGES, body, HEADERS)
    assert reserved >= usd(4000, "50") + usd(4000, "25"), reserved


async def answered(meter: Meter, body: bytes, request: dict) -> list:
    flow = _anthropic_flow(MESSAGES, request)
    await run_request(meter, flow)
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    return meter.store.records  # type: ignore[union-attr]


async def test_a_split_off_hop_leaves_the_served_rows_hour_long_cache_writes_within_its_writes(
    meter: Meter,
) -> None:
    """The top-level usage (the sum of both hops) says 1,000 cache writes, all kept an hour
    (``cache_creation.ephemeral_1h_input_tokens``); the declined fable hop's 600 are taken off the
    served row's writes but not off its hour-long writes (the iteration entries carry no
    ``cache_creation`` breakdown): the served row has 1,000 hour-long writes out of 400 writes.
    genai-prices refuses that usage ("cache_write_1h_tokens (1000) cannot exceed
    cache_write_tokens (400)"), so the row the fallback served is left unpriced: the user's
    budget and reports never see what opus-4-8 cost (price_status "error", cost None)."""
    usage = {
        "input_tokens": 20,
        "output_tokens": 301,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_1h_input_tokens": 1000, "ephemeral_5m_input_tokens": 0},
        "iterations": [
            entry("message", FABLE, 10, 1, write=600),
            entry("fallback_message", FALLBACK, 10, 300, write=400),
        ],
    }
    request = {"model": FABLE, "max_tokens": 500, "messages": []}
    rows = await answered(meter, message(usage, model=FABLE), request)
    [served] = [r for r in rows if r.model_reported == FALLBACK]
    assert (served.cache_write_1h_tokens or 0) <= (served.cache_write_tokens or 0), (
        served.cache_write_1h_tokens,
        served.cache_write_tokens,
    )
    meter.pricer(served)
    assert served.cost_usd is not None, served.price_status


OPENROUTER_HAIKU_ONLY = (
    'environments:\n  development:\n    models: {allow: ["anthropic/claude-haiku-*"], on_disallowed: block}\n'
)


async def test_openrouters_advisor_server_tool_is_held_to_the_allowlist(meter: Meter) -> None:
    """The same kind of tool elsewhere: OpenRouter's ``openrouter:advisor`` server tool
    (``{"type": "openrouter:advisor", "parameters": {"model": ...}}``, OpenRouter's "Advisor"
    guide) has the executor consult another model mid-generation, billed at its rates. 4002a9a
    reads advisor tools on Anthropic's host only, so a haiku-only environment (blocked) lets an
    OpenRouter haiku call consult claude-fable-5 ($10 / $50), unchecked."""
    meter._apply(parse_policies(OPENROUTER_HAIKU_ONLY))
    tool = {"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}
    body = {"model": "anthropic/claude-haiku-4.5", "messages": [], "tools": [tool]}
    flow = make_flow("https://openrouter.ai/api/v1/chat/completions", body)
    await run_request(meter, flow)
    if flow.response is None:  # let through: then the advisor must be an allowed model
        [sent] = sent_body(flow)["tools"]
        assert str(sent["parameters"].get("model", "")).startswith("anthropic/claude-haiku-"), sent
