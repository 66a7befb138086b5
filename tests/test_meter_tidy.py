"""Small fixes around the meter's reservation and lookup wait (the meter-tidy round): a body with
both of chat's output caps reserved at the larger, and an unmetered request never waiting for a
user it is not checked against."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

import pytest

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers.anthropic_api import fallback_models as anthropic_fallback_models
from addon.providers.fallback_lists import beside_anthropic_chain, litellm_fallbacks
from addon.reservation import max_output_tokens
from tests import test_meter
from tests.test_review_round14 import ALICE, ALICE_BUDGET, slow

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


@pytest.mark.parametrize(("model", "status"), [("gpt-4.1-mini", None), ("gpt-4.1", 403)])
async def test_an_unmetered_request_does_not_wait_longer_for_a_user_it_is_not_checked_against(
    meter: Meter, monkeypatch: pytest.MonkeyPatch, model: str, status: int | None
) -> None:
    """alice has a budget (user limits in force) and her lookup answers at 0.6 s, past the
    ordinary wait (0.05 s here) but within the deciding one (2 s here). A fine-tuning job is
    checked against the allowlist alone, never a user's limits: it goes on (or is refused) after
    the ordinary wait. Before, it waited for the lookup (0.6 s; up to 12 s by default)."""
    meter._apply(parse_policies(test_meter.RESTRICTED + ALICE_BUDGET))
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 2.0)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.6))
    flow = test_meter.make_flow(test_meter.FINE_TUNING, {"model": model, "training_file": "f"})
    started = time.monotonic()
    await test_meter.run_request(meter, flow)
    waited = time.monotonic() - started
    assert waited < 0.4, waited
    assert (flow.response.status_code if flow.response is not None else None) == status


ANTHROPIC_MESSAGES = "https://api.anthropic.com/v1/messages"
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def test_anthropics_fallbacks_say_they_run_as_a_chain_and_litellms_do_not() -> None:
    """The chain is a property of the list read, not of which function read it."""
    listed = anthropic_fallback_models({"fallbacks": [{"model": "claude-opus-4-6"}]})
    assert listed is not None and (listed.models, listed.chain) == (("claude-opus-4-6",), True)
    unread = anthropic_fallback_models({"fallbacks": "default"})
    assert unread is not None and unread.error is not None and unread.chain
    assert anthropic_fallback_models({"fallbacks": [{"max_tokens": 10}]}).chain  # type: ignore[union-attr]
    litellm = litellm_fallbacks({"fallbacks": ["gpt-4o"]})
    assert litellm is not None and not litellm.chain
    beside = beside_anthropic_chain({"fallbacks": [{"model": "a", "context_window_fallbacks": ["b"]}]})
    assert beside is not None and beside.models == ("b",) and not beside.chain


async def test_a_wrapped_anthropic_fallback_reader_is_still_reserved_as_a_chain(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """haiku (100 output tokens) falling back to opus 4.6 then sonnet 4.5 at 4,000 each: every hop
    may bill, 4,000 x $25 + 4,000 x $15 per 1M = $0.16 and haiku's own ($0.160905). Before, a
    provider whose fallback reader wrapped anthropic_api.fallback_models (not the function itself,
    which meter.py recognised by identity) was reserved as OpenRouter's list, at the dearest entry
    and the request's 100 output tokens: $0.002725."""
    meter._apply(parse_policies(BUDGET_ONLY))
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [],
        "fallbacks": [
            {"model": "claude-opus-4-6", "max_tokens": 4000},
            {"model": "claude-sonnet-4-5", "max_tokens": 4000},
        ],
    }
    as_is = await test_meter.reserved_for(meter, ANTHROPIC_MESSAGES, body, ANTHROPIC_HEADERS)
    chained = test_meter.output_usd(4000, "25") + test_meter.output_usd(4000, "15")
    assert chained <= as_is < chained + Decimal("0.01"), as_is
    registry = meter.registry
    provider = registry.for_host("api.anthropic.com")
    assert provider is not None and provider.fallback_models is not None
    read = provider.fallback_models
    wrapped = dataclasses.replace(provider, fallback_models=lambda sent: read(sent))
    monkeypatch.setattr(
        registry, "for_host", lambda host, port=None: wrapped if "anthropic" in host else None
    )
    assert await test_meter.reserved_for(meter, ANTHROPIC_MESSAGES, body, ANTHROPIC_HEADERS) == as_is
