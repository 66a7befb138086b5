"""Legacy completions under any prefix (DeepSeek FIM, gateways) and their reservations.

Found by an independent review of the fail-closed and legacy-completion fixes; each test failed
before its fix.
"""

from __future__ import annotations

import json

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import openai_api
from tests.test_meter import make_flow, run_request

DEEPSEEK_FIM = "https://api.deepseek.com/beta/completions"  # DeepSeek's FIM completion (beta base_url)


def test_deepseek_fim_beta_completions_is_a_legacy_completion() -> None:
    """DeepSeek serves FIM at https://api.deepseek.com/beta/completions (base_url .../beta):
    '/completions' after '/beta' was metered before 47e8089; _LEGACY_COMPLETIONS now reads it as
    no API at all."""
    assert openai_api.flavor_for_path("/beta/completions") == "completions"


async def test_deepseek_fim_call_is_metered(meter: Meter) -> None:
    flow = make_flow(
        DEEPSEEK_FIM, {"model": "deepseek-chat", "prompt": "def fib(a):", "suffix": "    return"}
    )
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and state.record.api_flavor == "completions"


async def test_deepseek_fim_is_downgraded_not_refused_in_a_restricted_environment(meter: Meter) -> None:
    """With a model allowlist the same call is now held as 'unmetered': a downgrade rule no longer
    applies (unmetered calls are refused, never rewritten), so legitimate traffic is refused."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n"
            "    models: {allow: ['deepseek-chat'], downgrade: {'deepseek-reasoner': deepseek-chat}}\n"
        )
    )
    flow = make_flow(DEEPSEEK_FIM, {"model": "deepseek-reasoner", "prompt": "def fib(a):"})
    await run_request(meter, flow)
    assert flow.response is None, flow.response and flow.response.content
    assert json.loads(flow.request.content)["model"] == "deepseek-chat"


DATABRICKS_LIKE = "/serving-endpoints/completions"  # OpenAI client with base_url .../serving-endpoints


def test_an_openai_compatible_gateway_prefix_is_still_a_legacy_completion() -> None:
    """A custom provider (api: openai) whose base_url has no version segment (Databricks'
    .../serving-endpoints) sent client.completions.create() to {base}/completions: metered before
    47e8089, now no API (passes unmetered, no budget check)."""
    assert openai_api.flavor_for_path(DATABRICKS_LIKE) == "completions"


async def test_a_prompt_list_without_max_tokens_is_not_reserved_at_1000_tokens_an_answer(
    meter: Meter,
) -> None:
    """A legacy completion without max_tokens writes at most 16 tokens an answer (OpenAI, vLLM:
    'Defaults to 16'); 292de1b now multiplies the reservation by the prompts (up to 2048), each
    answer still reserved at RESERVED_OUTPUT_TOKENS (1000): 2048 short prompts reserve ~$4 of
    output for a call that can bill at most ~$0.07, so a small budget refuses it."""
    from decimal import Decimal

    from tests.test_meter import DAY_BUDGET, reserved_for

    meter._apply(parse_policies(DAY_BUDGET))
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": [f"q{i}" for i in range(2048)]}
    reserved = await reserved_for(meter, "https://api.openai.com/v1/completions", body)
    most = Decimal(2048 * 16) * Decimal(2) / 1_000_000  # every answer at its default cap, $2 / 1M
    assert reserved < most * 2 + Decimal("0.01"), (
        f"reserved {reserved}, the call bills at most ~{most} of output"
    )
