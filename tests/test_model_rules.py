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


# --- a provider's id of a model (vendor prefix, OpenRouter variant, Bedrock) -----------------

HAIKU_RULES = ModelRules(
    allow=("*-mini", "claude-haiku-*", "claude-haiku-4-5", "gemini-*-flash*"),
    downgrade=(("gpt-4o", "gpt-4o-mini"), ("claude-sonnet-*", "claude-haiku-4-5")),
)


@pytest.mark.parametrize(
    "model",
    [
        "anthropic/claude-haiku-4.5",  # OpenRouter
        "anthropic/claude-haiku-4.5:nitro",
        "anthropic/claude-haiku-4.5:free",
        "openai/gpt-4o-mini",
        "google/gemini-2.5-flash",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",  # Bedrock, a cross-region profile
        "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        "anthropic.claude-haiku-4-5-20251001-v1:0",  # Bedrock, the foundation model
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
    ],
)
def test_a_rule_for_a_model_name_matches_the_providers_ids_of_it(model: str) -> None:
    assert HAIKU_RULES.is_allowed(model)


def test_openrouter_writes_anthropic_versions_with_dots_and_a_rule_with_dashes_matches_them() -> None:
    assert model_matches("claude-haiku-4-5", "anthropic/claude-haiku-4.5")
    assert model_matches("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5")
    assert not model_matches("claude-sonnet-4-5", "anthropic/claude-sonnet-4.6")
    assert not model_matches("gpt-4-1", "openai/gpt-4.1")  # only Anthropic's versions are spelled two ways


@pytest.mark.parametrize(
    "model",
    [
        "Anthropic/claude-haiku-4.5",  # a vendor in capitals: no provider writes it so
        "anthropic/Claude-haiku-4.5",
        "anthropic//claude-haiku-4.5",
        "anthropic/../claude-haiku-4.5",
        "x/anthropic/claude-haiku-4.5",
        "/claude-haiku-4.5",
        "anthropic/claude-haiku-4.5:unknown-variant",
        "anthropic/claude-haiku-4.5 ",
        "anthropic/claude-haiku-4.5\n",
        " anthropic/claude-haiku-4.5",
        "anthropic\u2215claude-haiku-4.5",  # DIVISION SLASH
        "anthropic/\u0441laude-haiku-4.5",  # a Cyrillic es
        "\u0430nthropic/claude-haiku-4.5",  # a Cyrillic a in the vendor
        "anthropic/claude-haiku-\uff14.\uff15",  # full-width digits
        "claude-opus-4.1/claude-haiku-4.5",  # a "vendor" with a dot is a model id, not a vendor
        "xx.anthropic.claude-haiku-4-5-20251001-v1:0",  # no such Bedrock geography
        "us.us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "us.anthropic.claude-haiku-4-5-20251001",  # no Bedrock version
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
        "arn:aws:bedrock:us-east-1:123456789012:custom-model/us.anthropic.claude-haiku-4-5-20251001-v1:0",
    ],
)
def test_other_spellings_match_only_as_written(model: str) -> None:
    """Nothing a provider would not write is read as a cheap model's id: refused, as before."""
    assert not HAIKU_RULES.is_allowed(model)
    assert HAIKU_RULES.downgrade_target(model) is None


def test_a_rule_written_with_a_prefix_matches_only_that_prefix() -> None:
    rules = ModelRules(allow=("openai/*", "us.anthropic.claude-haiku-*"))
    assert rules.is_allowed("openai/gpt-4o")
    assert not rules.is_allowed("gpt-4o")
    assert not rules.is_allowed("anthropic/gpt-4o")
    assert not rules.is_allowed("openai.gpt-4o")
    assert rules.is_allowed("us.anthropic.claude-haiku-4-5-20251001-v1:0")
    assert not rules.is_allowed("eu.anthropic.claude-haiku-4-5-20251001-v1:0")
    assert not rules.is_allowed("anthropic/claude-haiku-4.5")
    assert not rules.is_allowed("claude-haiku-4-5")


@pytest.mark.parametrize(
    ("requested", "sent"),
    [
        ("gpt-4o", "gpt-4o-mini"),
        ("openai/gpt-4o", "openai/gpt-4o-mini"),  # OpenRouter: its form
        ("openai/gpt-4o-2024-08-06", "openai/gpt-4o-mini"),
        ("openai/gpt-4o:nitro", "openai/gpt-4o-mini:nitro"),  # a routing variant applies to any model
        ("openai/gpt-4o:extended", "openai/gpt-4o-mini"),  # a model's own variant does not
        ("anthropic/claude-sonnet-4.5", "anthropic/claude-haiku-4.5"),  # OpenRouter's spelling
        ("anthropic/claude-sonnet-4", "anthropic/claude-haiku-4.5"),  # no minor version: still dotted
        ("anthropic/claude-opus-4", None),  # no rule maps it here
        ("anthropic/claude-sonnet-4-5", "anthropic/claude-haiku-4.5"),  # OpenRouter knows the dotted id only
        ("claude-sonnet-4-5-20250929", "claude-haiku-4-5"),
    ],
)
def test_on_openrouter_a_downgrade_writes_the_target_as_openrouter_names_it(
    requested: str, sent: str | None
) -> None:
    assert HAIKU_RULES.downgrade_target(requested, "openrouter") == sent
    assert HAIKU_RULES.resolve(requested, "openrouter") == (
        ("downgraded", sent) if sent else ("blocked", None)
    )


@pytest.mark.parametrize("host", [None, "groq", "together", "openai", "azure", "my-gateway"])
@pytest.mark.parametrize(
    ("requested", "sent"),
    [
        ("gpt-4o", "gpt-4o-mini"),
        ("openai/gpt-4o", "gpt-4o-mini"),
        ("anthropic/claude-sonnet-4.5", "claude-haiku-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-haiku-4-5"),
    ],
)
def test_on_other_hosts_a_downgrade_sends_the_target_as_the_rule_writes_it(
    host: str | None, requested: str, sent: str
) -> None:
    """Groq serves openai/gpt-oss-120b beside llama-3.1-8b-instant: a host's prefixed ids say
    nothing of how it names the target, so the target the rule writes is what it is sent."""
    assert HAIKU_RULES.downgrade_target(requested, host) == sent


def test_groq_prefixed_ids_downgrade_to_the_plain_target() -> None:
    rules = ModelRules(allow=("llama-3.1-8b-instant",), downgrade=(("*", "llama-3.1-8b-instant"),))
    for requested in ("openai/gpt-oss-120b", "meta-llama/llama-4-scout-17b-16e-instruct"):
        assert rules.downgrade_target(requested, "groq") == "llama-3.1-8b-instant"


def test_bedrock_ids_are_downgraded_on_bedrock_only_to_a_target_written_as_a_bedrock_id() -> None:
    """Bedrock: the target's id (date, version) is not knowable from its name: refused."""
    assert HAIKU_RULES.downgrade_target("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws") is None
    assert HAIKU_RULES.resolve("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws") == ("blocked", None)


def test_a_target_written_in_a_providers_form_is_sent_as_written() -> None:
    rules = ModelRules(
        allow=("claude-haiku-*", "openai/gpt-4o-mini"),
        downgrade=(
            ("claude-sonnet-*", "us.anthropic.claude-haiku-4-5-20251001-v1:0"),
            ("gpt-4o", "openai/gpt-4o-mini"),
        ),
    )
    for host in (None, "aws", "openrouter", "groq"):
        assert rules.downgrade_target("us.anthropic.claude-sonnet-4-5-20250929-v1:0", host) == (
            "us.anthropic.claude-haiku-4-5-20251001-v1:0"
        )
        assert rules.downgrade_target("gpt-4o", host) == "openai/gpt-4o-mini"


def test_a_target_that_would_not_be_allowed_as_written_is_no_downgrade() -> None:
    """A prefixed allowlist allows the target by its prefix only: written for another vendor's
    id it would not be allowed, so the call is refused, not sent to an unchecked model."""
    rules = ModelRules(allow=("openai/gpt-4o-mini",), downgrade=(("*gpt-4o", "openai/gpt-4o-mini"),))
    assert rules.downgrade_target("openai/gpt-4o", "openrouter") == "openai/gpt-4o-mini"
    plain = ModelRules(allow=("gpt-4o-mini",), downgrade=(("*", "gpt-4o-mini"),))
    assert plain.downgrade_target("Anthropic/claude-opus-4.1", "openrouter") == "gpt-4o-mini"  # as before
    # OpenRouter's ids are undated: a target allowed only dated is sent undated where that snapshot
    # is the model's one (anthropic/claude-haiku-4.5 is claude-haiku-4-5-20251001), refused there
    # where the model has several (anthropic/claude-3.5-sonnet may be either of two)
    dated = ModelRules(allow=("claude-haiku-4-5-20251001",), downgrade=(("*", "claude-haiku-4-5-20251001"),))
    assert dated.downgrade_target("anthropic/claude-sonnet-4.5", "openrouter") == "anthropic/claude-haiku-4.5"
    several = ModelRules(
        allow=("claude-3-5-sonnet-20241022",), downgrade=(("*", "claude-3-5-sonnet-20241022"),)
    )
    assert several.downgrade_target("anthropic/claude-opus-4.1", "openrouter") is None
    assert not ModelRules(allow=("claude-haiku-4-5-20251001",)).is_allowed("anthropic/claude-sonnet-4.5")


@pytest.mark.parametrize(
    ("host", "requested", "target", "sent"),
    [
        ("openrouter", "anthropic/claude-opus-4.1", "gpt-4o-mini", "openai/gpt-4o-mini"),  # its vendor
        ("openrouter", "openai/gpt-4o", "claude-haiku-4-5", "anthropic/claude-haiku-4.5"),
        ("openrouter", "openai/gpt-4o", "claude-haiku-4.5", "anthropic/claude-haiku-4.5"),
        # OpenRouter's Anthropic ids are undated: the date is dropped, not sent as -4.5-20251001
        ("openrouter", "openai/gpt-4o", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4.5"),
        ("openrouter", "openai/gpt-4o", "claude-3-5-haiku-20241022", "anthropic/claude-3.5-haiku"),
        ("openrouter", "openai/gpt-4o", "gemini-2.5-flash", "google/gemini-2.5-flash"),
        ("openrouter", "openai/gpt-4o", "grok-3-mini", "x-ai/grok-3-mini"),
        # Mistral's -latest alias: OpenRouter lists no -latest id, and which id it is is not knowable
        ("openrouter", "openai/gpt-4o", "mistral-small-latest", None),
        # OpenAI's -latest names: only those OpenRouter lists as they are (genai-prices' table);
        # gpt-5-chat-latest (OpenRouter: openai/gpt-5-chat) went out as openai/gpt-5-chat-latest
        ("openrouter", "openai/gpt-4o", "chatgpt-4o-latest", "openai/chatgpt-4o-latest"),
        ("openrouter", "openai/gpt-4o:nitro", "gpt-chat-latest", "openai/gpt-chat-latest:nitro"),
        ("openrouter", "openai/gpt-4o", "gpt-5-chat-latest", None),
        ("openrouter", "openai/gpt-4o", "gpt-5.1-chat-latest", None),
        ("openrouter", "openai/gpt-4o", "codex-mini-latest", None),
        (
            "openrouter",
            "meta-llama/llama-3.3-70b-instruct",
            "llama-3.1-8b-instruct",
            "meta-llama/llama-3.1-8b-instruct",
        ),
        ("openrouter", "openai/gpt-4o", "my-local-model", None),  # whose is it? not knowable: refused
        # Perplexity's Agent API: vendor/name with Anthropic's own dashes, xai/ for Grok
        ("perplexity", "openai/gpt-5.1", "claude-haiku-4-5", "anthropic/claude-haiku-4-5"),
        ("perplexity", "openai/gpt-5.1", "claude-haiku-4.5", "anthropic/claude-haiku-4-5"),
        ("perplexity", "openai/gpt-5.1", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5"),
        ("perplexity", "anthropic/claude-opus-4-6", "gpt-5-mini", "openai/gpt-5-mini"),
        ("perplexity", "openai/gpt-5.1", "grok-4-1-fast-mini", "xai/grok-4-1-fast-mini"),
        ("perplexity", "openai/gpt-5.1", "sonar", "perplexity/sonar"),
        ("perplexity", "openai/gpt-5.1", "deepseek-chat-mini", None),  # a vendor it does not serve
        ("perplexity", "openai/gpt-5.1", "chatgpt-4o-latest", None),  # a -latest id it is not known to list
        ("perplexity", "sonar-pro", "sonar", "sonar"),  # its Sonar API's plain ids: as written
    ],
)
def test_a_cross_vendor_downgrade_goes_under_the_targets_vendor_as_the_host_names_it(
    host: str, requested: str, target: str, sent: str | None
) -> None:
    rules = ModelRules(
        allow=(
            "*-mini",
            "claude-haiku-*",
            "claude-3-5-haiku*",
            "*flash*",
            "*8b*",
            "my-*",
            "*-latest",
            "sonar",
        ),
        downgrade=(("*", target),),
    )
    assert rules.downgrade_target(requested, host) == sent


def test_the_shipped_claude_3_5_haiku_rule_matches_openrouters_id() -> None:
    """OpenRouter names Claude 3.5 Haiku anthropic/claude-3.5-haiku (undated): the shipped
    development allowlist allows it as it allows claude-3-5-haiku-20241022."""
    from pathlib import Path

    from addon.policies import parse_policies

    shipped = Path(__file__).parents[1] / "policies.yaml"
    rules = parse_policies(shipped.read_text()).environment("development").models
    for model in ("anthropic/claude-3.5-haiku", "claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"):
        assert rules.is_allowed(model), model
    assert not rules.is_allowed("claude-3-5-sonnet-20241022")


def test_prices_still_match_the_id_as_written() -> None:
    """A price is for the id it names: gpt-4o's negotiated rate is not OpenRouter's openai/gpt-4o."""
    assert not model_matches("gpt-4o", "openai/gpt-4o", as_written=True)
    assert model_matches("gpt-4o", "gpt-4o-2024-08-06", as_written=True)
