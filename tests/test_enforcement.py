"""The decision before a call goes upstream: allowlist, budgets, rate limits, in that order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from addon.budgets import scopes_for
from addon.enforcement import Enforcer
from addon.policies import Policies, parse_policies

POLICIES = parse_policies(
    """
default_environment: development
environments:
  development:
    models:
      allow: [gpt-4o-mini, claude-haiku-4-5]
      downgrade: {gpt-4o: gpt-4o-mini}
    budget: {usd: 1, period: day}
    rate_limit: {requests_per_minute: 3}
  staging:
    models: {allow: [gpt-4o-mini], on_disallowed: block}
keys:
  ci:
    last4: "WXYZ"
    rate_limit: {requests_per_minute: 1}
users:
  build-bot: {budget: {usd: 0.5, period: month}}
"""
)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC).timestamp()


def decide(enforcer: Enforcer, model: str | None = "gpt-4o-mini", env: str = "development", **kw):
    return enforcer.decide(provider="openai", environment=env, model=model, now=kw.pop("now", NOW), **kw)


def test_allowlist_downgrade_and_block() -> None:
    e = Enforcer(POLICIES)
    assert (d := decide(e, "gpt-4o-mini", key_name=None, user_name=None)).action == "allowed"
    d = decide(e, "gpt-4o-2024-08-06", key_name=None, user_name=None)
    assert (d.action, d.model_sent, d.refusal) == ("downgraded", "gpt-4o-mini", None)
    assert d.notice is not None and d.notice.startswith("downgraded gpt-4o-2024-08-06 -> gpt-4o-mini")
    d = decide(e, "o3", key_name=None, user_name=None)  # no mapping: blocked
    assert d.action == "blocked" and d.refusal is not None and d.refusal.status_code == 403
    assert "o3" in json.loads(d.refusal.content)["error"]["message"]
    d = decide(e, "gpt-4o", env="staging", key_name=None, user_name=None)  # block, mapping or not
    assert d.action == "blocked"
    assert decide(e, "anything", env="production", key_name=None, user_name=None).action == "allowed"


def test_budget_caps_environment_and_user() -> None:
    e = Enforcer(POLICIES)
    ts = datetime.fromtimestamp(NOW, UTC)
    e.budgets.record(scopes_for("development", None, "build-bot"), Decimal("0.5"), ts)
    d = decide(e, key_name=None, user_name="build-bot")
    assert d.action == "over_budget" and d.refusal is not None and d.refusal.status_code == 429
    retry = int(d.refusal.headers["retry-after"])
    assert retry == (datetime(2026, 12, 1, tzinfo=UTC) - ts).total_seconds()
    assert decide(e, key_name=None, user_name="alice").action == "allowed"  # env spent 0.5 of 1
    e.budgets.record(scopes_for("development", None, "alice"), Decimal("0.5"), ts)
    d = decide(e, key_name=None, user_name="alice")
    assert d.action == "over_budget"
    assert int(d.refusal.headers["retry-after"]) == 12 * 3600  # to the end of the UTC day


def test_rate_limits_per_key_and_environment() -> None:
    e = Enforcer(POLICIES)
    assert decide(e, key_name="ci", user_name=None).action == "allowed"
    d = decide(e, key_name="ci", user_name=None, now=NOW + 1)
    assert d.action == "rate_limited" and d.refusal is not None
    assert d.refusal.headers["retry-after"] == "59" and "key ci" in (d.message or "")
    # the refused call was not counted: the environment still has 2 of 3 left
    assert [decide(e, key_name=None, user_name=None, now=NOW + 2).action for _ in range(3)] == [
        "allowed",
        "allowed",
        "rate_limited",
    ]
    assert decide(e, key_name=None, user_name=None, now=NOW + 61).action == "allowed"


def test_nothing_enforced_without_a_policy_file() -> None:
    e = Enforcer(Policies())
    assert [decide(e, "o3", key_name="ci", user_name=None).action for _ in range(5)] == ["allowed"] * 5
