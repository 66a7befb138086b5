"""Model-name matching: globs, dated snapshots, the models/ prefix, downgrade order."""

from __future__ import annotations

import pytest

from addon.model_rules import base_model, first_mapping, is_pattern, matches_any, model_matches
from addon.policies import ModelRules


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("models/gemini-1.5-pro-2024-05-14", "gemini-1.5-pro"),
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("o3", "o3"),
        ("gpt-4-0613", "gpt-4-0613"),  # not a full date: kept
        ("model-12345678", "model-12345678"),  # 8 digits that are no date: kept
        ("gpt-4o-2024-08-06-extra", "gpt-4o-2024-08-06-extra"),  # the date must be trailing
        ("openai/gpt-4o", "openai/gpt-4o"),  # only models/ is a known prefix
    ],
)
def test_base_model(model: str, base: str) -> None:
    assert base_model(model) == base


@pytest.mark.parametrize(
    ("pattern", "model", "expected"),
    [
        ("gpt-4o", "gpt-4o", True),
        ("gpt-4o", "gpt-4o-2024-08-06", True),
        ("gpt-4o", "gpt-4o-mini", False),
        ("gpt-4o", "gpt-4o-mini-2024-07-18", False),
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", True),
        ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", True),
        ("claude-sonnet-4-5", "claude-sonnet-4-5-haiku", False),
        ("claude-sonnet-4-5*", "claude-sonnet-4-5-20250929", True),
        ("gpt-4o*", "gpt-4o-mini", True),
        ("*-mini", "o4-mini", True),
        ("*-mini", "o4-mini-2025-04-16", True),
        ("*-mini", "gpt-4o", False),
        ("gemini-2.5-flash", "models/gemini-2.5-flash", True),
        ("models/gemini-2.5-flash", "gemini-2.5-flash", True),
        ("gemini-?.?-flash", "gemini-2.5-flash", True),
        ("gpt-4[o.]", "gpt-4o", True),
        ("gpt-4[o.]", "gpt-4x", False),
        ("*", "anything-at-all", True),
        ("GPT-4o", "gpt-4o", False),  # case-sensitive, documented
        ("gpt-4", "gpt-4-0613", False),  # only dates are stripped
    ],
)
def test_model_matches(pattern: str, model: str, expected: bool) -> None:
    assert model_matches(pattern, model) is expected


def test_is_pattern() -> None:
    assert [is_pattern(t) for t in ("gpt-4o", "gpt-4o*", "gpt-?", "gpt-[45]")] == [False, True, True, True]


def test_matches_any_and_first_mapping_in_file_order() -> None:
    assert matches_any(("a", "gpt-4o-mini"), "gpt-4o-mini-2024-07-18") is True
    assert matches_any((), "gpt-4o") is False
    pairs = [("claude-sonnet-4-5", "claude-haiku-4-5"), ("claude-*", "claude-3-5-haiku"), ("*", "x")]
    assert first_mapping(pairs, "claude-sonnet-4-5-20250929") == "claude-haiku-4-5"
    assert first_mapping(pairs, "claude-opus-4-1") == "claude-3-5-haiku"
    assert first_mapping(pairs, "gpt-4o") == "x"
    assert first_mapping(pairs[:2], "gpt-4o") is None


def test_model_rules_resolve() -> None:
    rules = ModelRules(
        allow=("gpt-4o-mini", "claude-haiku-4-5"),
        on_disallowed="downgrade",
        downgrade=(("gpt-4o", "gpt-4o-mini"), ("claude-sonnet-4-5*", "claude-haiku-4-5")),
    )
    assert rules.resolve("gpt-4o-mini") == ("allowed", "gpt-4o-mini")
    assert rules.resolve("gpt-4o-mini-2024-07-18") == ("allowed", "gpt-4o-mini-2024-07-18")
    assert rules.resolve("gpt-4o") == ("downgraded", "gpt-4o-mini")
    assert rules.resolve("gpt-4o-2024-08-06") == ("downgraded", "gpt-4o-mini")
    assert rules.resolve("claude-sonnet-4-5-20250929") == ("downgraded", "claude-haiku-4-5")
    assert rules.resolve("gpt-4.1") == ("blocked", None)
    assert rules.downgrade_target("gpt-4.1") is None
    assert rules.downgrade_target("gpt-4o-2024-11-20") == "gpt-4o-mini"


def test_block_ignores_the_downgrade_map_and_empty_allow_blocks_all() -> None:
    block = ModelRules(allow=("gpt-4o-mini",), on_disallowed="block", downgrade=(("gpt-4o", "gpt-4o-mini"),))
    assert block.resolve("gpt-4o") == ("blocked", None)
    assert block.resolve("gpt-4o-mini") == ("allowed", "gpt-4o-mini")
    nothing = ModelRules(allow=())
    assert nothing.is_allowed("gpt-4o-mini") is False
    assert ModelRules().is_allowed("whatever") is True
