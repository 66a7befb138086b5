"""Bedrock InvokeModel of Cohere's Command models: ``num_generations`` answers reserved, and every
generation's text read where the answer reports no usage.

The Bedrock user guide ("Cohere Command models", InvokeModel and InvokeModelWithResponseStream):
Command (``cohere.command-text-v14``, ``cohere.command-light-text-v14``) takes ``num_generations``,
"the maximum number of generations that the model should return", default 1, 1 to 5, each up to
``max_tokens``; its answer is ``{"generations": [{"id", "text", "finish_reason", ...}], "id",
"prompt"}``. Command R and R+ (``cohere.command-r-v1:0``, ``cohere.command-r-plus-v1:0``) document
no such field and answer one ``text``. Bedrock counts the call's tokens in its
``X-Amzn-Bedrock-*-Token-Count`` headers (all generations together). Before, a Command call asking
for 5 generations of up to 1,000 tokens reserved 1,000 output tokens, and an answer without the
headers was estimated from no text at all (the generations' texts were not read).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from meter_helpers import make_flow, run_request
from mitmproxy import http

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers.bedrock_api import parse_response
from addon.reservation import answers_asked
from addon.token_estimate import count_text
from addon.usage import Usage
from tests.test_meter import submitted

SIGNATURE = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY000001/20261128/us-east-1/bedrock/aws4_request"
RUNTIME = "https://bedrock-runtime.us-east-1.amazonaws.com/model"
COMMAND = "cohere.command-text-v14"
# genai-prices 0.2.3 has no Cohere Command price on Bedrock: given one here, $2 per 1M output.
BUDGET_AND_PRICES = (
    "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
    'prices:\n  "aws/cohere.command-*": {input: 1, output: 2}\n'
)
PROMPT = "Write a tagline for an ice cream shop."


def output_usd(tokens: int) -> Decimal:
    return Decimal(tokens) * 2 / 1_000_000


async def reserved(meter: Meter, model: str, body: dict[str, Any], operation: str = "invoke") -> Decimal:
    """What one InvokeModel call of ``model`` reserves against development's budget (then given back)."""
    flow = make_flow(f"{RUNTIME}/{model}/{operation}", body, headers={"authorization": SIGNATURE})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None
    amount = meter.enforcer.budgets.reserved()[Scope("environment", "development")]
    meter.enforcer.budgets.settle(meter.call_state(flow).record.id)  # type: ignore[union-attr]
    return amount


@pytest.mark.parametrize(
    ("model", "operation"),
    [
        (COMMAND, "invoke"),
        ("cohere.command-light-text-v14", "invoke-with-response-stream"),
    ],
)
async def test_command_generations_are_reserved_each_up_to_max_tokens(
    meter: Meter, model: str, operation: str
) -> None:
    """num_generations 5, max_tokens 1,000: 5,000 output tokens may be written (and billed), the
    prompt once. Before: 1,000 reserved, 4,000 x $2 per 1M ($0.008) short."""
    meter._apply(parse_policies(BUDGET_AND_PRICES))
    one = {"prompt": PROMPT, "max_tokens": 1000, "num_generations": 1}
    five = {**one, "num_generations": 5}
    difference = await reserved(meter, model, five, operation) - await reserved(meter, model, one, operation)
    assert difference == output_usd(4 * 1000)


async def test_a_command_call_of_several_generations_says_so_on_its_row(meter: Meter) -> None:
    flow = make_flow(
        f"{RUNTIME}/{COMMAND}/invoke",
        {"prompt": PROMPT, "max_tokens": 50, "num_generations": 3},
        headers={"authorization": SIGNATURE},
    )
    await run_request(meter, flow)
    assert meter.call_state(flow).record.answers == 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("flavor", "body", "answers"),
    [
        ("invoke", {"num_generations": 5}, 5),
        ("invoke_stream", {"num_generations": 2}, 2),
        ("invoke", {"num_generations": 10**6}, 5),  # 1 to 5 (the Bedrock user guide)
        ("invoke", {"num_generations": "3"}, 5),  # not a count: the most the API takes
        ("invoke", {"num_generations": 0}, 1),
        ("invoke", {"num_generations": None}, 1),
        ("invoke", {"num_generations": 2, "n": 4}, 4),
        # a field of Cohere's InvokeModel bodies only
        ("chat", {"num_generations": 5}, 1),
        ("converse", {"num_generations": 5}, 1),
        ("completions", {"num_generations": 5}, 1),
    ],
)
def test_num_generations_is_read_on_invoke_model_only(flavor: str, body: dict, answers: int) -> None:
    assert answers_asked(flavor, body) == answers


GENERATIONS = {
    "id": "5a1d-cohere",
    "prompt": PROMPT,
    "generations": [
        {"id": "g-0", "text": " Scoops of joy in every cone.", "finish_reason": "COMPLETE", "index": 0},
        {"id": "g-1", "text": " Cold treats, warm smiles.", "finish_reason": "COMPLETE", "index": 1},
        {"id": "g-2", "text": " Life is short: eat dessert first.", "finish_reason": "COMPLETE", "index": 2},
    ],
}
ALL_TEXT = "".join(g["text"] for g in GENERATIONS["generations"])  # type: ignore[index]


def test_the_headers_count_all_generations() -> None:
    headers = {"X-Amzn-Bedrock-Input-Token-Count": "9", "X-Amzn-Bedrock-Output-Token-Count": "27"}
    metered = parse_response("invoke", json.dumps(GENERATIONS).encode(), headers)
    assert metered.usage == Usage(input_tokens=9, output_tokens=27)


def test_without_headers_every_generations_text_is_read() -> None:
    """Before: output_text None (only a top-level ``text`` was read), so the estimate counted no output."""
    metered = parse_response("invoke", json.dumps(GENERATIONS).encode(), {})
    assert metered.usage is None
    assert metered.output_text == ALL_TEXT


async def test_a_command_answer_without_headers_is_estimated_from_all_its_generations(meter: Meter) -> None:
    flow = make_flow(
        f"{RUNTIME}/{COMMAND}/invoke",
        {"prompt": PROMPT, "max_tokens": 50, "num_generations": 3},
        headers={"authorization": SIGNATURE},
    )
    await run_request(meter, flow)
    flow.response = http.Response.make(200, json.dumps(GENERATIONS), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await submitted(meter)
    first = GENERATIONS["generations"][0]["text"]  # type: ignore[index]
    assert row.usage_source == "estimated"
    assert row.output_tokens == count_text(ALL_TEXT, COMMAND) > count_text(first, COMMAND)
