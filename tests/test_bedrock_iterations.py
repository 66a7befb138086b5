"""Bedrock InvokeModel / InvokeModelWithResponseStream of an Anthropic model: its ``usage.iterations``
read as the Anthropic API's are (``anthropic_api.read_iterations``).

Bedrock's InvokeModel returns the Anthropic Messages body as it is. AWS's compaction guide
(docs.aws.amazon.com/bedrock/latest/userguide/claude-messages-compaction.html): compaction is
supported with InvokeModel, not with Converse, and "the top-level input_tokens and output_tokens in
the usage field do not include compaction iteration usage ... sum across all entries in the
usage.iterations array". Before, the Bedrock parser read the top-level usage (or the token-count
headers, or the stream's invocation metrics) alone: a compaction of 3,000 input and 400 output
tokens on a call of 100 / 40 was metered as 100 / 40.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.providers.bedrock_api import parse_response
from addon.record import CallRecord
from addon.usage import Usage
from tests.test_anthropic_iterations import ADVISED, ADVISOR, FABLE, FALLBACK, entry
from tests.test_bedrock_parser import chunk, run
from tests.test_meter import make_flow, run_request

PROFILE = "us.anthropic.claude-haiku-4-5-20251001-v1:0"  # regional: $1.10 / $5.50 per 1M
INVOKE = f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{PROFILE}/invoke"
SIGNATURE = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY000001/20261128/us-east-1/bedrock/aws4_request"
# Bedrock's token-count headers as they would mirror the top-level usage (100 in, 40 out).
TOP_HEADERS = {
    "content-type": "application/json",
    "X-Amzn-Bedrock-Input-Token-Count": "100",
    "X-Amzn-Bedrock-Output-Token-Count": "40",
}
COMPACTED = {
    "input_tokens": 100,
    "output_tokens": 40,
    "iterations": [entry("compaction", None, 3000, 400, write=200), entry("message", None, 100, 40)],
}
COMPACTED_USAGE = Usage(input_tokens=3300, cache_write_tokens=200, output_tokens=440)


def body(usage: dict, model: str = "claude-haiku-4-5-20251001") -> bytes:
    return json.dumps(
        {
            "id": "msg_bdrk_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "done"}],
            "stop_reason": "end_turn",
            "usage": usage,
        }
    ).encode()


@pytest.mark.parametrize("headers", [{"content-type": "application/json"}, TOP_HEADERS])
def test_an_invoke_bodys_compaction_is_counted(headers: dict[str, str]) -> None:
    """Before: 100 input and 40 output (from the body, or from the headers that win over it)."""
    metered = parse_response("invoke", body(COMPACTED), headers)
    assert metered.usage == COMPACTED_USAGE
    assert metered.iterations is not None and metered.iterations.compaction == Usage(
        input_tokens=3200, cache_write_tokens=200, output_tokens=400
    )


def test_an_invoke_body_without_iterations_keeps_the_headers_counts() -> None:
    headers = {**TOP_HEADERS, "X-Amzn-Bedrock-Input-Token-Count": "90"}
    metered = parse_response("invoke", body({"input_tokens": 100, "output_tokens": 40}), headers)
    assert metered.usage == Usage(input_tokens=90, output_tokens=40) and metered.iterations is None
    tool_loop = {"input_tokens": 100, "output_tokens": 40, "iterations": [entry("message", None, 50, 20)] * 2}
    metered = parse_response("invoke", body(tool_loop), headers)  # iterations that say nothing more
    assert metered.usage == Usage(input_tokens=90, output_tokens=40) and metered.iterations is None


def test_an_invoke_bodys_advisor_and_fallback_entries_are_read_as_anthropics() -> None:
    metered = parse_response("invoke", body(ADVISED), TOP_HEADERS)
    assert metered.usage == Usage(input_tokens=30, output_tokens=70)  # the executor's alone
    assert metered.iterations is not None and metered.iterations.advisors == (
        (ADVISOR, Usage(input_tokens=900, cache_read_tokens=100, output_tokens=500)),
    )
    hops = [entry("message", FABLE, 100, 1), entry("fallback_message", FALLBACK, 100, 300)]
    metered = parse_response(
        "invoke", body({"input_tokens": 200, "output_tokens": 301, "iterations": hops}, FABLE), {}
    )
    assert metered.iterations is not None and metered.iterations.served_by == FALLBACK
    assert metered.usage == Usage(input_tokens=100, output_tokens=300)
    assert metered.iterations.declined == ((FABLE, Usage(input_tokens=100, output_tokens=1)),)


def test_converse_is_left_alone() -> None:
    """Converse has its own usage shape and no compaction (AWS): an ``iterations`` key is not read."""
    converse = {"usage": {"inputTokens": 100, "outputTokens": 40, "iterations": COMPACTED["iterations"]}}
    metered = parse_response("converse", json.dumps(converse).encode(), {})
    assert metered.usage == Usage(input_tokens=100, output_tokens=40) and metered.iterations is None


def stream_events(delta_usage: dict[str, Any], metrics: bool = True) -> list[dict[str, Any]]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_bdrk_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [],
            "usage": {"input_tokens": 100, "output_tokens": 1},
        },
    }
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "done"}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta_usage}
    stop: dict[str, Any] = {"type": "message_stop"}
    if metrics:  # Bedrock's invocation metrics, as they would mirror the top-level usage
        stop["amazon-bedrock-invocationMetrics"] = {"inputTokenCount": 100, "outputTokenCount": 40}
    return [start, text, delta, stop]


@pytest.mark.parametrize("metrics", [True, False])
def test_an_invoke_streams_compaction_is_counted(metrics: bool) -> None:
    """The final message_delta carries the iterations. Before: 100 / 40 (the metrics, or the
    Anthropic counts)."""
    data = b"".join(chunk(e) for e in stream_events({"output_tokens": 40, **COMPACTED}, metrics))
    for piece in (7, len(data)):
        result = run("invoke_stream", [data[i : i + piece] for i in range(0, len(data), piece)])
        assert result.usage == COMPACTED_USAGE, piece
        assert result.iterations is not None and result.output_partial is False
    assert parse_response("invoke_stream", data, {}).usage == COMPACTED_USAGE  # read whole


def test_an_invoke_stream_without_iterations_keeps_the_metrics() -> None:
    data = b"".join(chunk(e) for e in stream_events({"output_tokens": 41}))
    result = run("invoke_stream", [data])
    assert result.usage == Usage(input_tokens=100, output_tokens=40) and result.iterations is None


def test_an_invoke_streams_advisor_entries_are_read() -> None:
    data = b"".join(chunk(e) for e in stream_events({"output_tokens": 70, **ADVISED}))
    result = run("invoke_stream", [data])
    assert result.usage == Usage(input_tokens=30, output_tokens=70)
    assert result.iterations is not None and result.iterations.advisors[0][0] == ADVISOR


# -- through the meter --------------------------------------------------------------------------


def usd(tokens: int, per_million: str) -> Decimal:
    return Decimal(tokens) * Decimal(per_million) / 1_000_000


async def invoked(meter: Meter, answer: bytes, headers: dict[str, str]) -> list[CallRecord]:
    flow = make_flow(
        INVOKE,
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": []},
        headers={"authorization": SIGNATURE},
    )
    await run_request(meter, flow)
    flow.response = http.Response.make(200, answer, headers)
    meter.responseheaders(flow)
    await meter.response(flow)
    rows = meter.store.records  # type: ignore[union-attr]
    for row in rows:
        meter.pricer(row)
    return rows


async def test_a_compacted_invoke_call_is_metered_and_priced_whole(meter: Meter) -> None:
    """Before: 100 input, 40 output ($0.00033); now 3,300 input (200 of them cache writes) and 440
    output at the profile's regional rates."""
    [row] = await invoked(meter, body(COMPACTED), TOP_HEADERS)
    assert (row.provider, row.model_sent) == ("aws", PROFILE)
    assert (row.input_tokens, row.cache_write_tokens, row.output_tokens) == (3300, 200, 440)
    assert row.cost_usd == usd(3100, "1.10") + usd(200, "1.375") + usd(440, "5.50")


async def test_an_advised_invoke_call_is_two_rows(meter: Meter) -> None:
    rows = await invoked(meter, body(ADVISED), TOP_HEADERS)
    assert sorted((r.model_reported or r.model_sent, r.input_tokens, r.output_tokens) for r in rows) == [
        (ADVISOR, 900, 500),
        (PROFILE, 30, 70),
    ]
    [advisor] = [r for r in rows if r.model_reported == ADVISOR]
    assert advisor.provider == "aws" and advisor.cost_usd is not None and advisor.cost_usd > 0
