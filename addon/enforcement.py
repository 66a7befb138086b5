"""The decision on one call before it goes upstream: allow, downgrade or refuse.

Checks, in order: the model allowlist of the call's environment (a disallowed
model is downgraded to its mapped target, or blocked), the budgets of its
environment, API key and user (hard caps), and the request rates of its key
and environment. A refused call never reaches upstream; the client gets an
error in the provider's own format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from mitmproxy import http

from addon import client_process
from addon.attribution import UnknownUser
from addon.budgets import BudgetAlert, BudgetTracker, Scope, UnpricedCall, scopes_for
from addon.policies import Policies
from addon.pricing import UNKNOWN_MODEL
from addon.rate_limits import RateLimiter, limits_for, retry_after_seconds
from addon.record import CallRecord
from addon.refusals import (
    USER_NOT_IDENTIFIED,
    blocked_message,
    budget_refusal_status,
    downgrade_notice,
    not_identified_in_time_message,
    not_identified_in_time_response,
    rate_limit_message,
    refusal_response,
    unidentified_user_message,
)

log = logging.getLogger("tokometer")
# The Retry-After of a call refused because its calling process was not identified in time: the
# connection's lookup goes on, and a retry on it has the answer at once.
NOT_IDENTIFIED_RETRY_AFTER = 2


@dataclass(slots=True)
class Decision:
    """What to do with one call."""

    action: str  # allowed | downgraded | blocked | over_budget | rate_limited
    model_sent: str | None
    notice: str | None = None  # for the X-Tokometer-Notice response header
    refusal: http.Response | None = None  # the answer when the call is refused
    message: str | None = None  # why it was refused (also on the row)
    counted: tuple[tuple[str, ...], float] | None = None  # rate-limit scopes it was counted in, and when


def _unidentified_refusal(provider: str, model: str | None, unknown: UnknownUser | None) -> Decision:
    """A call refused because its user is unknown where users have limits: 503 + Retry-After when
    its lookup was only late (a retry finds the user), else 403 with the lookup's reason."""
    if unknown is not None and unknown.late:
        message = not_identified_in_time_message(NOT_IDENTIFIED_RETRY_AFTER)
        refusal = not_identified_in_time_response(provider, message, NOT_IDENTIFIED_RETRY_AFTER)
    else:
        message = unidentified_user_message(unknown.why if unknown is not None else None)
        refusal = refusal_response(provider, 403, message, kind="blocked", code=USER_NOT_IDENTIFIED)
    return Decision("blocked", model, refusal=refusal, message=message)


def _warn_if_users_unidentifiable(policies: Policies) -> None:
    """Warn (as policies are put in force) when users have limits but this host cannot identify
    a calling process (macOS without psutil): every call would count as attribution.unidentified_user,
    or be refused."""
    if not policies.limits_users():
        return
    problem = client_process.identification_problem()
    if problem is None:
        return
    fallback = policies.attribution.unidentified_user
    outcome = (
        f"every call counts as user {fallback}"
        if fallback
        else "every call is refused (403) while any user has a budget or rate limit"
    )
    log.warning(
        "tokometer: policies.yaml limits users but this host cannot identify the calling process "
        "(%s): %s; install psutil, or set attribution.unidentified_user",
        problem,
        outcome,
    )


class Enforcer:
    """Holds the policies in force, the spend per budget and the request windows."""

    def __init__(self, policies: Policies) -> None:
        self.policies = policies
        self.budgets = BudgetTracker(policies)
        self.rates = RateLimiter()
        self._rate_limited = policies.has_rate_limits
        _warn_if_users_unidentifiable(policies)

    def set_policies(self, policies: Policies) -> None:
        """Put new policies in force, keeping the spend and windows counted so far."""
        self.policies = policies
        self.budgets.set_policies(policies)
        self._rate_limited = policies.has_rate_limits
        _warn_if_users_unidentifiable(policies)

    def decide(
        self,
        *,
        provider: str,
        environment: str,
        key_name: str | None,
        user_name: str | None,
        model: str | None,
        now: float | None = None,
        call_id: str | None = None,
        estimate: Callable[[str | None], Decimal] | None = None,
        budgeted: bool = True,
        user_identified: bool = True,
        unknown_user: UnknownUser | None = None,
    ) -> Decision:
        """Allow, downgrade or refuse one call (microseconds: dict lookups and compares).

        ``budgeted=False``: a call that costs nothing per token (a flat-fee plan's key) is
        held to the model rules and rate limits, not to the dollar budgets.
        ``user_identified=False``: no user could be told (nor ``attribution.unidentified_user``
        named one): refused where a user's budget or rate limit would apply to it, 403 saying why
        (``unknown_user``), or 503 with ``Retry-After`` when the lookup only had no answer in time.
        """
        if not self.policies.enforcing:
            return Decision("allowed", model)
        now = time.time() if now is None else now
        decision = self.decide_model(provider, environment, model)
        if decision.refusal is not None:
            return decision
        if not user_identified and self.policies.limits_users(budgets=budgeted):
            return _unidentified_refusal(provider, decision.model_sent, unknown_user)

        refusal = None
        if budgeted and self.budgets.has_budgets:
            reserve = None
            if call_id is not None and estimate is not None:
                sent = decision.model_sent
                reserve = (call_id, lambda: estimate(sent))
            scopes = scopes_for(environment, key_name, user_name)
            refusal = self.budgets.check(scopes, datetime.fromtimestamp(now, UTC), reserve=reserve)
        if refusal is not None:
            message = refusal.message()
            return Decision(
                "over_budget",
                decision.model_sent,
                refusal=refusal_response(
                    provider,
                    budget_refusal_status(provider, final=refusal.spent_out),
                    message,
                    kind="over_budget",
                    retry_after=refusal.retry_after,
                    final=refusal.spent_out,
                ),
                message=message,
            )

        if not self._rate_limited:
            return decision
        limits = limits_for(self.policies, environment, key_name, user_name)
        wait = self.rates.check_and_record_many(limits, now)
        if wait is None and limits:
            decision.counted = (tuple(key for key, _ in limits), now)
        if wait is not None:
            if call_id is not None:
                self.budgets.settle(call_id)  # refused after all: nothing in flight
            retry_after = retry_after_seconds(wait)
            refusing = self.rates.refusing(limits, now)
            key, limit = refusing if refusing is not None else limits[0]
            kind, name = key.split(":", 1)
            label = name if kind == "environment" else f"{kind} {name}"
            message = rate_limit_message(label, limit.requests_per_minute, retry_after)
            return Decision(
                "rate_limited",
                decision.model_sent,
                refusal=refusal_response(
                    provider, 429, message, kind="rate_limited", retry_after=retry_after
                ),
                message=message,
            )
        return decision

    def decide_model(self, provider: str, environment: str, model: str | None) -> Decision:
        """The model allowlist alone: allowed, downgraded to the mapped target, or blocked.

        ``decide`` starts with it; a session that names its model after it started (Gemini
        Live's setup message) is checked with it then. No model (None): allowed here.
        """
        if not self.policies.enforcing or model is None:
            return Decision("allowed", model)
        rules = self.policies.environment(environment).models
        if rules.is_allowed(model):
            return Decision("allowed", model)
        downgrading = rules.on_disallowed == "downgrade"
        target = rules.downgrade_target(model, self.policies.id_host(provider)) if downgrading else None
        if target is None:
            message = blocked_message(environment, model, list(rules.allow))
            return Decision(
                "blocked",
                model,
                refusal=refusal_response(provider, 403, message, kind="blocked"),
                message=message,
            )
        return Decision("downgraded", target, notice=downgrade_notice(environment, model, target))

    def spent_budget(
        self, scopes: tuple[Scope, ...], now: float | None = None, *, spent_only: bool = False
    ) -> str | None:
        """The message of an over-budget refusal if a budget of ``scopes`` is spent (what is in
        flight counted), else None. ``spent_only``: only when the spend itself reached the cap, not
        when calls in flight fill it (a session is not closed for what gives room back in seconds).
        Reserves nothing; microseconds. None when nothing is enforced."""
        if not (self.policies.enforcing and self.budgets.has_budgets):
            return None
        when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        refusal = self.budgets.check(scopes, when)
        if refusal is None or (spent_only and refusal.spent < refusal.budget.usd):
            return None
        return refusal.message()

    def hold(self, record: CallRecord) -> None:
        """Count a priced call against its budgets now, until the store records it (see
        ``BudgetTracker.hold``)."""
        if record.cost_usd is not None and self.budgets.has_budgets:
            scopes = scopes_for(record.environment, record.key_name, record.user_name)
            self.budgets.hold(record.id, scopes, record.cost_usd, record.ts)

    def refuse_model(self, provider: str, environment: str, model: str, reason: str) -> Decision:
        """A model that would be downgraded but cannot be rewritten: refused, saying why."""
        allowed = list(self.policies.environment(environment).models.allow)
        message = f"{blocked_message(environment, model, allowed)} ({reason})"
        return Decision(
            "blocked",
            model,
            refusal=refusal_response(provider, 403, message, kind="blocked"),
            message=message,
        )

    def record_spend(self, records: list[CallRecord]) -> list[BudgetAlert]:
        """Count finished calls against their budgets (the store's writer thread calls this)."""
        alerts: list[BudgetAlert] = []
        for record in records:
            scopes = scopes_for(record.environment, record.key_name, record.user_name)
            alerts.extend(self.budgets.finish(record.id, scopes, record.cost_usd, record.ts))
        return alerts

    def unpriced(self, records: list[CallRecord]) -> list[UnpricedCall]:
        """Finished calls with usage to a model no price list knows, in a scope with a budget:
        they count $0 against it. Each (scope, provider, model) is returned once (the store's
        writer thread calls this, after ``record_spend``)."""
        if not self.budgets.has_budgets:
            return []
        found: list[UnpricedCall] = []
        for record in records:
            if record.price_status != UNKNOWN_MODEL or record.cost_usd is not None or record.usage is None:
                continue
            model = record.model_reported or record.model_sent or record.model_requested or "(unknown)"
            scopes = scopes_for(record.environment, record.key_name, record.user_name)
            found.extend(self.budgets.unpriced(scopes, record.provider, model))
        return found

    def withdraw(self, decision: Decision, call_id: str | None) -> None:
        """Take back what ``decide`` counted for a call the proxy then refuses itself (its model
        cannot be read or rewritten): the budget reservation and the rate-limit hits."""
        if call_id is not None:
            self.budgets.settle(call_id)
        if decision.counted is not None:
            keys, when = decision.counted
            self.rates.forget(keys, when)
            decision.counted = None
