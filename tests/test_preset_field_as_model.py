"""OpenRouter's ``preset`` field read as the model it stands for (review round 15, findings 4 and 6)."""

from __future__ import annotations

import pytest

from addon.model_rules import PRESET_MARK, matches_any, model_matches, preset_model, unmatched_reason
from addon.providers import Registry, fallback_lists


@pytest.mark.parametrize(
    ("body", "model", "requested"),
    [
        ({"preset": "email-copywriter"}, "@preset/email-copywriter", None),
        (
            {"model": "openai/gpt-4o", "preset": "email-copywriter"},
            "openai/gpt-4o@preset/email-copywriter",
            None,
        ),
        ({"model": "openai/gpt-4o"}, "openai/gpt-4o", None),
        # Folds that cannot be made cleanly: unreadable (refused where restricted), recorded as
        # written, reserved at the ceiling of a bare preset (review round 17, findings 1 and 2).
        ({"model": "openai/gpt-4o", "preset": "a/b"}, None, "openai/gpt-4o@preset/a/b"),  # no slug
        ({"model": "openai/gpt-4o@preset/a", "preset": "b"}, None, "openai/gpt-4o@preset/a@preset/b"),
        ({"model": "openai/gpt-4o-mini@x", "preset": "evil"}, None, "openai/gpt-4o-mini@x@preset/evil"),
        ({"model": "openai/gpt-4o-mini@", "preset": "evil"}, None, "openai/gpt-4o-mini@@preset/evil"),
        ({"preset": 5}, None, "@preset/"),  # not a string: no slug written
        ({"model": "openai/gpt-4o", "preset": "  "}, None, "openai/gpt-4o@preset/"),
        ({"model": "openai/gpt-4o", "preset": "x" * 300}, None, "openai/gpt-4o@preset/"),
    ],
)
def test_the_preset_field_folds_into_the_model(body: dict, model: str | None, requested: str | None) -> None:
    """model_with_preset folds only cleanly; the model requested (OpenRouter's request_model) is
    the clean fold, else the preset as written after the model: a preset all the same."""
    assert fallback_lists.model_with_preset(body) == model
    openrouter = Registry().for_host("openrouter.ai", 443)
    assert openrouter is not None
    asked = openrouter.request_model("/api/v1/chat/completions", body)
    assert asked == (requested or model)
    if requested is not None:  # never a preset naming its model cleanly: reserved at the ceiling
        assert PRESET_MARK in asked and preset_model(asked) == ""
        found = fallback_lists.openrouter_lists(body)
        assert found is not None and found.error is not None and "preset" in found.error


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o-mini@x@preset/evil",
        "openai/gpt-4o-mini@@preset/evil",
        "openai/gpt-4o@preset/a@preset/b",
        "openai/gpt-4o@preset/team/b",
        "openai/gpt-4o@preset/",
        "@preset/",
    ],
)
def test_any_id_naming_a_preset_matches_only_a_rule_spelling_preset(model: str) -> None:
    """A glob that does not spell @preset/ never matches an id with @preset/ anywhere in it (it
    matched "openai/gpt-4o-mini@x@preset/evil", whose "@" before @preset/ hid the preset), and
    its reservation is the bare preset's ceiling ("" as its model), not $0."""
    assert not model_matches("openai/*", model) and not matches_any(["*"], model)
    assert model_matches("*@preset/*", model)
    assert preset_model(model) == ""
    assert unmatched_reason(model) is not None and "OpenRouter preset" in unmatched_reason(model)  # type: ignore[operator]


def test_a_clean_preset_id_still_reserves_as_its_model() -> None:
    assert preset_model("openai/gpt-4o@preset/a") == "openai/gpt-4o"
    assert preset_model("@preset/a") == ""
    assert preset_model("openai/gpt-4o") is None and preset_model("openai/gpt-4o@x") is None


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
