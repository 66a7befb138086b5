"""Anthropic's ``usage.iterations``: what the top-level usage leaves out, or prices at the wrong
model, metered exactly.

Before, only the top-level usage was read, priced at the answer's ``model`` (the model the caller
sent): a compaction's tokens (not in the top-level usage, per Anthropic's SDK) were never counted,
the advisor tool's tokens (``advisor_message`` entries, left out of the top-level usage, billed at
the advisor's rates) were never counted, and an answer served by a server-side fallback model was
priced at the model that declined it.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.providers import anthropic_api
from addon.providers.anthropic_api import StreamParser, parse_response
from addon.record import CallRecord
from addon.sse import SSEDecoder
from addon.usage import Usage
from tests.test_meter import feed, make_flow, run_request, stream_response

MESSAGES = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": "sk-ant-api03-" + "a" * 40, "anthropic-version": "2023-06-01"}
HAIKU = "claude-haiku-4-5"
ADVISOR = "claude-opus-4-6"  # $5 / $25 per 1M input / output
FABLE = "claude-fable-5"  # $10 / $50
FALLBACK = "claude-opus-4-8"  # $5 / $25


def entry(kind: str, model: str | None, inp: int, out: int, read: int = 0, write: int = 0) -> dict:
    found = {
        "type": kind,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    return found if model is None else {**found, "model": model}


def message(usage: dict, model: str = HAIKU) -> bytes:
    return json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "done"}],
            "stop_reason": "end_turn",
            "usage": usage,
        }
    ).encode()


ADVISED = {
    "input_tokens": 30,
    "output_tokens": 70,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
    "iterations": [
        entry("message", None, 10, 20),
        entry("advisor_message", ADVISOR, 800, 500, read=100),
        entry("message", None, 20, 50),
    ],
}


def test_a_compactions_tokens_are_added_to_the_top_level_usage() -> None:
    """Anthropic's SDK: "A `compaction` entry's tokens are not included in the top-level `usage`
    fields". Before: 100 input and 40 output counted, the compaction's 3,000 and 400 lost."""
    usage = {
        "input_tokens": 100,
        "output_tokens": 40,
        "iterations": [entry("compaction", None, 3000, 400, write=200), entry("message", None, 100, 40)],
    }
    metered = parse_response("messages", message(usage))
    assert metered.usage == Usage(input_tokens=3300, cache_write_tokens=200, output_tokens=440)


def test_advisor_tokens_are_told_apart_by_model_and_left_off_the_call() -> None:
    metered = parse_response("messages", message(ADVISED))
    assert metered.usage == Usage(input_tokens=30, output_tokens=70)  # the executor's alone
    assert metered.iterations is not None
    assert metered.iterations.advisors == (
        (ADVISOR, Usage(input_tokens=900, cache_read_tokens=100, output_tokens=500)),
    )


def test_a_fallback_served_answer_names_its_model_and_splits_off_the_declined_hop() -> None:
    """The top-level usage is the sum of both hops: the declined one (fable, 100 in, 1 out) goes to
    a row at its own rates, the rest is the fallback's."""
    hops = [entry("message", FABLE, 100, 1), entry("fallback_message", FALLBACK, 100, 300)]
    usage = {"input_tokens": 200, "output_tokens": 301, "iterations": hops}
    metered = parse_response("messages", message(usage, model=FABLE))
    assert metered.iterations is not None and metered.iterations.served_by == FALLBACK
    assert metered.usage == Usage(input_tokens=100, output_tokens=300)
    assert metered.iterations.declined == ((FABLE, Usage(input_tokens=100, output_tokens=1)),)


def test_a_top_level_usage_of_the_serving_hop_alone_is_never_split() -> None:
    """When the top-level usage is not the sum of the hops, the declined hop is not in it: nothing
    is taken off (never counted twice), nothing added (a refusal before any output is not billed)."""
    hops = [entry("message", FABLE, 100, 1), entry("fallback_message", FALLBACK, 100, 300)]
    usage = {"input_tokens": 100, "output_tokens": 300, "iterations": hops}
    top, iterations = anthropic_api.read_iterations(usage, Usage(input_tokens=100, output_tokens=300))
    assert top == Usage(input_tokens=100, output_tokens=300)
    assert iterations is not None and iterations.declined == () and iterations.served_by == FALLBACK


def test_plain_tool_loop_iterations_change_nothing() -> None:
    usage = {"input_tokens": 30, "output_tokens": 70, "iterations": [entry("message", None, 10, 20)] * 2}
    metered = parse_response("messages", message(usage))
    assert metered.usage == Usage(input_tokens=30, output_tokens=70) and metered.iterations is None


def sse(*events: dict) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def advised_stream(usage: dict) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": HAIKU,
            "content": [],
            "usage": {"input_tokens": 30, "output_tokens": 1},
        },
    }
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
    return sse(start, delta, {"type": "message_stop"})


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_a_streams_final_delta_carries_the_iterations(piece: int) -> None:
    data = advised_stream({"output_tokens": 70, "iterations": ADVISED["iterations"]})
    decoder, parser = SSEDecoder(), StreamParser("messages")
    for i in range(0, len(data), piece):
        for event in decoder.feed(data[i : i + piece]):
            parser.feed(event)
    for event in decoder.close():
        parser.feed(event)
    metered = parser.result()
    assert metered.usage == Usage(input_tokens=30, output_tokens=70)
    assert metered.iterations is not None and metered.iterations.advisors[0][0] == ADVISOR


def priced(meter: Meter, record: CallRecord) -> Decimal:
    meter.pricer(record)
    assert record.cost_usd is not None, record.price_status
    return record.cost_usd


def usd(tokens: int, per_million: str) -> Decimal:
    return Decimal(tokens) * Decimal(per_million) / 1_000_000


async def answered(meter: Meter, body: bytes, request: dict | None = None) -> list[CallRecord]:
    flow = make_flow(
        MESSAGES, request or {"model": HAIKU, "max_tokens": 100, "messages": []}, headers=HEADERS
    )
    del flow.request.headers["authorization"]
    await run_request(meter, flow)
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    return meter.store.records  # type: ignore[union-attr]


async def test_the_advisors_tokens_are_a_row_of_their_own_at_its_rates(meter: Meter) -> None:
    """Before: one row, haiku's 30 in and 70 out; the advisor's 900 input and 500 output tokens
    (Opus 4.6: about $0.017) were never counted."""
    rows = await answered(meter, message(ADVISED))
    [call] = [r for r in rows if r.model_reported == HAIKU]
    [advisor] = [r for r in rows if r.model_reported == ADVISOR]
    assert (call.input_tokens, call.output_tokens) == (30, 70)
    assert (advisor.input_tokens, advisor.cache_read_tokens, advisor.output_tokens) == (900, 100, 500)
    assert (advisor.provider, advisor.api_flavor, advisor.usage_source) == (
        "anthropic",
        "messages",
        "reported",
    )
    assert advisor.id != call.id and call.id in (advisor.error or "")
    # Opus 4.6: $5 per 1M input, $0.50 cache reads, $25 output
    assert priced(meter, advisor) == usd(800, "5") + usd(100, "0.5") + usd(500, "25")


async def test_a_fallback_served_answer_is_priced_at_the_fallback(meter: Meter) -> None:
    """The answer's ``model`` echoes the model sent (fable); a ``fallback_message`` entry says opus
    served it. Before: 100 input and 300 output priced at fable's $10 / $50 ($0.016), the row
    saying fable; now at opus's $5 / $25 ($0.008), the row saying opus."""
    usage = {
        "input_tokens": 100,
        "output_tokens": 300,
        "iterations": [entry("fallback_message", FALLBACK, 100, 300)],
    }
    [row] = await answered(
        meter, message(usage, model=FABLE), {"model": FABLE, "max_tokens": 500, "messages": []}
    )
    assert row.model_reported == FALLBACK
    assert priced(meter, row) == usd(100, "5") + usd(300, "25")


async def test_a_declined_hop_in_the_top_level_usage_is_priced_at_its_model(meter: Meter) -> None:
    hops = [entry("message", FABLE, 100, 10), entry("fallback_message", FALLBACK, 100, 300)]
    usage = {"input_tokens": 200, "output_tokens": 310, "iterations": hops}
    rows = await answered(
        meter, message(usage, model=FABLE), {"model": FABLE, "max_tokens": 500, "messages": []}
    )
    [served] = [r for r in rows if r.model_reported == FALLBACK]
    [declined] = [r for r in rows if r.model_reported == FABLE]
    assert (served.input_tokens, served.output_tokens) == (100, 300)
    assert priced(meter, declined) == usd(100, "10") + usd(10, "50")
    assert priced(meter, served) == usd(100, "5") + usd(300, "25")


async def test_a_streamed_advisor_call_is_two_rows(meter: Meter) -> None:
    flow = make_flow(
        MESSAGES, {"model": HAIKU, "max_tokens": 100, "messages": [], "stream": True}, headers=HEADERS
    )
    del flow.request.headers["authorization"]
    await run_request(meter, flow)
    stream_response(flow, meter)
    data = advised_stream({"output_tokens": 70, "iterations": ADVISED["iterations"]})
    assert feed(flow, data, 9) == data
    await meter.response(flow)
    rows = meter.store.records  # type: ignore[union-attr]
    assert sorted((r.model_reported, r.input_tokens, r.output_tokens) for r in rows) == [
        (HAIKU, 30, 70),
        (ADVISOR, 900, 500),
    ]


async def test_a_compaction_is_billed_on_the_calls_row(meter: Meter) -> None:
    usage = {"input_tokens": 100, "output_tokens": 40, "iterations": [entry("compaction", None, 3000, 400)]}
    [row] = await answered(meter, message(usage))
    assert (row.input_tokens, row.output_tokens) == (3100, 440)


# -- split invariants, batch results (after the review of 57fa514) ------------------------------


def test_hour_long_writes_follow_each_hops_own_breakdown_or_are_shared_by_writes() -> None:
    """An entry with a ``cache_creation`` breakdown keeps its own hour-long writes; the rest of the
    top-level usage's are shared among entries without one in proportion to their writes: every
    part within its writes, the parts summing to the whole."""
    with_breakdown = {
        **entry("message", FABLE, 10, 1, write=600),
        "cache_creation": {"ephemeral_1h_input_tokens": 100, "ephemeral_5m_input_tokens": 500},
    }
    usage = {
        "input_tokens": 20,
        "output_tokens": 301,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_1h_input_tokens": 400, "ephemeral_5m_input_tokens": 600},
        "iterations": [with_breakdown, entry("fallback_message", FALLBACK, 10, 300, write=400)],
    }
    metered = parse_response("messages", message(usage, model=FABLE))
    assert metered.usage is not None and metered.iterations is not None
    [(_, declined)] = metered.iterations.declined
    assert (declined.cache_write_tokens, declined.cache_write_1h_tokens) == (600, 100)
    assert (metered.usage.cache_write_tokens, metered.usage.cache_write_1h_tokens) == (400, 300)


def test_a_streamed_chain_whose_every_hop_declined_splits_at_the_model_echoed() -> None:
    hops = [entry("message", FABLE, 100, 5), entry("message", FALLBACK, 100, 400)]
    start = {
        "type": "message_start",
        "message": {"model": FABLE, "usage": {"input_tokens": 200, "output_tokens": 1}},
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "refusal"},
        "usage": {"input_tokens": 200, "output_tokens": 405, "iterations": hops},
    }
    raw = "".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (start, delta, {"type": "message_stop"})
    )
    parser = StreamParser("messages")
    for event in SSEDecoder().feed(raw.encode()):
        parser.feed(event)
    metered = parser.result()
    assert metered.usage is not None and metered.iterations is not None
    assert (metered.usage.input_tokens, metered.usage.output_tokens) == (100, 5)
    assert dict(metered.iterations.declined)[FALLBACK] == Usage(input_tokens=100, output_tokens=400)


def test_batch_results_meter_advisors_and_declined_hops_at_their_models() -> None:
    from addon.providers import batches

    usage = {
        "input_tokens": 200,
        "output_tokens": 305,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "iterations": [
            entry("message", FABLE, 100, 5),
            entry("advisor_message", ADVISOR, 800, 500),
            entry("fallback_message", FALLBACK, 100, 300),
        ],
    }
    result = {"type": "succeeded", "message": json.loads(message(usage, model=FABLE))}
    reader = batches.ResultsReader()
    reader.feed(json.dumps({"custom_id": "q0", "result": result}).encode() + b"\n")
    reader.close()
    found = {model: (u.input_tokens, u.output_tokens) for (model, _), u in reader.usage_by_model().items()}
    assert found == {FALLBACK: (100, 300), ADVISOR: (800, 500), FABLE: (100, 5)}
