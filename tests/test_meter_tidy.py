"""Small fixes around the meter's reservation and lookup wait (the meter-tidy round): a body with
both of chat's output caps reserved at the larger, and an unmetered request never waiting for a
user it is not checked against."""

from __future__ import annotations

from decimal import Decimal

from addon.meter import Meter
from addon.policies import parse_policies
from addon.reservation import max_output_tokens
from tests import test_meter

meter = test_meter.meter  # the fixture

LITELLM_GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai, pricing_provider: openai}\n'
)
BUDGET_ONLY = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
GATEWAY_CHAT = "https://llm.internal.example/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_body_with_both_chat_caps_is_capped_at_the_larger() -> None:
    """OpenAI refuses a chat request with both (400 invalid_parameter_combination), but servers
    behind a gateway differ in which one they obey: the reservation takes the larger. Before,
    max_completion_tokens always won (100 here)."""
    assert max_output_tokens({"max_completion_tokens": 100, "max_tokens": 16000}) == 16000
    assert max_output_tokens({"max_completion_tokens": 16000, "max_tokens": 100}) == 16000
    assert max_output_tokens({"max_completion_tokens": 100, "max_tokens": None}) == 100
    assert max_output_tokens({"max_completion_tokens": 0, "max_tokens": 300}) == 300


async def test_a_fallback_objects_max_tokens_over_the_requests_max_completion_tokens_is_reserved(
    meter: Meter,
) -> None:
    """gpt-4o-mini with max_completion_tokens 100 and fallbacks [{"model": "gpt-4o", "max_tokens":
    16000}]: LiteLLM overlays the object on the request, so the gpt-4o hop carries both caps and
    may write 16000 tokens (0.160 USD of output at gpt-4o's $10 per 1M). Before, that hop was
    reserved at 100 (~0.001 USD)."""
    meter._apply(parse_policies(LITELLM_GATEWAY + BUDGET_ONLY))
    reserved = await test_meter.reserved_for(
        meter,
        GATEWAY_CHAT,
        {
            "model": "gpt-4o-mini",
            "max_completion_tokens": 100,
            "messages": MESSAGES,
            "fallbacks": [{"model": "gpt-4o", "max_tokens": 16000}],
        },
    )
    assert reserved >= test_meter.output_usd(16000, "10"), reserved
    assert reserved < Decimal("0.17"), reserved
