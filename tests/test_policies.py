"""policies.yaml: the typed model, validation messages with line numbers, live reload."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from textwrap import dedent

import pytest

from addon.api_keys import key_fingerprint
from addon.policies import (
    AttributionSettings,
    Budget,
    EnvironmentPolicy,
    KeyPolicy,
    ModelRules,
    Policies,
    PolicyError,
    PolicyFile,
    RateLimit,
    UserPolicy,
    load_policies,
    normalize_environment,
    parse_policies,
)

ROOT = Path(__file__).resolve().parent.parent

FULL = """\
default_environment: dev
environments:
  development:
    models:
      allow: [gpt-4o-mini, claude-haiku-4-5, deepseek-chat, gemini-2.5-flash]
      on_disallowed: downgrade
      downgrade:
        gpt-4o: gpt-4o-mini
        claude-sonnet-4-5*: claude-haiku-4-5
    budget: {usd: 150, period: month, alert_at: [0.8, 0.5]}
    rate_limit: {requests_per_minute: 10}
    allow_header_claims: false
  staging: {}
  PROD:
    models: {allow: ["*"]}
keys:
  ci-openai:
    fingerprint: 3f9a0c11b2de
    environment: stg
    team: platform
    feature: evals
    budget: {usd: 20.5, period: day}
    rate_limit: {requests_per_minute: 30}
  laptop:
    last4: "x7Yz"
users:
  build-bot: {budget: {usd: 150, period: week}}
  alice:
attribution:
  process_env:
    environment: [APP_ENV, DEPLOY_ENV]
    team: TEAM_NAME
  hosts:
    "ci-*": staging
    "*": dev
premium_usd_per_mtok: 5
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policies(text)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_full_example_parses_to_the_typed_model() -> None:
    p = parse_policies(FULL, Path("/etc/x/policies.yaml"))
    assert p.enforcing is True
    assert p.source == Path("/etc/x/policies.yaml")
    assert p.default_environment == "development"
    assert list(p.environments) == ["development", "staging", "production"]
    assert p.environments["development"] == EnvironmentPolicy(
        name="development",
        models=ModelRules(
            allow=("gpt-4o-mini", "claude-haiku-4-5", "deepseek-chat", "gemini-2.5-flash"),
            on_disallowed="downgrade",
            downgrade=(("gpt-4o", "gpt-4o-mini"), ("claude-sonnet-4-5*", "claude-haiku-4-5")),
        ),
        budget=Budget(usd=Decimal("150"), period="month", alert_at=(0.5, 0.8)),
        rate_limit=RateLimit(requests_per_minute=10),
        allow_header_claims=False,
    )
    assert p.environments["staging"] == EnvironmentPolicy(name="staging")
    assert p.environments["production"].models == ModelRules(allow=("*",))
    assert p.keys == (
        KeyPolicy(
            name="ci-openai",
            fingerprint="3f9a0c11b2de",
            last4=None,
            environment="staging",
            team="platform",
            feature="evals",
            budget=Budget(usd=Decimal("20.5"), period="day"),
            rate_limit=RateLimit(requests_per_minute=30),
        ),
        KeyPolicy(name="laptop", last4="x7Yz"),
    )
    assert dict(p.users) == {
        "build-bot": UserPolicy(name="build-bot", budget=Budget(usd=Decimal("150"), period="week")),
        "alice": UserPolicy(name="alice"),
    }
    assert p.attribution == AttributionSettings(
        environment_vars=("APP_ENV", "DEPLOY_ENV"),
        team_vars=("TEAM_NAME",),
        feature_vars=("FEATURE",),
        host_rules=(("ci-*", "staging"), ("*", "development")),
    )
    assert p.premium_usd_per_mtok == Decimal("5")


def test_environment_lookup_aliases_and_undeclared() -> None:
    p = parse_policies(FULL)
    assert p.environment("DEV").name == "development"
    assert p.environment(" dev ").budget == Budget(usd=Decimal("150"), period="month", alert_at=(0.5, 0.8))
    assert p.environment("prod").models.is_allowed("gpt-4o") is True
    assert p.environment("qa") == EnvironmentPolicy(name="qa")
    assert p.environment("qa").models.resolve("o1-pro") == ("allowed", "o1-pro")
    assert [normalize_environment(n) for n in ("dev", "PROD", "stage", "stg", " Staging ", "qa")] == [
        "development",
        "production",
        "staging",
        "staging",
        "staging",
        "qa",
    ]


def test_key_for_by_fingerprint_then_last4() -> None:
    key = "sk-proj-abcdefghijklmnopqrstuvwx7Yz"
    text = FULL.replace("3f9a0c11b2de", key_fingerprint("sk-other-key-000000000000000000001234"))
    p = parse_policies(text)
    assert p.key_for(None, key).name == "laptop"  # last four characters
    assert p.key_for(key_fingerprint(key), key).name == "laptop"
    other = "sk-other-key-000000000000000000001234"
    assert p.key_for(key_fingerprint(other), other).name == "ci-openai"
    assert p.key_for(key_fingerprint(other), None).name == "ci-openai"
    assert p.key_for("000000000000", "sk-nothing-matches-here-0000") is None
    assert p.key_for(None, None) is None
    assert p.key_for(None, "x7Yz") is None  # a "key" of just four characters is no key
    assert p.key_named("laptop") == KeyPolicy(name="laptop", last4="x7Yz")
    assert p.key_named("nope") is None


def test_host_environment_first_match_any_case() -> None:
    p = parse_policies(FULL)
    assert p.host_environment("CI-runner-7") == "staging"
    assert p.host_environment("laptop") == "development"
    assert p.host_environment("") is None
    assert parse_policies("{}").host_environment("ci-1") is None


def test_missing_file_means_meter_only(tmp_path: Path) -> None:
    p = load_policies(tmp_path / "policies.yaml")
    assert p == Policies()
    assert p.enforcing is False
    assert p.source is None


def test_empty_and_comment_only_files_enforce_nothing_but_are_enforcing(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("# nothing yet\n")
    p = load_policies(path)
    assert p.enforcing is True
    assert p.source == path
    assert p.default_environment == "development"
    assert p.environments == {}
    assert p.attribution == AttributionSettings()


def test_shipped_policies_yaml_is_valid_and_cheap_in_development() -> None:
    p = load_policies(ROOT / "policies.yaml")
    assert p.enforcing is True
    assert p.default_environment == "development"
    dev = p.environment("development")
    assert dev.models.resolve("gpt-4o") == ("downgraded", "gpt-4o-mini")
    assert dev.models.resolve("gpt-4o-2024-08-06") == ("downgraded", "gpt-4o-mini")
    assert dev.models.resolve("claude-sonnet-4-5-20250929") == ("downgraded", "claude-haiku-4-5")
    assert dev.models.resolve("gpt-4o-mini") == ("allowed", "gpt-4o-mini")
    assert dev.models.resolve("text-embedding-3-small") == ("allowed", "text-embedding-3-small")
    assert dev.budget == Budget(usd=Decimal("150"), period="month", alert_at=(0.5, 0.8))
    assert p.environment("production").models.resolve("claude-opus-4-1") == ("allowed", "claude-opus-4-1")
    assert p.environment("staging").budget is not None
    assert p.environment("production").budget is None
    assert p.keys == ()


def test_every_problem_of_a_file_with_its_line() -> None:
    text = dedent(
        """\
        default_environment: 3
        environmnets: {}
        environments:
          development:
            modles: {}
            models:
              allow: gpt-4o-mini
              on_disallowed: refuse
              downgrade:
                gpt-4o: gpt-4.1
                o3: "*-mini"
            budget: {usd: -5, period: year, alert_at: [0, 1.5, x]}
            rate_limit: {requests_per_minute: 0}
          dev: {}
          staging:
            budget: {period: month}
            rate_limit: {requests_per_minute: 2.5}
            allow_header_claims: "yes"
        keys:
          a: {fingerprint: ABCDEF012345, last4: "1234"}
          b: {}
          d: {fingerprint: 3f9a0c11b2de}
          e: {fingerprint: 3f9a0c11b2de}
          f: {last4: 1234}
          g: {last4: "12345"}
          h: {last4: "wxyz"}
          i: {last4: "wxyz"}
        users:
          bob: {budgte: {usd: 1, period: day}}
        attribution:
          process_env: {environment: [APP-ENV], team: 7}
          hosts: {"ci-*": 5}
        premium_usd_per_mtok: abc
        """
    )
    assert problems(text) == [
        "policies.yaml:1: default_environment: must be a short name such as development, staging or "
        "production, not a number",
        "policies.yaml:2: environmnets: unknown key (did you mean environments?)",
        "policies.yaml:5: environments.development.modles: unknown key (did you mean models?)",
        "policies.yaml:8: environments.development.models.on_disallowed: must be downgrade or block, "
        "not refuse",
        "policies.yaml:10: environments.development.models.downgrade.gpt-4o: target gpt-4.1 is not itself "
        "allowed in development (allow: gpt-4o-mini)",
        "policies.yaml:11: environments.development.models.downgrade.o3: the target must be a model name, "
        "not a pattern (*-mini)",
        "policies.yaml:12: environments.development.budget.usd: must not be negative (got -5)",
        "policies.yaml:12: environments.development.budget.period: must be one of day, week, month, not year",
        "policies.yaml:12: environments.development.budget.alert_at[0]: must be in (0, 1], e.g. 0.8 for 80% "
        "(got 0)",
        "policies.yaml:12: environments.development.budget.alert_at[1]: must be in (0, 1], e.g. 0.8 for 80% "
        "(got 1.5)",
        "policies.yaml:12: environments.development.budget.alert_at[2]: must be a fraction of the budget, "
        "not a string",
        "policies.yaml:13: environments.development.rate_limit.requests_per_minute: must be at least 1 "
        "(got 0)",
        "policies.yaml:14: environments.dev: the same environment as environments.development",
        "policies.yaml:16: environments.staging.budget: usd is missing (the cap in US dollars)",
        "policies.yaml:17: environments.staging.rate_limit.requests_per_minute: must be a whole number, "
        "not 2.5",
        "policies.yaml:18: environments.staging.allow_header_claims: must be true or false, not a string",
        "policies.yaml:20: keys.a: has both fingerprint and last4: give exactly one of the two",
        "policies.yaml:20: keys.a.fingerprint: must be written in lowercase hex",
        "policies.yaml:21: keys.b: has neither fingerprint nor last4: give exactly one of the two",
        "policies.yaml:23: keys.e.fingerprint: the same fingerprint as keys.d",
        'policies.yaml:24: keys.f.last4: must be a quoted string such as "x7Yz", not a number',
        "policies.yaml:25: keys.g.last4: must be exactly the key's last 4 characters (got 5 characters)",
        "policies.yaml:27: keys.i.last4: the same last4 as keys.h: ambiguous",
        "policies.yaml:29: users.bob.budgte: unknown key (did you mean budget?)",
        "policies.yaml:31: attribution.process_env.environment: not a variable name: APP-ENV",
        "policies.yaml:31: attribution.process_env.team: must be a list of strings, not a number",
        "policies.yaml:32: attribution.hosts.ci-*: must be a short name such as development, staging or "
        "production, not a number",
        "policies.yaml:33: premium_usd_per_mtok: must be a number of US dollars, not a string",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "environments:\n  development:\n    budget:\n      usd: abc\n      period: month\n",
            "policies.yaml:4: environments.development.budget.usd: must be a number of US dollars, "
            "not a string",
        ),
        (
            "environments:\n  development:\n    budget: {usd: 5}\n",
            "policies.yaml:3: environments.development.budget: period is missing (one of day, week, month)",
        ),
        (
            "environments:\n  development:\n    budget:\n",
            "policies.yaml:3: environments.development.budget: must be a mapping with usd and period, "
            "not empty",
        ),
        (
            "environments:\n  development:\n    rate_limit: 10\n",
            "policies.yaml:3: environments.development.rate_limit: must be a mapping (key: value), "
            "not a number",
        ),
        (
            "environments:\n  development:\n    rate_limit: {}\n",
            "policies.yaml:3: environments.development.rate_limit: requests_per_minute is missing",
        ),
        (
            "environments:\n  development:\n    rate_limit: {requests_per_minute: 5, rpm: 5}\n",
            "policies.yaml:3: environments.development.rate_limit.rpm: unknown key (expected one of: "
            "requests_per_minute)",
        ),
        (
            "environments: [development]\n",
            "policies.yaml:1: environments: must be a mapping of names, not a list",
        ),
        (
            "environments:\n  development:\n    models:\n      allow: [gpt-4o-mini, 5]\n",
            "policies.yaml:4: environments.development.models.allow[1]: must be a string, not a number",
        ),
        (
            "environments:\n  development:\n    models:\n      allow:\n        - gpt-4o-mini\n        - ''\n",
            "policies.yaml:6: environments.development.models.allow[1]: must not be empty",
        ),
        (
            "environments:\n  development:\n    models:\n"
            "      allow: []\n      downgrade: {gpt-4o: gpt-4o-mini}\n",
            "policies.yaml:5: environments.development.models.downgrade.gpt-4o: target gpt-4o-mini is not "
            "itself allowed in development (allow: nothing)",
        ),
        (
            "keys:\n  ci:\n    fingerprint: 3f9a0c11b2\n",
            "policies.yaml:3: keys.ci.fingerprint: must be 12 lowercase hex digits (got 10 characters)",
        ),
        (
            "keys:\n  ci:\n    fingerprint: 123456789012\n",
            "policies.yaml:3: keys.ci.fingerprint: must be 12 lowercase hex digits as a quoted string, "
            "not a number",
        ),
        (
            "keys:\n  ci:\n    last4: abcd\n    environment: ''\n",
            "policies.yaml:4: keys.ci.environment: must be a short name such as development, staging or "
            "production, not a string",
        ),
        (
            "keys:\n  ci:\n",
            "policies.yaml:2: keys.ci: needs fingerprint or last4",
        ),
        (
            "prices:\n  gpt-x: {input: 1}\n",
            "policies.yaml:2: prices.gpt-x.output: is required (USD per million tokens)",
        ),
        (
            "prices:\n  gpt-x: {cached_input: 1}\n",
            "policies.yaml:2: prices.gpt-x: needs input and output (USD per million tokens) or "
            "usd_per_hour (USD per hour of audio)",
        ),
        (
            "prices:\n  gpt-live-x: {usd_per_hour: -3}\n",
            "policies.yaml:2: prices.gpt-live-x.usd_per_hour: must not be negative (got -3)",
        ),
        (
            "premium_usd_per_mtok: -1\n",
            "policies.yaml:1: premium_usd_per_mtok: must not be negative (got -1)",
        ),
        (
            "users:\n  bob: {rate_limit: {requests_per_minute: true}}\n",
            "policies.yaml:2: users.bob.rate_limit.requests_per_minute: must be a whole number, "
            "not true/false",
        ),
        (
            "default_environment: dev\ndefault_environment: prod\n",
            "policies.yaml:2: default_environment: duplicate key (the later one would win)",
        ),
        (
            "- a\n- b\n",
            "policies.yaml:1: (top level): must be a mapping of the keys default_environment, environments, "
            "keys, users, attribution, premium_usd_per_mtok, notifications, providers, azure_deployments, "
            "prices, not a list",
        ),
        (
            "environments:\n  development: {models: {allow: [a, b]}\n",
            "policies.yaml:3: (yaml): not valid YAML: expected ',' or '}', but got '<stream end>'",
        ),
        (
            "environments:\n\tdevelopment: {}\n",
            "policies.yaml:2: (yaml): not valid YAML: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_single_problems(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_the_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "team-policies.yaml"
    path.write_text("environments:\n  dev:\n    budget: {usd: -1, period: day}\n")
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert (
        str(info.value) == "team-policies.yaml:3: environments.dev.budget.usd: must not be negative (got -1)"
    )


def test_an_api_key_is_never_echoed() -> None:
    secret = "sk-proj-SECRETsecretSECRETsecret0123456789abcdef"
    text = dedent(
        f"""\
        keys:
          ci:
            fingerprint: {secret}
          laptop:
            last4: "{secret}"
          {secret}:
            last4: "abcd"
          other:
            api_key: {secret}
            {secret}: 1
            last4: "wxyz"
        """
    )
    found = problems(text)
    assert all(secret not in line and "SECRET" not in line for line in found)
    assert found == [
        "policies.yaml:3: keys.ci.fingerprint: this looks like an API key itself: never put a key here, "
        "only its fingerprint",
        "policies.yaml:5: keys.laptop.last4: this looks like an API key itself: never put a key here, "
        "only its last 4 characters",
        "policies.yaml:6: keys[#3]: this entry name looks like an API key: name entries by their use "
        "(e.g. ci-openai) and give the key's fingerprint or last4",
        "policies.yaml:9: keys.other.api_key: unknown key (expected one of: fingerprint, last4, environment, "
        "team, feature, budget, rate_limit)",
        "policies.yaml:10: keys.other.<a name that looks like an API key>: unknown key (expected one of: "
        "fingerprint, last4, environment, team, feature, budget, rate_limit)",
    ]


def test_values_are_normalised() -> None:
    p = parse_policies(
        dedent(
            """\
            environments:
              Staging:
                models: {allow: gpt-4o-mini, on_disallowed: BLOCK}
                budget: {usd: "12.50", period: Week, alert_at: 0.9}
            """
        )
    )
    env = p.environment("stg")
    assert env.models == ModelRules(allow=("gpt-4o-mini",), on_disallowed="block")
    assert env.budget == Budget(usd=Decimal("12.50"), period="week", alert_at=(0.9,))


def test_merge_keys_and_anchors_work() -> None:
    text = dedent(
        """\
        environments:
          development: &cheap
            models: {allow: [gpt-4o-mini]}
          staging:
            <<: *cheap
            budget: {usd: 10, period: day}
        """
    )
    p = parse_policies(text)
    assert p.environment("staging").models.allow == ("gpt-4o-mini",)
    assert p.environment("staging").budget == Budget(usd=Decimal("10"), period="day")


# -- live reload -----------------------------------------------------------------------------------

GOOD = "environments:\n  development:\n    models: {allow: [gpt-4o-mini]}\n"
GOOD2 = "environments:\n  development:\n    models: {allow: [gpt-4o-mini, gpt-4o]}\n"
BAD = "environments:\n  development:\n    models: {allow: [gpt-4o-mini], on_disallowed: nope}\n"


class Clock:
    """Distinct mtimes for each write, so tests do not depend on the filesystem's granularity."""

    def __init__(self) -> None:
        self.ns = 1_800_000_000_000_000_000

    def write(self, path: Path, text: str) -> None:
        path.write_text(text)
        self.ns += 1_000_000_000
        os.utime(path, ns=(self.ns, self.ns))


def test_policy_file_reload_cycle(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    clock = Clock()
    clock.write(path, GOOD)
    watched = PolicyFile(path)
    first = watched.load()
    assert first.environment("development").models.allow == ("gpt-4o-mini",)
    assert watched.check() == (None, None)  # unchanged

    clock.write(path, GOOD2)  # a valid edit
    new, error = watched.check()
    assert error is None
    assert new is not None and new.environment("development").models.allow == ("gpt-4o-mini", "gpt-4o")
    assert watched.policies is new
    assert watched.check() == (None, None)

    clock.write(path, BAD)  # an invalid edit: reported once, the last good stays
    assert watched.check() == (
        None,
        "policies.yaml:3: environments.development.models.on_disallowed: must be downgrade or block, "
        "not nope",
    )
    assert watched.policies is new
    assert watched.check() == (None, None)

    clock.write(path, GOOD2)  # fixed again (same content as in force): reported as valid
    again, error = watched.check()
    assert error is None and again == new

    clock.write(path, GOOD2)  # touched, same content: nothing to do
    assert watched.check() == (None, None)

    path.unlink()  # deleted: meter only, once it is still missing at the next check
    in_force = watched.policies
    assert watched.check() == (None, None) and watched.policies is in_force
    gone, message = watched.check()
    assert gone == Policies() and gone.enforcing is False
    assert message == f"{path} was removed: metering only, no policy is enforced"
    assert watched.check() == (None, None)

    clock.write(path, GOOD)  # created again
    back, error = watched.check()
    assert error is None and back is not None and back.enforcing is True
    assert back.environment("development").models.allow == ("gpt-4o-mini",)


def test_policy_file_saved_by_delete_then_write_never_lifts_the_policy(tmp_path: Path) -> None:
    """Editors and tools that save by removing the file first: a check in between keeps the policy."""
    path = tmp_path / "policies.yaml"
    clock = Clock()
    clock.write(path, GOOD)
    watched = PolicyFile(path)
    in_force = watched.load()
    assert in_force.enforcing
    path.unlink()
    assert watched.check() == (None, None) and watched.policies is in_force
    clock.write(path, GOOD)  # the same content back
    assert watched.check() == (None, None) and watched.policies is in_force
    path.unlink()
    assert watched.check() == (None, None) and watched.policies is in_force
    clock.write(path, GOOD2)  # an edit saved that way
    new, error = watched.check()
    assert error is None and new is not None and new.enforcing and watched.policies is new
    path.unlink()  # a missing file at one check, then at the next: removed for real
    assert watched.check() == (None, None) and watched.policies is new
    gone, message = watched.check()
    assert gone is not None and not gone.enforcing and message is not None and "was removed" in message


def test_policy_file_same_size_edit_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    clock = Clock()
    clock.write(path, "default_environment: staging\n")
    watched = PolicyFile(path)
    assert watched.load().default_environment == "staging"
    clock.write(path, "default_environment: testing\n")  # same length
    new, error = watched.check()
    assert error is None and new is not None and new.default_environment == "testing"


def test_policy_file_load_errors_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    watched = PolicyFile(path)
    assert watched.load() == Policies()
    assert watched.check() == (None, None)  # still missing: nothing to say
    path.write_text(BAD)
    with pytest.raises(PolicyError):
        PolicyFile(path).load()
    new, error = watched.check()  # appeared, invalid: meter-only stays in force
    assert new is None and error is not None and error.startswith("policies.yaml:3: ")
    assert watched.policies == Policies()
    path.write_bytes(b"default_environment: \xff\n")
    os.utime(path, ns=(1, 1))
    assert watched.check() == (None, "policies.yaml:1: (file): not UTF-8 text (invalid start byte)")


def test_may_have_changed_is_false_only_when_check_has_nothing_to_do(tmp_path: Path) -> None:
    """The watcher stats on the event loop and reads in a thread only when this says so: it must
    never hide an edit, a removal, or the second look a removal needs."""
    path = tmp_path / "policies.yaml"
    clock = Clock()
    clock.write(path, GOOD)
    watched = PolicyFile(path)
    watched.load()

    def look() -> tuple[Policies | None, str | None]:
        if not watched.may_have_changed():
            state = (watched.policies, watched._signature, watched._missing_once, watched._present)
            assert watched.check() == (None, None)
            assert state == (watched.policies, watched._signature, watched._missing_once, watched._present)
            return None, None
        return watched.check()

    assert not watched.may_have_changed()
    clock.write(path, GOOD2)
    assert watched.may_have_changed()
    new, error = look()
    assert error is None and new is not None and new.environment("development").models.allow[-1] == "gpt-4o"
    assert not watched.may_have_changed()
    clock.write(path, BAD)
    assert look()[1] is not None
    assert not watched.may_have_changed()  # reported once
    path.unlink()
    assert watched.may_have_changed()
    assert look() == (None, None)  # missing once
    assert watched.may_have_changed()  # the second look still to come
    gone, message = look()
    assert gone is not None and not gone.enforcing and message is not None
    assert not watched.may_have_changed()  # still missing: nothing to say
    clock.write(path, GOOD)
    assert watched.may_have_changed()
    back, error = look()
    assert error is None and back is not None and back.enforcing
    path.unlink()
    assert look() == (None, None)  # missing once, then back before the second look
    clock.write(path, GOOD2)
    assert watched.may_have_changed()
    edited, error = look()
    assert error is None and edited is not None
    assert edited.environment("development").models.allow[-1] == "gpt-4o"


@pytest.mark.parametrize("allow", ['"gpt-4o-mini, claude-haiku-4-5"', '["gpt-4o-mini,claude-haiku-4-5"]'])
def test_an_allow_pattern_with_commas_is_an_error(allow: str) -> None:
    """`allow: a, b` is one YAML string: a pattern no model matches, so every call was refused."""
    text = f"environments:\n  demo:\n    models:\n      allow: {allow}\n"
    with pytest.raises(PolicyError) as caught:
        parse_policies(text)
    assert "policies.yaml:4: environments.demo.models.allow: " in str(caught.value)
    assert "write a list, [gpt-4o-mini, claude-haiku-4-5]" in str(caught.value)


def test_a_default_environment_one_typo_from_a_declared_one_is_an_error() -> None:
    """`developmnet` was taken as an environment without rules: calls nothing else attributes
    escaped development's allowlist, budget and rate limit."""
    declared = "environments:\n  development: {budget: {usd: 5, period: day}}\n  production: {}\n"
    with pytest.raises(PolicyError) as caught:
        parse_policies("default_environment: developmnet\n" + declared)
    assert str(caught.value).endswith(
        "policies.yaml:1: default_environment: developmnet is declared nowhere under environments: "
        "did you mean development?"
    )
    assert parse_policies("default_environment: sandbox\n" + declared).default_environment == "sandbox"
    assert parse_policies("default_environment: dev\n" + declared).default_environment == "development"


def test_a_price_key_scoped_to_no_provider_is_refused_naming_the_openrouter_spelling() -> None:
    """`"somevendor/other-*"` (a model as OpenRouter shows it) was read as provider somevendor
    and model other-*, and silently never matched any call: now refused at load."""
    with pytest.raises(PolicyError) as err:
        parse_policies('prices:\n  "somevendor/other-*": {input: 1, output: 2}\n')
    message = str(err.value)
    assert "policies.yaml:2: prices.somevendor/other-*:" in message
    assert "somevendor is no provider" in message and "openrouter/somevendor/other-*" in message
    with pytest.raises(PolicyError, match=r"ollama is no provider .*declare it under providers:"):
        parse_policies('prices:\n  "ollama/*": {input: 0, output: 0}\n')  # the provider left out
    ok = parse_policies(
        "providers:\n  ollama: {url: 'http://localhost:11434'}\nprices:\n"
        '  "openrouter/somevendor/other-*": {input: 1, output: 2}\n'
        '  "ollama/*": {input: 0, output: 0}\n  "models/gemini-x": {input: 1, output: 2}\n'
        '  "openai/gpt-4o": {input: 1, output: 2}\n'
    )
    assert [key for key, _ in ok.prices] == [
        "openrouter/somevendor/other-*",
        "ollama/*",
        "models/gemini-x",
        "openai/gpt-4o",
    ]
