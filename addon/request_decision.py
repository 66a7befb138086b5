"""The policies' decision on a request being started: its model, its fallback lists and its advisor
tools held to the allowlist of its environment (a disallowed one downgraded, else the call refused),
its budgets and rate limits (``Enforcer``), and the refusals that replace a decision which cannot
stand (a model that cannot be read or rewritten).

``RequestDecider`` wraps the meter's ``Enforcer``; every input is passed in (the row, the lists
read from the body), so the decision reads nothing else of the Meter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from addon.attribution import UnknownUser
from addon.enforcement import Decision, Enforcer
from addon.image_tool import ToolRules, with_tool_rules
from addon.policies import Policies
from addon.providers import Provider, openai_live
from addon.providers.advisors import (
    AdvisorTools,
    Where,
    pair_known_invalid,
    pair_known_valid,
    with_advisor_models,
)
from addon.providers.anthropic_api import without_fallback_entries
from addon.providers.fallback_lists import Fallbacks, with_fallback_models
from addon.providers.openai_api import CHAT_ONLY_PROVIDERS, serves_legacy_completions
from addon.providers.openai_media import FORM_NOT_REWRITTEN
from addon.record import CallRecord
from addon.refusals import API_KEYS_DISAGREE, refusal_response, several_keys_message
from addon.socket_metering import remembered_live_setup

UNREADABLE_MODEL = "the request's model could not be read, so it cannot be checked against the allowlist"


@dataclass(slots=True)
class FallbackRules:
    """What the allowlist makes of a request's fallback models (OpenRouter's ``models``)."""

    sent: list[str] = field(default_factory=list)  # the list as it goes upstream
    changed: bool = False  # an entry was downgraded: the list is rewritten
    notices: list[str] = field(default_factory=list)  # the downgrades, for X-Tokometer-Notice
    refused: str | None = None  # an entry no rule lets run: the call is refused
    why: str = ""  # and why, for its refusal
    unreadable: str | None = None  # why the list cannot be checked whole (refused where restricted)


def models_restricted(policies: Policies, environment: str) -> bool:
    """Does ``environment`` allow only some models (policies enforced, no ``*``)?"""
    return policies.enforcing and "*" not in policies.environment(environment).models.allow


class RequestDecider:
    """The allowlist, budget and rate-limit decisions of the calls being started, by the rules of
    one ``Enforcer`` (whose policies change in place)."""

    __slots__ = ("enforcer",)

    def __init__(self, enforcer: Enforcer) -> None:
        self.enforcer = enforcer

    def models_restricted(self, environment: str) -> bool:
        """Does ``environment`` allow only some models (policies enforced, no ``*``)?"""
        return models_restricted(self.enforcer.policies, environment)

    def decide(
        self,
        record: CallRecord,
        model: str | None,
        estimate: Callable[[str | None], Decimal] | None = None,
        *,
        key_conflict: str | None = None,
        subscription: bool = False,
        unknown_user: UnknownUser | None = None,
    ) -> Decision:
        """The policies' decision on a call being started, as its row is attributed: allowlist,
        budgets (its ``estimate`` reserved under its id; without one, nothing is reserved: a
        handshake, a mint) and rate limits. A flat-fee plan's call (``subscription``) is held to
        no dollar budget. Where policies are enforced, a call whose API keys disagree about its
        environment (``key_conflict``) is refused: the proxy cannot tell which one the provider
        reads. A call with no user (``unknown_user`` says why) is held to the user limits as
        ``Enforcer.decide`` says."""
        if key_conflict is not None and self.enforcer.policies.enforcing:
            message = several_keys_message(key_conflict)
            return Decision(
                "blocked",
                model,
                refusal=refusal_response(
                    record.provider, 403, message, kind="blocked", code=API_KEYS_DISAGREE
                ),
                message=message,
            )
        return self.enforcer.decide(
            provider=record.provider,
            environment=record.environment,
            key_name=record.key_name,
            user_name=record.user_name,
            model=model,
            call_id=record.id if estimate is not None else None,
            estimate=estimate,
            budgeted=not subscription,
            user_identified=record.user_name is not None,
            unknown_user=unknown_user,
        )

    def rule_fallbacks(self, record: CallRecord, found: Fallbacks, *, advisor: bool = False) -> FallbackRules:
        """Each entry of a request's fallback list (OpenRouter's ``models``, Anthropic's
        ``fallbacks``; with ``advisor``, the models of its Anthropic advisor tools) held to the
        rules of its environment as its model is: a disallowed one rewritten to its downgrade
        target, else the call refused; a list that cannot be read whole refuses it where models
        are restricted."""
        ruled = FallbackRules()
        first_object = len(found.models) - found.in_objects  # OpenRouter's `fallbacks` objects from here
        for i, entry in enumerate(found.models):
            listed = "fallbacks" if i >= first_object else "models fallback"
            if i < len(found.places) and found.places[i][0] != "models":  # LiteLLM's lists, by name
                listed = str(found.places[i][0])
            decision = self.enforcer.decide_model(record.provider, record.environment, entry)
            if decision.refusal is not None:
                ruled.refused = entry
                ruled.why = (
                    f"it is the model of the request's advisor tool, which {record.provider} runs "
                    "within the call"
                    if advisor
                    else f"it is in the request's {listed} list, which {record.provider} may run instead"
                )
                return ruled
            sent = decision.model_sent or entry
            ruled.sent.append(sent)
            if sent != entry:
                ruled.changed = True
                where = "advisor tool" if advisor else f"{listed} list"
                said = f"{where}: {decision.notice or entry + ' -> ' + sent}"
                if said not in ruled.notices:  # an advisor's profiles may name one model twice
                    ruled.notices.append(said)
        if found.error is not None and self.models_restricted(record.environment):
            ruled.unreadable = (
                f"{found.error}, so the models it may run cannot all be checked against the allowlist"
            )
        return ruled

    def refuse_instead(self, decision: Decision, record: CallRecord, model: str, reason: str) -> Decision:
        """A decision that cannot stand (a model that cannot be rewritten or read): its slot and
        reservation withdrawn, a refusal of ``model`` saying why instead."""
        self.enforcer.withdraw(decision, record.id)
        return self.enforcer.refuse_model(record.provider, record.environment, model, reason)

    def unknown_model(
        self, record: CallRecord, decision: Decision, reason: str = UNREADABLE_MODEL
    ) -> Decision | None:
        """Fail closed: a call whose model cannot be read is refused where models are restricted."""
        if not self.models_restricted(record.environment):
            return None
        return self.refuse_instead(decision, record, "(unreadable)", reason)

    def rule_advisors(
        self, record: CallRecord, advisors: AdvisorTools | None
    ) -> tuple[FallbackRules | None, dict[Where, str]]:
        """The allowlist on a request's advisor tools (Anthropic's, OpenRouter's: each runs within
        the call, at its own rates): how it ruled them (None: the request has none) and the model
        to write at the place of each advisor it downgrades (none where one is refused)."""
        if advisors is None or not (advisors.tools or advisors.error is not None):
            return None, {}
        found = Fallbacks(tuple(tool.model for tool in advisors.tools), advisors.error)
        advised = self.rule_fallbacks(record, found, advisor=True)
        if advised.refused is not None:
            return advised, {}
        return advised, {
            tool.where: sent
            for tool, sent in zip(advisors.tools, advised.sent, strict=False)
            if sent != tool.model
        }

    def hold_to_lists(
        self,
        decision: Decision,
        record: CallRecord,
        *,
        unreadable: str = UNREADABLE_MODEL,
        tools: ToolRules | None = None,
        lists: Sequence[FallbackRules | None] = (),
    ) -> Decision:
        """The call's ``decision`` once what else it names is held to the allowlist: its model, when
        none could be read (refused where models are restricted, saying ``unreadable``), its image
        tools (``tools``), then each of ``lists`` (its fallbacks, routing lists and advisor tools,
        in that order): the first refused entry refuses the call (the row names it), a list that
        could not be read whole refuses it where models are restricted."""
        if decision.refusal is None and record.model_requested is None:
            decision = self.unknown_model(record, decision, unreadable) or decision
        if decision.refusal is None and tools is not None and tools.refusal is not None:
            self.enforcer.withdraw(decision, record.id)
            decision, record.model_requested = tools.refusal, tools.refused_model
        for ruled in lists:
            if decision.refusal is None and ruled is not None and ruled.refused is not None:
                decision = self.refuse_instead(decision, record, ruled.refused, ruled.why)
                record.model_requested = ruled.refused
            elif decision.refusal is None and ruled is not None and ruled.unreadable is not None:
                decision = self.unknown_model(record, decision, ruled.unreadable) or decision
        return decision

    def refuse_unsendable(
        self,
        decision: Decision,
        record: CallRecord,
        provider: Provider,
        model: str | None,
        advisors: AdvisorTools | None,
        advisor_models: Mapping[Where, str],
    ) -> Decision:
        """``decision``, unless the request it would send (``model`` downgraded, its advisors
        rewritten to ``advisor_models``) cannot run: a downgrade target that serves no legacy
        completion on a provider whose rules are written for chat, or an executor/advisor pair
        Anthropic rejects made by rewriting. Refused instead."""
        downgrade = decision.model_sent if decision.action == "downgraded" else None
        legacy = record.api_flavor == "completions" and provider.name in CHAT_ONLY_PROVIDERS
        if downgrade and legacy and not serves_legacy_completions(downgrade):  # a rule written for chat
            why = f"its downgrade target {downgrade} does not serve legacy completions (/v1/completions)"
            return self.refuse_instead(decision, record, record.model_requested or "?", why)
        # Never send an executor/advisor pair Anthropic rejects, one the proxy made by rewriting.
        paired = unpaired_advisor(provider, advisors, advisor_models, downgrade or model, model)
        if decision.refusal is None and (downgrade or advisor_models) and paired is not None:
            decision = self.refuse_instead(decision, record, paired[0], paired[1])
            record.model_requested = paired[0]
        return decision

    def check_inherited_model(self, record: CallRecord, decision: Decision) -> Decision:
        """An OpenAI Live fork set up over HTTP naming no model runs its stored session's, and its
        media never pass the proxy: that model is checked now if the stored session was set up here
        (it cannot be rewritten: one the rules would downgrade is refused). A fork of a session set
        up elsewhere passes: its model cannot be known (refusing it would refuse every fork after a
        restart of the proxy)."""
        stored = openai_live.fork_session(record.path)
        inherited = remembered_live_setup(stored) if stored is not None else None
        if inherited is None:  # set up elsewhere (or before a restart): not known here
            return decision
        ruled = self.enforcer.decide_model(record.provider, record.environment, inherited)
        if ruled.refusal is None and ruled.action != "downgraded":
            return decision
        record.model_requested = inherited
        why = "a fork inherits its stored session's model, which cannot be rewritten"
        return self.refuse_instead(decision, record, inherited, why)


def unpaired_advisor(
    provider: Provider,
    advisors: AdvisorTools | None,
    rewritten: Mapping[Where, str],
    executor: str | None,
    requested: str | None = None,
) -> tuple[str, str] | None:
    """(the model to refuse, why) when the request as it would be sent pairs its executor
    (``executor``, the model sent) with an Anthropic advisor it rejects: an advisor the proxy
    rewrote (``rewritten``: its place -> target) must be known valid for it by Anthropic's rule (the
    advisor at least as capable as the executor, from its compatibility table); one sent as
    the client asked must not be known invalid (a downgraded executor). None: nothing to say."""
    if not provider.advisor_pairs or advisors is None or executor is None:
        return None
    for tool in advisors.tools:
        if tool.openrouter:
            continue
        sent = rewritten.get(tool.where, tool.model)
        if tool.where in rewritten and not pair_known_valid(executor, sent):
            return tool.model, (
                f"its advisor tool's downgrade target {sent} is not known to be an advisor of "
                f"{executor}, the model the call runs (Anthropic takes an advisor only at least as "
                "capable as the executor, per its advisor tool's compatibility table, and answers "
                "400 otherwise): refused instead of downgraded"
            )
        if tool.where not in rewritten and pair_known_invalid(executor, sent):
            return requested or executor, (
                f"the call's downgrade target {executor} cannot be advised by its advisor tool's "
                f"{sent} (Anthropic takes an advisor only at least as capable as the executor, and "
                "answers 400 otherwise): refused instead of downgraded"
            )
    return None


def rewritten_request(
    provider: Provider,
    route: str,
    body: dict[str, Any] | None,
    *,
    form: bool = False,
    downgrade: str | None = None,
    tool_rules: ToolRules | None = None,
    fallbacks: tuple[list[str], Fallbacks | None] | None = None,
    advisor_models: Mapping[Where, str] | None = None,
    routing: tuple[list[str], Fallbacks | None] | None = None,
    dropped: list[int] | None = None,
) -> tuple[str, dict[str, Any] | None]:
    """The path and body a request goes upstream with, the allowlist's rewrites made: its model
    (``downgrade``), its image tools' and SVG authors' models and those of its fallback objects
    (``tool_rules``), its fallback list (``fallbacks``:
    the entries to send, the list read), its advisor tools' models, its routing lists, and the
    fallback entries ``dropped``. Raises ValueError where the request cannot be rewritten (a
    signed request, a multipart ``form``, a body a rewrite cannot take)."""
    if provider.with_model is None:
        raise ValueError(
            f"{provider.name} requests are signed over their path and body, so the proxy "
            "cannot rewrite the model: refused instead of downgraded"
        )
    if form:
        raise ValueError(FORM_NOT_REWRITTEN)
    new_path, new_body = route, body
    if downgrade:
        new_path, new_body = provider.with_model(route, body, downgrade)
    if tool_rules is not None and new_body is not None:
        new_body = with_tool_rules(new_body, tool_rules)
    if fallbacks is not None and new_body is not None:
        new_body = with_fallback_models(new_body, fallbacks[0], fallbacks[1])
    if advisor_models and new_body is not None:
        new_body = with_advisor_models(new_body, advisor_models)
    if routing is not None and new_body is not None:
        new_body = with_fallback_models(new_body, routing[0], routing[1])
    if dropped and new_body is not None:
        new_body = without_fallback_entries(new_body, dropped)
    return new_path, new_body
