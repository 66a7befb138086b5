"""OpenRouter's ``preset`` field read as the model it stands for (review round 15, findings 4 and 6)."""

from __future__ import annotations

import pytest

from addon.providers import Registry, fallback_lists


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"preset": "email-copywriter"}, "@preset/email-copywriter"),
        ({"model": "openai/gpt-4o", "preset": "email-copywriter"}, "openai/gpt-4o@preset/email-copywriter"),
        ({"model": "openai/gpt-4o"}, "openai/gpt-4o"),
        ({"model": "openai/gpt-4o", "preset": "a/b"}, None),  # no slug: unreadable, refused where restricted
        ({"model": "openai/gpt-4o@preset/a", "preset": "b"}, None),  # two presets
        ({"preset": 5}, None),
    ],
)
def test_the_preset_field_folds_into_the_model(body: dict, model: str | None) -> None:
    assert fallback_lists.model_with_preset(body) == model
    openrouter = Registry().for_host("openrouter.ai", 443)
    assert openrouter is not None
    assert openrouter.request_model("/api/v1/chat/completions", body) == model


def test_an_unreadable_preset_field_leaves_the_lists_unreadable_a_readable_one_does_not() -> None:
    found = fallback_lists.openrouter_lists({"model": "openai/gpt-4o", "preset": "a/b"})
    assert found is not None and found.error is not None and "preset" in found.error
    assert fallback_lists.openrouter_lists({"model": "openai/gpt-4o", "preset": "email-copywriter"}) is None


def test_a_downgrade_drops_the_preset_field() -> None:
    """Rewritten to the allowed model, the preset (its own model, fallbacks, tools) must not run."""
    openrouter = Registry().for_host("openrouter.ai", 443)
    assert openrouter is not None and openrouter.with_model is not None
    body = {"model": "openai/gpt-4o", "preset": "email-copywriter", "max_tokens": 5}
    _path, rewritten = openrouter.with_model("/api/v1/chat/completions", body, "openai/gpt-4o-mini")
    assert rewritten == {"model": "openai/gpt-4o-mini", "max_tokens": 5}
    assert body["preset"] == "email-copywriter"  # the original is not changed
