"""Attribution rules: which rule decides the environment, team and feature of a call."""

from __future__ import annotations

import json

import pytest

from addon.api_keys import key_fingerprint
from addon.attribution import attribute, parse_tags_header
from addon.client_process import ClientProcess
from addon.policies import Policies, parse_policies

KEY = "sk-proj-abcdefghijklmnop0123456789WXYZ"
POLICIES = parse_policies(
    f"""
default_environment: development
keys:
  ci-openai:
    fingerprint: {key_fingerprint(KEY)}
    environment: staging
    team: platform
  batch:
    last4: "9999"
    environment: production
attribution:
  process_env:
    environment: [DEPLOY_ENV, APP_ENV]
    team: [TEAM]
    feature: [FEATURE]
  hosts:
    "ci-*": staging
"""
)


def proc(**env: str) -> ClientProcess:
    return ClientProcess(pid=42, name="python", user="dev", env=env)


def test_header_decides_first_and_keeps_other_keys() -> None:
    got = attribute(
        policies=POLICIES,
        header='{"env": "prod", "team": "backend", "feature": "search", "ticket": "T-1", "n": 2}',
        api_key="sk-unmapped",
        fingerprint=key_fingerprint("sk-unmapped"),
        process=proc(APP_ENV="staging", TEAM="ops"),
        hostname="ci-runner-1",
    )
    assert (got.environment, got.environment_source) == ("production", "header")
    assert (got.team, got.feature) == ("backend", "search")
    assert json.loads(got.tags or "") == {"n": 2, "ticket": "T-1"}
    assert got.key_name is None and got.problems == []


def test_key_by_fingerprint_then_by_last_four() -> None:
    by_fp = attribute(
        policies=POLICIES, api_key=KEY, fingerprint=key_fingerprint(KEY), process=proc(APP_ENV="prod")
    )
    assert (by_fp.environment, by_fp.environment_source, by_fp.team) == ("staging", "key", "platform")
    other = "sk-other-9999"
    by_last4 = attribute(policies=POLICIES, api_key=other, fingerprint=key_fingerprint(other))
    assert (by_last4.environment, by_last4.key_name) == ("production", "batch")


def test_process_variables_in_configured_order() -> None:
    got = attribute(
        policies=POLICIES, process=proc(APP_ENV="staging", DEPLOY_ENV="production", FEATURE="rag")
    )
    assert (got.environment, got.environment_source, got.feature) == ("production", "process", "rag")
    assert attribute(policies=POLICIES, process=proc(APP_ENV=" stg ")).environment == "staging"


def test_forced_then_host_then_default() -> None:
    forced = attribute(policies=POLICIES, hostname="ci-runner-1", forced_environment="production")
    assert (forced.environment, forced.environment_source) == ("production", "forced")
    host = attribute(policies=POLICIES, hostname="ci-runner-1")
    assert (host.environment, host.environment_source) == ("staging", "host")
    default = attribute(policies=POLICIES, hostname="laptop", process=proc())
    assert (default.environment, default.environment_source) == ("development", "default")
    assert attribute(policies=Policies()).environment == "development"


def test_team_falls_back_from_header_to_key_to_process() -> None:
    got = attribute(policies=POLICIES, header='{"feature": "x"}', process=proc(TEAM="ops"))
    assert (got.team, got.feature, got.environment_source) == ("ops", "x", "default")
    keyed = attribute(
        policies=POLICIES, fingerprint=key_fingerprint(KEY), api_key=KEY, process=proc(TEAM="ops")
    )
    assert keyed.team == "platform"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("{env: production", "not valid JSON"),
        ('["production"]', "a JSON object is expected, not list"),
        ('{"env": {"name": "x"}}', "environment must be a string"),
        ("{" * 5000, "longer than 4096"),
    ],
)
def test_bad_header_is_ignored_with_a_reason(header: str, why: str) -> None:
    got = attribute(policies=POLICIES, header=header, process=proc(APP_ENV="staging"))
    assert (got.environment, got.environment_source) == ("staging", "process")
    assert len(got.problems) == 1 and why in got.problems[0]
    assert parse_tags_header(header).problem == got.problems[0]


def test_a_header_cannot_move_a_mapped_key_elsewhere() -> None:
    got = attribute(
        policies=POLICIES,
        header='{"env": "production", "team": "x"}',
        api_key=KEY,
        fingerprint=key_fingerprint(KEY),
    )
    assert (got.environment, got.environment_source) == ("staging", "key")
    assert got.team == "x"  # team and feature may still come from the header
    assert got.problems == [
        "X-Metering-Tags env 'production' ignored: the API key 'ci-openai' belongs to staging (policies.yaml)"
    ]


def test_environments_can_forbid_header_claims() -> None:
    policies = parse_policies("environments:\n  production:\n    allow_header_claims: false\n  staging: {}\n")
    denied = attribute(policies=policies, header='{"env": "production"}', process=proc(APP_ENV="dev"))
    assert (denied.environment, denied.environment_source) == ("development", "process")
    assert denied.problems == [
        "X-Metering-Tags env 'production' ignored: production does not allow header claims (policies.yaml)"
    ]
    allowed = attribute(policies=policies, header='{"env": "staging"}')
    assert (allowed.environment, allowed.environment_source, allowed.problems) == ("staging", "header", [])


def test_process_env_naming_an_undeclared_environment_is_ignored_like_a_header() -> None:
    """APP_ENV is as much in the caller's hands as the header: an environment policies.yaml does
    not declare has no allowlist, budget or rate limit, so it is not entered that way either."""
    declared = parse_policies(
        "default_environment: development\nenvironments:\n  development: {}\n  production: {}\n"
        "attribution:\n  hosts:\n    ci-*: production\n"
    )
    got = attribute(policies=declared, process=proc(APP_ENV="sandbox"), hostname="laptop")
    assert (got.environment, got.environment_source) == ("development", "default")
    assert got.problems == [
        "APP_ENV='sandbox' of the calling process ignored: policies.yaml declares no such environment "
        "(development, production)"
    ]
    on_ci = attribute(policies=declared, process=proc(APP_ENV="sandbox"), hostname="ci-7")
    assert (on_ci.environment, on_ci.environment_source) == ("production", "host")
    named = attribute(policies=declared, process=proc(APP_ENV="Prod"))
    assert (named.environment, named.environment_source, named.problems) == ("production", "process", [])
    unenforced = attribute(policies=Policies(), process=proc(APP_ENV="sandbox"))
    assert (unenforced.environment, unenforced.environment_source) == ("sandbox", "process")


def test_an_environment_forbidding_header_claims_keeps_its_calls_too() -> None:
    """``allow_header_claims: false`` forbids header claims altogether (issue 8): a header can no
    more move a call out of such an environment than into it, whichever rule put the call there."""
    policies = parse_policies(
        "default_environment: development\nenvironments:\n  development:\n    allow_header_claims: false\n"
        "  staging: {}\n  production: {}\n"
    )
    kept = attribute(policies=policies, header='{"env": "production", "team": "web"}', hostname="laptop")
    assert (kept.environment, kept.environment_source, kept.team) == ("development", "default", "web")
    assert kept.problems == [
        "X-Metering-Tags env 'production' ignored: the call is development's (default), which does not "
        "allow header claims (policies.yaml)"
    ]
    by_process = attribute(policies=policies, header='{"env": "staging"}', process=proc(APP_ENV="dev"))
    assert (by_process.environment, by_process.environment_source) == ("development", "process")
    same = attribute(policies=policies, header='{"env": "development"}')  # its own: nothing moves
    assert (same.environment, same.environment_source) == ("development", "default")
    from_staging = attribute(policies=policies, header='{"env": "production"}', process=proc(APP_ENV="stg"))
    assert (from_staging.environment, from_staging.environment_source) == ("production", "header")
