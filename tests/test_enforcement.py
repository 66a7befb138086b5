"""The decision before a call goes upstream: allowlist, budgets, rate limits, in that order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from addon.budgets import scopes_for
from addon.enforcement import Enforcer
from addon.policies import Policies, parse_policies
from addon.record import CallRecord

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


def test_a_finished_call_goes_from_reserved_to_spent_in_one_step() -> None:
    """The writer thread settles a call and records its cost; a decision on the event loop in
    between must not see the call neither reserved nor spent (and admit one call too many)."""
    e = Enforcer(parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n"))
    admitted: list[str] = []

    def start(call_id: str) -> None:
        d = decide(e, key_name=None, user_name=None, call_id=call_id, estimate=lambda _m: Decimal("0.3"))
        if d.refusal is None:
            admitted.append(call_id)

    for i in range(5):
        start(f"c{i}")
    assert admitted == ["c0", "c1", "c2", "c3"]  # 0.9 reserved: a fourth fits under $1, a fifth not
    lock = e.budgets._lock
    seen: list[Decimal] = []

    class Watching:  # the tracker's lock, checking what a decision would see each time it is taken
        def __enter__(self) -> None:
            lock.acquire()
            spent = e.budgets._spent.get((scopes_for("development")[0], "day"), (None, Decimal(0)))[1]
            seen.append(spent + sum(e.budgets._reserved.values(), Decimal(0)))

        def __exit__(self, *exc: object) -> None:
            lock.release()

    e.budgets._lock = Watching()  # type: ignore[assignment]
    record = CallRecord(
        id="c0", ts=datetime.fromtimestamp(NOW, UTC), session_id="s", environment="development",
        provider="openai", host="api.openai.com", path="/v1/chat/completions", api_flavor="chat",
        cost_usd=Decimal("0.3"),
    )  # fmt: skip
    e.record_spend([record])
    e.budgets._lock = lock
    assert seen and min(seen) >= Decimal("1.2")  # 0.3 spent + 0.9 reserved, at every look
    start("c99")
    assert "c99" not in admitted


def test_withdraw_gives_back_the_reservation_and_the_rate_limit_hit() -> None:
    e = Enforcer(POLICIES)
    d = decide(e, key_name=None, user_name=None, call_id="a", estimate=lambda _m: Decimal("0.2"))
    assert d.refusal is None and d.counted is not None and e.budgets.reserved()
    e.withdraw(d, "a")
    assert e.budgets.reserved() == {} and d.counted is None
    e.withdraw(d, "a")  # twice: nothing more to give back
    for i in range(3):  # the environment's 3 a minute are all there again
        assert decide(e, key_name=None, user_name=None, call_id=f"b{i}").refusal is None
    assert decide(e, key_name=None, user_name=None, call_id="b3").action == "rate_limited"


def test_unpriced_calls_escaping_a_budget_are_reported_once_per_scope_and_model() -> None:
    e = Enforcer(POLICIES)

    def call(model: str, env: str = "development", user: str | None = None, **kw) -> CallRecord:
        record = CallRecord(
            id="c", ts=datetime.fromtimestamp(NOW, UTC), session_id="s", environment=env,
            provider="openai", host="api.openai.com", path="/v1/chat/completions", api_flavor="chat",
            model_requested=model, model_sent=model, user_name=user, input_tokens=10, output_tokens=5,
            usage_source="reported", price_status="unknown_model",
        )  # fmt: skip
        for name, value in kw.items():
            setattr(record, name, value)
        return record

    first = e.unpriced([call("new-model", user="build-bot"), call("new-model", user="build-bot")])
    assert [(u.scope.kind, u.scope.name, u.provider, u.model) for u in first] == [
        ("environment", "development", "openai", "new-model"),
        ("user", "build-bot", "openai", "new-model"),
    ]
    assert first[0].message() == (
        "new-model (openai) has no price: its calls count $0 against the development budget of "
        "$1.00 per day, which they can spend past; price it under prices: in policies.yaml "
        "(scripts/spend unpriced lists such calls)"
    )
    assert e.unpriced([call("new-model", user="build-bot")]) == []  # said already
    e.set_policies(POLICIES)  # a reload: still once per run
    assert e.unpriced([call("new-model")]) == []
    assert e.unpriced([call("new-model", env="staging")]) == []  # staging has no budget
    assert e.unpriced([call("other", input_tokens=None, output_tokens=None)]) == []  # no usage
    assert e.unpriced([call("other", price_status="priced", cost_usd=Decimal("0.1"))]) == []
    assert e.unpriced([call("other", model_reported="other-2026-11-01")])[0].model == "other-2026-11-01"
    assert Enforcer(parse_policies("default_environment: development\n")).unpriced([call("x")]) == []
