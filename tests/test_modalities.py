"""Audio and image tokens: read by modality from each provider's usage, priced at their own rates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from addon.pricing import price, price_record
from addon.providers import gemini_api, openai_api
from addon.record import CallRecord
from addon.usage import Usage

WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def gemini_body(model: str, meta: dict) -> bytes:
    parts = [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]
    return json.dumps(
        {"candidates": [{"content": {"parts": parts}}], "usageMetadata": meta, "modelVersion": model}
    ).encode()


def test_gemini_image_output_is_priced_as_image() -> None:
    """gemini-2.5-flash-image: a 1024px picture is 1,290 output tokens at $30 per 1M, not $2.50."""
    meta = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 1290,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    }
    metered = gemini_api.parse_response("generate", gemini_body("gemini-2.5-flash-image", meta))
    assert metered.usage is not None and metered.usage.output_image_tokens == 1290
    # 10 x $0.30 + 1,290 x $30 per 1M
    assert price("google", metered.model, metered.usage, WHEN).cost_usd == Decimal("0.038703")


def test_gemini_audio_input_and_cached_audio_are_priced_as_audio() -> None:
    """gemini-2.5-flash: audio in at $1.00 per 1M against $0.30 for text; cached audio apart too."""
    meta = {
        "promptTokenCount": 32_000,
        "candidatesTokenCount": 0,
        "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 32_000}],
    }
    metered = gemini_api.parse_response("generate", gemini_body("gemini-2.5-flash", meta))
    assert metered.usage is not None and metered.usage.input_audio_tokens == 32_000
    assert price("google", metered.model, metered.usage, WHEN).cost_usd == Decimal("0.032")
    cached = meta | {
        "cachedContentTokenCount": 10_000,
        "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 10_000}],
    }
    metered = gemini_api.parse_response("generate", gemini_body("gemini-2.5-flash", cached))
    assert metered.usage is not None and metered.usage.cache_audio_read_tokens == 10_000
    assert price("google", metered.model, metered.usage, WHEN).cost_usd == Decimal("0.023")


def test_openai_audio_tokens_are_priced_as_audio_and_stored() -> None:
    """gpt-audio: audio in $32 and out $64 per 1M (text $2.50 / $10)."""
    body = {
        "model": "gpt-audio",
        "choices": [{"message": {"role": "assistant", "audio": {"id": "a", "transcript": "hi"}}}],
        "usage": {
            "prompt_tokens": 1100,
            "completion_tokens": 550,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 1000},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 500},
        },
    }
    metered = openai_api.parse_response("chat", json.dumps(body).encode())
    assert price("openai", metered.model, metered.usage, WHEN).cost_usd == Decimal("0.06475")
    record = CallRecord(
        id="a", ts=WHEN, session_id="s", environment="development", provider="openai",
        host="api.openai.com", path="/v1/chat/completions", api_flavor="chat", model_sent="gpt-audio",
    )  # fmt: skip
    record.set_usage(metered.usage)
    assert (record.input_audio_tokens, record.output_audio_tokens, record.input_image_tokens) == (
        1000,
        500,
        None,
    )
    assert record.usage == metered.usage  # the row gives back what the parser read
    assert CallRecord.from_json(record.to_json()).usage == metered.usage  # so does its journal line
    price_record(record)
    assert (record.cost_usd, record.price_status) == (Decimal("0.06475"), "priced")


def test_text_only_calls_keep_the_linear_shortcut() -> None:
    """No modality counts: priced as before (and a model without audio prices prices it as text)."""
    text = openai_api.extract_usage({"prompt_tokens": 32_000, "completion_tokens": 10})
    assert text is not None and not text.has_modalities
    assert price("openai", "gpt-4o", text, WHEN).cost_usd == Decimal("0.0801")


def test_audio_input_beside_a_text_only_cache_hit_is_priced() -> None:
    """Implicit caching of a text prefix with new audio input: cacheTokensDetails lists TEXT only."""
    usage = gemini_api.extract_usage(
        {
            "promptTokenCount": 6000,
            "cachedContentTokenCount": 4000,
            "candidatesTokenCount": 100,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 5000},
                {"modality": "AUDIO", "tokenCount": 1000},
            ],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 4000}],
        }
    )
    got = price("google", "gemini-2.5-flash", usage, WHEN)
    # 1,000 text at $0.30, 1,000 audio at $1.00, 4,000 cached text at $0.03, 100 out at $2.50 (per 1M)
    assert (got.status, got.cost_usd) == ("priced", Decimal("0.00167"))


def test_a_split_genai_prices_cannot_price_falls_back_to_text() -> None:
    """gpt-4o image input with cache hits (no cached-image count): priced as text, never an error."""
    usage = openai_api.extract_usage(
        {
            "prompt_tokens": 10_000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 5_000, "image_tokens": 2_000},
        }
    )
    assert usage is not None and usage.input_image_tokens == 2_000
    got = price("openai", "gpt-4o", usage, WHEN)
    text = price(
        "openai", "gpt-4o", Usage(input_tokens=10_000, cache_read_tokens=5_000, output_tokens=10), WHEN
    )
    assert (got.status, got.cost_usd) == ("priced", text.cost_usd)
