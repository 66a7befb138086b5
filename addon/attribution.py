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
process's TEAM and FEATURE. Everything here is pure: the process lookup
itself lives in ``addon.client_process``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from addon.client_process import ClientProcess
from addon.policies import Policies, normalize_environment

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


def _first_var(process: ClientProcess | None, names: tuple[str, ...]) -> str | None:
    return _first_named_var(process, names)[1]


def _first_named_var(process: ClientProcess | None, names: tuple[str, ...]) -> tuple[str, str | None]:
    """The first of ``names`` set (not blank) in the calling process's environment, and its value."""
    if process is not None:
        for name in names:
            value = process.env.get(name, "").strip()
            if value:
                return name, value
    return "", None


def attribute(
    *,
    policies: Policies,
    header: str | None = None,
    api_key: str | None = None,
    fingerprint: str | None = None,
    process: ClientProcess | None = None,
    hostname: str = "",
    forced_environment: str | None = None,
) -> Attribution:
    """Decide environment, team and feature of a call (first rule that answers wins)."""
    settings = policies.attribution
    problems: list[str] = []
    tags = parse_tags_header(header) if header is not None else HeaderTags()
    if tags.problem:
        problems.append(tags.problem)
    key = policies.key_for(fingerprint, api_key)
    variable, process_env = _first_named_var(process, settings.environment_vars)
    if process_env and not policies.declares(process_env):
        # As much in the caller's hands as the header: held to the same rule (see below).
        problems.append(
            f"{variable}={process_env!r} of the calling process ignored: policies.yaml declares no "
            f"such environment ({', '.join(sorted(policies.environments))})"
        )
        process_env = None

    # Where the call lands without the header: the header may move it only when both this
    # environment and the one it claims allow header claims.
    if key is not None and key.environment:
        fallback, fallback_source = key.environment, "key"
    elif process_env:
        fallback, fallback_source = normalize_environment(process_env), "process"
    elif forced_environment:
        fallback, fallback_source = normalize_environment(forced_environment), "forced"
    elif host_env := policies.host_environment(hostname):
        fallback, fallback_source = host_env, "host"
    else:
        fallback, fallback_source = policies.default_environment, "default"

    claimed = tags.environment
    if claimed and key is not None and key.environment and claimed != key.environment:
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
    )
