"""Who made a call: its environment, team, feature, user and process.

The environment is decided by the first rule that gives one, and the row
records which rule decided (``environment_source``):

1. ``header``: the X-Metering-Tags request header, a JSON object such as
   ``{"env": "development", "team": "backend", "feature": "search"}``, unless
   the API key is mapped to another environment, or the claimed environment or the one the
   call has without the header forbids header claims (``allow_header_claims: false``): no
   escalation by header;
2. ``key``: the API key's entry in policies.yaml ``keys:``;
3. ``process``: the calling process's APP_ENV (names configurable);
4. ``forced`` (the proxy's own TOKOMETER_ENVIRONMENT) or ``host`` (a
   policies.yaml rule on this machine's hostname, e.g. ``ci-*: staging``);
5. ``default``: policies.yaml ``default_environment``.

Team and feature come from the header, else the key entry, else the calling
process's TEAM and FEATURE. The user is the calling process's OS user; when it
cannot be identified (a client in a container or on another host, /proc not
readable, a lookup that timed out), policies.yaml ``attribution.unidentified_user``
if set, else none: where users have budgets or rate limits such a call is then
refused (``Enforcer.decide``: 403 saying why the lookup failed, or a retryable 503 when it
only had no answer in time), not let past them. Everything here is
pure: the process lookup itself lives in ``addon.client_process``.

A request may carry several different API keys (see ``Meter._api_key``): the
proxy cannot tell which one the provider reads, and a ``last4`` match is
four characters anyone can write. A key matched by fingerprint (a secret)
decides; else each key stands for the environment it would be attributed to
alone (its entry's, or rules 3-5 for an unmapped one). When they all agree,
that is the call's; when they do not, no key binds it (``key_conflict``): it
gets rules 3-5, header claims ignored, and the proxy refuses it where
policies.yaml is in force.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from addon.api_keys import recent_key_fingerprint
from addon.client_process import NOT_IN_TIME, ClientProcess
from addon.policies import KeyPolicy, Policies, normalize_environment

TAGS_HEADER = "X-Metering-Tags"
FORCE_ENV_VAR = "TOKOMETER_ENVIRONMENT"
_ENV_KEYS = ("env", "environment")
_MAX_HEADER = 4096


@dataclass(frozen=True, slots=True)
class HeaderTags:
    """What an X-Metering-Tags header said, or why it was ignored."""

    environment: str | None = None
    team: str | None = None
    feature: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def parse_tags_header(value: str) -> HeaderTags:
    """Parse the header's JSON object; never raises (a bad header is ignored, with a reason)."""
    if len(value) > _MAX_HEADER:
        return HeaderTags(problem=f"{TAGS_HEADER} ignored: longer than {_MAX_HEADER} characters")
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        return HeaderTags(problem=f"{TAGS_HEADER} ignored: not valid JSON ({exc.msg} at {exc.pos})")
    except (ValueError, RecursionError):
        return HeaderTags(problem=f"{TAGS_HEADER} ignored: not valid JSON")
    if not isinstance(data, dict):
        kind = type(data).__name__
        return HeaderTags(problem=f"{TAGS_HEADER} ignored: a JSON object is expected, not {kind}")
    values: dict[str, str | None] = {}
    for name, keys in (("environment", _ENV_KEYS), ("team", ("team",)), ("feature", ("feature",))):
        raw = next((data[k] for k in keys if k in data), None)
        if raw is None:
            values[name] = None
            continue
        if not isinstance(raw, str):
            return HeaderTags(problem=f"{TAGS_HEADER} ignored: {name} must be a string")
        values[name] = raw.strip() or None
    extra = {k: v for k, v in data.items() if k not in (*_ENV_KEYS, "team", "feature")}
    env = values["environment"]
    return HeaderTags(
        environment=normalize_environment(env) if env else None,
        team=values["team"],
        feature=values["feature"],
        extra=extra,
    )


@dataclass(frozen=True, slots=True)
class UnknownUser:
    """Why a call has no user (and no ``attribution.unidentified_user`` stands in)."""

    why: str  # the lookup's own account, e.g. "no /proc and psutil is not installed"
    late: bool = False  # the lookup had not answered in time: a retry can find the user


@dataclass(slots=True)
class Attribution:
    """The attribution of one call, ready to copy onto its row."""

    environment: str
    environment_source: str
    team: str | None = None
    feature: str | None = None
    tags: str | None = None  # JSON of the header's other keys
    key_name: str | None = None
    problems: list[str] = field(default_factory=list)
    key_conflict: str | None = None  # why none of the request's several keys decides its environment
    user: str | None = None  # the calling process's OS user, else attribution.unidentified_user
    unknown_user: UnknownUser | None = None  # no user: why not


def _key_of_several(
    policies: Policies,
    fingerprint: str | None,
    api_key: str | None,
    other_keys: Sequence[str],
    unbound: str,
    unweighed: bool,
) -> tuple[KeyPolicy | None, str | None]:
    """The ``keys:`` entry that binds a call carrying ``api_key`` and ``other_keys`` (all
    different), and a conflict when none may: whichever order they come in.

    Fingerprint matches (a secret the caller holds) decide if there are any, the rest ignored;
    else every key counts, an unmapped one for ``unbound`` (where the call lands with no key
    entry). All of them naming one environment, the first entry naming it binds the call; else
    the first naming ``unbound``, where the call lands anyway, still names the key (its team,
    feature, budget and rate limit: no way out of anything). ``unweighed``: the request carried
    more keys than these, and any of them may be the one the provider reads: a conflict, unless
    one of these is matched by fingerprint."""
    prints = [(fingerprint, api_key), *((recent_key_fingerprint(k), k) for k in other_keys)]
    strong = [entry for fp, _ in prints if (entry := policies.key_for(fp, None)) is not None]
    pool: list[KeyPolicy | None] = strong or [policies.key_for(None, k) for _, k in prints]
    environments = {(entry.environment if entry and entry.environment else unbound) for entry in pool}
    unweighed = unweighed and not strong
    if len(environments) == 1 and not unweighed:
        return next((entry for entry in pool if entry is not None), None), None
    agreeing = next((e for e in pool if e is not None and (e.environment or unbound) == unbound), None)
    if unweighed:
        return (
            agreeing,
            f"more different API keys than the {len(prints)} weighed: no key decides the environment",
        )
    how = "by fingerprint" if strong else "by last4 or not at all"
    return agreeing, (
        f"{len(prints)} different API keys, matched {how}, bound to different environments "
        f"({', '.join(sorted(environments))}): no key decides the environment"
    )


def _first_var(process: ClientProcess | None, names: tuple[str, ...]) -> str | None:
    if process is None:
        return None
    for name in names:
        value = process.env.get(name, "").strip()
        if value:
            return value
    return None


def _declared_process_env(
    policies: Policies, process: ClientProcess | None, names: tuple[str, ...]
) -> tuple[str | None, list[tuple[str, str]]]:
    """The first of ``names`` set in the calling process's environment to an environment
    policies.yaml declares (``Policies.declares``), and the (name, value) pairs passed over."""
    passed_over: list[tuple[str, str]] = []
    if process is not None:
        for name in names:
            value = process.env.get(name, "").strip()
            if not value:
                continue
            if policies.declares(value):
                return value, passed_over
            passed_over.append((name, value))
    return None, passed_over


def _unbound(
    policies: Policies, process_env: str | None, forced_environment: str | None, hostname: str
) -> tuple[str, str]:
    """The environment of a call no header or key entry binds, and its source (rules 3-5)."""
    if process_env:
        return normalize_environment(process_env), "process"
    if forced_environment:
        return normalize_environment(forced_environment), "forced"
    if host_env := policies.host_environment(hostname):
        return host_env, "host"
    return policies.default_environment, "default"


def user_of(policies: Policies, process: ClientProcess | None) -> str | None:
    """The user a call counts for: its calling process's OS user, else (not identified) the
    policies' ``attribution.unidentified_user``, else None."""
    if process is not None and process.user:
        return process.user
    return policies.attribution.unidentified_user


def unknown_user(
    policies: Policies, process: ClientProcess | None, lookup_problem: str | None = None
) -> UnknownUser | None:
    """Why a call has no user (see ``user_of``), from its lookup's problem (``lookup_problem``:
    it timed out or failed; else the found process's ``problem``); None when it has one."""
    if user_of(policies, process) is not None:
        return None
    if lookup_problem is not None:
        return UnknownUser(lookup_problem, late=lookup_problem == NOT_IN_TIME)
    if process is None:
        return UnknownUser("the client connection has no address")
    return UnknownUser(process.problem or "the calling process's owner is unknown")


def fallback_environment(policies: Policies, forced_environment: str | None, hostname: str) -> str:
    """Where this proxy books a call no header, key entry or calling process's variable decides
    (rules 4-5): its ``TOKOMETER_ENVIRONMENT``, else an ``attribution.hosts`` rule, else the
    default. The live file says it, for the status line."""
    return _unbound(policies, None, forced_environment, hostname)[0]


def attribute(
    *,
    policies: Policies,
    header: str | None = None,
    api_key: str | None = None,
    fingerprint: str | None = None,
    process: ClientProcess | None = None,
    hostname: str = "",
    forced_environment: str | None = None,
    other_keys: Sequence[str] = (),
    keys_unweighed: bool = False,
    lookup_problem: str | None = None,
) -> Attribution:
    """Decide environment, team and feature of a call (first rule that answers wins).

    ``other_keys``: the request's other API keys, different from ``api_key``; ``keys_unweighed``:
    it carried more, not looked at (see the module's docstring). ``lookup_problem``: why the
    calling process lookup gave no ``process`` (``client_process.wait_for_process``)."""
    settings = policies.attribution
    problems: list[str] = []
    tags = parse_tags_header(header) if header is not None else HeaderTags()
    if tags.problem:
        problems.append(tags.problem)
    # As much in the caller's hands as the header, held to the same rule (see below): a
    # variable naming an environment policies.yaml does not declare is passed over.
    process_env, passed_over = _declared_process_env(policies, process, settings.environment_vars)
    unbound = _unbound(policies, process_env, forced_environment, hostname)  # rules 3-5
    conflict = None
    if other_keys:
        key, conflict = _key_of_several(
            policies, fingerprint, api_key, other_keys, unbound[0], keys_unweighed
        )
    else:
        key = policies.key_for(fingerprint, api_key)

    # Where the call lands without the header: the header may move it only when both this
    # environment and the one it claims allow header claims.
    if key is not None and key.environment and conflict is None:
        fallback, fallback_source = key.environment, "key"
    else:
        fallback, fallback_source = unbound

    claimed = tags.environment
    if conflict is not None:
        problems.append(conflict)
        if claimed:
            problems.append(f"{TAGS_HEADER} env {claimed!r} ignored: the request's API keys disagree")
            claimed = None
    elif claimed and key is not None and key.environment and claimed != key.environment:
        problems.append(
            f"{TAGS_HEADER} env {claimed!r} ignored: the API key {key.name!r} belongs to "
            f"{key.environment} (policies.yaml)"
        )
        claimed = None
    elif claimed and not policies.environment(claimed).allow_header_claims:
        problems.append(
            f"{TAGS_HEADER} env {claimed!r} ignored: {claimed} does not allow header claims (policies.yaml)"
        )
        claimed = None
    elif claimed and claimed != fallback and not policies.environment(fallback).allow_header_claims:
        problems.append(
            f"{TAGS_HEADER} env {claimed!r} ignored: the call is {fallback}'s ({fallback_source}), "
            f"which does not allow header claims (policies.yaml)"
        )
        claimed = None
    elif claimed and not policies.declares(claimed):
        # An environment policies.yaml does not name has no rules at all: claiming one would
        # leave the caller's own environment's allowlist, budget and rate limit behind.
        problems.append(
            f"{TAGS_HEADER} env {claimed!r} ignored: policies.yaml declares no such environment "
            f"({', '.join(sorted(policies.environments))})"
        )
        claimed = None

    environment, source = (claimed, "header") if claimed else (fallback, fallback_source)
    if source not in ("header", "key"):  # the variables passed over would have decided
        ignored = [
            f"{name}={value!r}" for name, value in passed_over if normalize_environment(value) != environment
        ]
        if ignored:
            declared = sorted({*policies.environments, policies.default_environment})
            problems.append(
                f"{', '.join(ignored)} of the calling process ignored: policies.yaml declares no such "
                f"environment ({', '.join(declared)})"
            )

    team = tags.team or (key.team if key else None) or _first_var(process, settings.team_vars)
    feature = tags.feature or (key.feature if key else None) or _first_var(process, settings.feature_vars)
    return Attribution(
        environment=environment,
        environment_source=source,
        team=team,
        feature=feature,
        tags=json.dumps(tags.extra, sort_keys=True, ensure_ascii=False) if tags.extra else None,
        key_name=key.name if key else None,
        problems=problems,
        key_conflict=conflict,
        user=user_of(policies, process),
        unknown_user=unknown_user(policies, process, lookup_problem),
    )
