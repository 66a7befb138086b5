"""policies.yaml: the typed, validated policy model and its live-reloading file.

One way in: ``load_policies(path)`` / ``parse_policies(text, source)``, or a
``PolicyFile`` for live reload. Validation reports EVERY problem at once, one per
line, as ``policies.yaml:LINE: key.path: what is wrong``; it never repeats an API
key (or a value that looks like one) in a message.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from addon.model_rules import first_mapping, in_form_of, is_pattern, matches_any

ENVIRONMENT_NAME_HINT = "a short name such as development, staging or production"
ENVIRONMENT_ALIASES: Mapping[str, str] = MappingProxyType(
    {"dev": "development", "prod": "production", "stage": "staging", "stg": "staging"}
)
PERIODS = ("day", "week", "month")
ON_DISALLOWED = ("downgrade", "block")

_FINGERPRINT = re.compile(r"[0-9a-f]{12}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_PREFIXES = ("sk-", "sk_", "AIza", "xai-", "gsk_", "pk-", "rk-")


class PolicyError(ValueError):
    """policies.yaml cannot be used; ``str()`` lists every problem, one per line."""

    def __init__(self, problems: str | list[str]) -> None:
        problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(problems))
        self.problems = problems


def normalize_environment(name: str) -> str:
    """Case-folded, stripped, with aliases resolved (dev, prod, stage, stg). Never raises.

    Text that is not ASCII is NFKC-normalised first, so a look-alike (``production`` in
    full-width letters) is the same environment as ``production``, not another one.
    """
    if not name.isascii():
        name = unicodedata.normalize("NFKC", name)
    key = name.strip().casefold()
    return ENVIRONMENT_ALIASES.get(key, key)


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A hard spending cap per UTC period, with warning fractions."""

    usd: Decimal
    period: str  # day | week | month
    alert_at: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests per minute (sliding window)."""

    requests_per_minute: int


@dataclass(frozen=True, slots=True)
class ModelRules:
    """Which models an environment may use, and what happens to the others."""

    allow: tuple[str, ...] = ("*",)
    on_disallowed: str = "downgrade"  # downgrade | block
    downgrade: tuple[tuple[str, str], ...] = ()  # (requested pattern, sent model), file order

    def is_allowed(self, model: str) -> bool:
        """Does ``model`` match an ``allow`` pattern (dated names match their base)?"""
        return "*" in self.allow or matches_any(self.allow, model)

    def downgrade_target(self, model: str, host: str | None = None) -> str | None:
        """The mapped target of the first ``downgrade`` pattern matching ``model``, written as
        ``host`` names it (the built-in provider the call goes to: OpenRouter's ``openai/gpt-4o`` ->
        ``openai/gpt-4o-mini``; None or a host that takes names as written: the target as the rule
        writes it; see ``in_form_of``), or None: no pattern matches, or the target cannot be written
        in that form (a Bedrock id) or would not be allowed as written."""
        target = first_mapping(self.downgrade, model)
        sent = in_form_of(model, target, host) if target is not None else None
        return sent if sent is not None and self.is_allowed(sent) else None

    def resolve(self, model: str, host: str | None = None) -> tuple[str, str | None]:
        """``("allowed", model)``, ``("downgraded", target)`` or ``("blocked", None)``; a target
        written as ``host`` names it (``downgrade_target``)."""
        if self.is_allowed(model):
            return "allowed", model
        if self.on_disallowed == "downgrade":
            target = self.downgrade_target(model, host)
            if target is not None:
                return "downgraded", target
        return "blocked", None


@dataclass(frozen=True, slots=True)
class EnvironmentPolicy:
    """Rules of one environment; an undeclared environment gets this with no restrictions."""

    name: str
    models: ModelRules = ModelRules()
    budget: Budget | None = None
    rate_limit: RateLimit | None = None
    allow_header_claims: bool = True


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """An API key, matched by fingerprint or last four characters."""

    name: str
    fingerprint: str | None = None
    last4: str | None = None
    environment: str | None = None
    team: str | None = None
    feature: str | None = None
    budget: Budget | None = None
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class UserPolicy:
    """Limits for one OS user (of the calling process)."""

    name: str
    budget: Budget | None = None
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class AttributionSettings:
    """Where attribution looks: the calling process's variables and this machine's hostname."""

    environment_vars: tuple[str, ...] = ("APP_ENV",)
    team_vars: tuple[str, ...] = ("TEAM",)
    feature_vars: tuple[str, ...] = ("FEATURE",)
    host_rules: tuple[tuple[str, str], ...] = ()  # (hostname glob, environment), first match wins
    # The user a call is attributed to when its calling process's user cannot be identified.
    unidentified_user: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationSettings:
    """Where budget alerts go: a desktop notification and, optionally, a webhook (JSON POST)."""

    desktop: bool = True
    webhook: str | None = None  # http(s) URL; receives {"text": ..., "kind": ..., ...}
    timeout_s: float = 5.0

    def webhook_label(self) -> str | None:
        """The webhook as it may be logged: scheme and host only (its path is often a secret)."""
        if not self.webhook:
            return None
        parts = urlsplit(self.webhook)
        return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}"


@dataclass(frozen=True, slots=True)
class CustomProvider:
    """A host from ``providers:`` speaking an OpenAI- or Anthropic-compatible API (vLLM, Ollama...)."""

    name: str  # recorded as the call's provider
    host: str
    port: int
    scheme: str  # http | https
    api: str  # openai | anthropic
    pricing_provider: str | None = None  # genai-prices provider id to look prices up under


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """A price from ``prices:`` (self-hosted models, negotiated rates, models genai-prices lacks):
    tokens in USD per million (``input`` and ``output``, both or neither), and/or audio billed by
    its duration in USD per hour (``usd_per_hour``: OpenAI Live, whisper)."""

    input: Decimal | None
    output: Decimal | None
    cached_input: Decimal | None = None  # default: the input price
    cache_write: Decimal | None = None  # default: the input price
    usd_per_hour: Decimal | None = None

    @property
    def prices_tokens(self) -> bool:
        return self.input is not None and self.output is not None


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Policies:
    """The parsed policy file. ``enforcing`` is False when there is no file (meter only)."""

    default_environment: str = "development"
    environments: Mapping[str, EnvironmentPolicy] = field(default_factory=_empty)
    keys: tuple[KeyPolicy, ...] = ()
    users: Mapping[str, UserPolicy] = field(default_factory=_empty)
    attribution: AttributionSettings = AttributionSettings()
    premium_usd_per_mtok: Decimal | None = None
    notifications: NotificationSettings = NotificationSettings()
    providers: tuple[CustomProvider, ...] = ()
    azure_deployments: Mapping[str, str] = field(default_factory=_empty)
    prices: tuple[tuple[str, PriceOverride], ...] = ()  # (model or provider/model pattern, price), in order
    source: Path | None = None
    enforcing: bool = False

    @property
    def has_rate_limits(self) -> bool:
        """Does any environment, key or user have a ``rate_limit``?"""
        return any(
            entry.rate_limit is not None
            for entries in (self.environments.values(), self.keys, self.users.values())
            for entry in entries
        )

    def limits_users(self, *, budgets: bool = True) -> bool:
        """Is any user held to a rate limit, or (``budgets``) a budget (policies enforced)?"""
        return self.enforcing and any(
            (budgets and user.budget is not None) or user.rate_limit is not None
            for user in self.users.values()
        )

    @property
    def restricts_models(self) -> bool:
        """Does any environment allow only some models (policies enforced, no ``*``)?"""
        return self.enforcing and any("*" not in env.models.allow for env in self.environments.values())

    def id_host(self, provider: str) -> str | None:
        """The built-in provider whose way of writing model ids a downgrade target of a call
        recorded under ``provider`` is written in (``in_form_of``), or None for a ``providers:``
        host, which is sent the target as written (even one named like a built-in provider)."""
        return None if any(custom.name == provider for custom in self.providers) else provider

    def declares(self, name: str) -> bool:
        """May ``name`` be claimed? Any name when nothing is enforced or no environment is
        declared; else one declared in policies.yaml, or the default environment."""
        if not self.enforcing or not self.environments:
            return True
        name = normalize_environment(name)
        return name in self.environments or name == self.default_environment

    def claimable(self) -> list[str] | None:
        """The declared environments a caller may name besides the default (``declares``); None
        when any name may be."""
        if not self.enforcing or not self.environments:
            return None
        return sorted(self.environments)

    def environment(self, name: str) -> EnvironmentPolicy:
        """The declared policy of ``name`` (aliases resolved), else an unrestricted one."""
        name = normalize_environment(name)
        found = self.environments.get(name)
        return found if found is not None else EnvironmentPolicy(name=name)

    def key_for(self, fingerprint: str | None, key: str | None) -> KeyPolicy | None:
        """The ``keys:`` entry for an API key: by fingerprint first, else by its last four characters."""
        if fingerprint:
            for entry in self.keys:
                if entry.fingerprint == fingerprint:
                    return entry
        if key and len(key) > 4:
            last4 = key[-4:]
            for entry in self.keys:
                if entry.last4 is not None and entry.last4 == last4:
                    return entry
        return None

    def key_named(self, name: str) -> KeyPolicy | None:
        """The ``keys:`` entry called ``name``."""
        return next((entry for entry in self.keys if entry.name == name), None)

    def host_environment(self, hostname: str) -> str | None:
        """The environment of the first ``attribution.hosts`` glob matching ``hostname`` (any case)."""
        host = hostname.strip().lower()
        if not host:
            return None
        for pattern, environment in self.attribution.host_rules:
            if fnmatchcase(host, pattern.lower()):
                return environment
        return None


# -- YAML with line numbers -------------------------------------------------------------------


class _Map(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int]]


class _Seq(list):
    """A YAML sequence that remembers the line of each item (1-based)."""

    line: int
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences keep their marks."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Any:
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.duplicates = []
    yield result
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            key = f"<{type(key).__name__} key>"
        if key in result:
            result.duplicates.append((key, line))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Any:
    result = _Seq()
    result.line = node.start_mark.line + 1
    result.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield result
    result.extend(loader.construct_object(item, deep=True) for item in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


# -- validation -------------------------------------------------------------------------------

_TOP_KEYS = (
    "default_environment",
    "environments",
    "keys",
    "users",
    "attribution",
    "premium_usd_per_mtok",
    "notifications",
    "providers",
    "azure_deployments",
    "prices",
)
_PROVIDER_KEYS = ("url", "api", "pricing_provider")
_PRICE_KEYS = ("input", "output", "cached_input", "cache_write", "usd_per_hour")
API_FAMILIES = ("openai", "anthropic")
_ENV_KEYS = ("models", "budget", "rate_limit", "allow_header_claims")
_MODELS_KEYS = ("allow", "on_disallowed", "downgrade")
_BUDGET_KEYS = ("usd", "period", "alert_at")
_RATE_KEYS = ("requests_per_minute",)
_KEY_KEYS = ("fingerprint", "last4", "environment", "team", "feature", "budget", "rate_limit")
_USER_KEYS = ("budget", "rate_limit")
_ATTRIBUTION_KEYS = ("process_env", "hosts", "unidentified_user")
_PROCESS_ENV_KEYS = ("environment", "team", "feature")
_NOTIFICATION_KEYS = ("desktop", "webhook", "timeout_s")
MAX_NOTIFY_TIMEOUT_S = 60


def _kind(value: Any) -> str:
    """How a YAML value reads in a message."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, float):
        return f"{value:g}"  # "must be a whole number, not 1.5"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _looks_secret(text: str) -> bool:
    """Could ``text`` be an API key? (then it must never be echoed)."""
    text = text.strip()
    return text.startswith(_SECRET_PREFIXES) or (len(text) >= 32 and " " not in text)


def _show(key: Any) -> str:
    """A key as it may appear in a message (never something that looks like an API key)."""
    return "<a name that looks like an API key>" if _looks_secret(str(key)) else str(key)


def _line_of(container: Any, key: Any, default: int) -> int:
    if isinstance(container, _Map):
        return container.key_lines.get(key, container.line)
    if isinstance(container, _Seq) and isinstance(key, int) and key < len(container.item_lines):
        return container.item_lines[key]
    return default


class _Validator:
    """Walks the document, collecting every problem, and builds the model."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[tuple[int, int, str]] = []

    def error(self, line: int, path: str, what: str) -> None:
        self.problems.append((line, len(self.problems), f"{self.filename}:{line}: {path}: {what}"))

    def messages(self) -> list[str]:
        return [text for _, _, text in sorted(self.problems)]

    # generic shapes

    def mapping(self, value: Any, line: int, path: str, allowed: tuple[str, ...]) -> dict[Any, Any]:
        """``value`` as a mapping (empty -> {}); reports wrong type, unknown and duplicate keys."""
        if value is None:
            return _Map()
        if not isinstance(value, dict):
            self.error(line, path, f"must be a mapping (key: value), not {_kind(value)}")
            return {}
        self.check_duplicates(value, path)
        for key in value:
            if key not in allowed:
                key_line = _line_of(value, key, line)
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}?" if close else f"expected one of: {', '.join(allowed)}"
                shown = _show(key)
                self.error(key_line, f"{path}.{shown}" if path else shown, f"unknown key ({hint})")
        return value

    def named_entries(self, value: Any, line: int, path: str) -> dict[Any, Any]:
        """A mapping of user-chosen names (environments, keys, users, hosts)."""
        if value is None:
            return _Map()
        if not isinstance(value, dict):
            self.error(line, path, f"must be a mapping of names, not {_kind(value)}")
            return {}
        self.check_duplicates(value, path)
        return value

    def check_duplicates(self, value: dict[Any, Any], path: str) -> None:
        for key, key_line in getattr(value, "duplicates", ()):
            shown = _show(key)
            self.error(
                key_line, f"{path}.{shown}" if path else shown, "duplicate key (the later one would win)"
            )

    def text(self, value: Any, line: int, path: str) -> str | None:
        """A non-empty string, or None after reporting."""
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, str):
            self.error(line, path, "must not be empty")
        else:
            self.error(line, path, f"must be a string, not {_kind(value)}")
        return None

    def string_list(self, value: Any, line: int, path: str) -> tuple[str, ...] | None:
        """A list of non-empty strings (a single string counts as a list of one)."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error(line, path, f"must be a list of strings, not {_kind(value)}")
            return None
        items: list[str] = []
        ok = True
        for i, item in enumerate(value):
            text = self.text(item, _line_of(value, i, line), f"{path}[{i}]")
            if text is None:
                ok = False
            else:
                items.append(text)
        return tuple(items) if ok else None

    def environment_name(self, value: Any, line: int, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.error(line, path, f"must be {ENVIRONMENT_NAME_HINT}, not {_kind(value)}")
            return None
        return normalize_environment(value)

    def decimal(self, value: Any, line: int, path: str) -> Decimal | None:
        """A finite, non-negative number as a Decimal."""
        number: Decimal | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int | float | str):
            try:
                number = Decimal(str(value).strip())
            except InvalidOperation:
                number = None
        if number is None or not number.is_finite():
            self.error(line, path, f"must be a number of US dollars, not {_kind(value)}")
            return None
        if number < 0:
            self.error(line, path, f"must not be negative (got {value})")
            return None
        return number

    # sections

    def budget(self, value: Any, line: int, path: str) -> Budget | None:
        data = self.mapping(value, line, path, _BUDGET_KEYS)
        if not isinstance(value, dict):
            if value is None:
                self.error(line, path, "must be a mapping with usd and period, not empty")
            return None
        usd = None
        if "usd" in data:
            usd = self.decimal(data["usd"], _line_of(data, "usd", line), f"{path}.usd")
        else:
            self.error(line, path, "usd is missing (the cap in US dollars)")
        ok = usd is not None
        period = data.get("period")
        if "period" not in data:
            self.error(line, path, f"period is missing (one of {', '.join(PERIODS)})")
            ok = False
        elif not isinstance(period, str) or period.strip().lower() not in PERIODS:
            shown = period if isinstance(period, str) else _kind(period)
            self.error(
                _line_of(data, "period", line),
                f"{path}.period",
                f"must be one of {', '.join(PERIODS)}, not {shown}",
            )
            ok = False
        alerts: list[float] = []
        if "alert_at" in data:
            raw = data["alert_at"]
            alert_line = _line_of(data, "alert_at", line)
            items = raw if isinstance(raw, list) else [raw]
            for i, item in enumerate(items):
                item_path = f"{path}.alert_at[{i}]" if isinstance(raw, list) else f"{path}.alert_at"
                item_line = _line_of(raw, i, alert_line)
                if isinstance(item, bool) or not isinstance(item, int | float):
                    self.error(item_line, item_path, f"must be a fraction of the budget, not {_kind(item)}")
                    ok = False
                elif not 0 < item <= 1:
                    self.error(item_line, item_path, f"must be in (0, 1], e.g. 0.8 for 80% (got {item})")
                    ok = False
                else:
                    alerts.append(float(item))
        if not ok or usd is None or not isinstance(period, str):
            return None
        return Budget(usd=usd, period=period.strip().lower(), alert_at=tuple(sorted(set(alerts))))

    def rate_limit(self, value: Any, line: int, path: str) -> RateLimit | None:
        data = self.mapping(value, line, path, _RATE_KEYS)
        if not isinstance(value, dict):
            if value is None:
                self.error(line, path, "must be a mapping with requests_per_minute, not empty")
            return None
        if "requests_per_minute" not in data:
            self.error(line, path, "requests_per_minute is missing")
            return None
        rpm = data["requests_per_minute"]
        rpm_line = _line_of(data, "requests_per_minute", line)
        if isinstance(rpm, bool) or not isinstance(rpm, int):
            self.error(rpm_line, f"{path}.requests_per_minute", f"must be a whole number, not {_kind(rpm)}")
            return None
        if rpm < 1:
            self.error(rpm_line, f"{path}.requests_per_minute", f"must be at least 1 (got {rpm})")
            return None
        return RateLimit(requests_per_minute=rpm)

    def models(self, value: Any, line: int, path: str, env_name: str) -> ModelRules:
        data = self.mapping(value, line, path, _MODELS_KEYS)
        allow: tuple[str, ...] = ("*",)
        if "allow" in data:
            allow_line = _line_of(data, "allow", line)
            found = self.string_list(data["allow"], allow_line, f"{path}.allow")
            listed = [p for p in found or () if "," in p]
            if listed:  # `allow: a, b` is one string in YAML: a pattern no model name matches
                self.error(
                    allow_line,
                    f"{path}.allow",
                    f"{listed[0]!r} is one pattern with commas, which no model name has: write a list, "
                    f"[{', '.join(p.strip() for p in listed[0].split(',') if p.strip())}]",
                )
                found = None
            allow = found if found is not None else allow
        on_disallowed = "downgrade"
        if "on_disallowed" in data:
            raw = data["on_disallowed"]
            if isinstance(raw, str) and raw.strip().lower() in ON_DISALLOWED:
                on_disallowed = raw.strip().lower()
            else:
                shown = raw if isinstance(raw, str) else _kind(raw)
                self.error(
                    _line_of(data, "on_disallowed", line),
                    f"{path}.on_disallowed",
                    f"must be downgrade or block, not {shown}",
                )
        pairs: list[tuple[str, str]] = []
        if "downgrade" in data:
            raw = data["downgrade"]
            down_line = _line_of(data, "downgrade", line)
            mapping = self.named_entries(raw, down_line, f"{path}.downgrade")
            for requested, target in mapping.items():
                entry_line = _line_of(mapping, requested, down_line)
                entry_path = f"{path}.downgrade.{requested}"
                if not isinstance(requested, str) or not requested.strip():
                    self.error(entry_line, entry_path, "the requested model (pattern) must be a string")
                    continue
                sent = self.text(target, entry_line, entry_path)
                if sent is None:
                    continue
                if is_pattern(sent):
                    self.error(
                        entry_line, entry_path, f"the target must be a model name, not a pattern ({sent})"
                    )
                    continue
                if not matches_any(allow, sent):
                    self.error(
                        entry_line,
                        entry_path,
                        f"target {sent} is not itself allowed in {env_name} "
                        f"(allow: {', '.join(allow) or 'nothing'})",
                    )
                    continue
                pairs.append((requested.strip(), sent))
        return ModelRules(allow=allow, on_disallowed=on_disallowed, downgrade=tuple(pairs))

    def environment(self, name: str, value: Any, line: int, path: str) -> EnvironmentPolicy:
        data = self.mapping(value, line, path, _ENV_KEYS)
        models = ModelRules()
        if "models" in data:
            models = self.models(data["models"], _line_of(data, "models", line), f"{path}.models", name)
        budget = None
        if "budget" in data:
            budget = self.budget(data["budget"], _line_of(data, "budget", line), f"{path}.budget")
        rate = None
        if "rate_limit" in data:
            rate = self.rate_limit(
                data["rate_limit"], _line_of(data, "rate_limit", line), f"{path}.rate_limit"
            )
        claims = True
        if "allow_header_claims" in data:
            raw = data["allow_header_claims"]
            if isinstance(raw, bool):
                claims = raw
            else:
                self.error(
                    _line_of(data, "allow_header_claims", line),
                    f"{path}.allow_header_claims",
                    f"must be true or false, not {_kind(raw)}",
                )
        return EnvironmentPolicy(
            name=name, models=models, budget=budget, rate_limit=rate, allow_header_claims=claims
        )

    def environments(self, value: Any, line: int) -> dict[str, EnvironmentPolicy]:
        entries = self.named_entries(value, line, "environments")
        result: dict[str, EnvironmentPolicy] = {}
        first_seen: dict[str, str] = {}
        for raw_name, body in entries.items():
            entry_line = _line_of(entries, raw_name, line)
            path = f"environments.{raw_name}"
            name = self.environment_name(raw_name, entry_line, path)
            if name is None:
                continue
            if name in first_seen:
                self.error(entry_line, path, f"the same environment as environments.{first_seen[name]}")
                continue
            first_seen[name] = str(raw_name)
            result[name] = self.environment(name, body, entry_line, path)
        return result

    def key(self, name: str, value: Any, line: int, path: str) -> KeyPolicy | None:
        data = self.mapping(value, line, path, _KEY_KEYS)
        ok = isinstance(value, dict)
        if value is None:
            self.error(line, path, "needs fingerprint or last4")
        has_fp, has_last4 = "fingerprint" in data, "last4" in data
        if ok and has_fp == has_last4:
            what = "both fingerprint and last4" if has_fp else "neither fingerprint nor last4"
            self.error(line, path, f"has {what}: give exactly one of the two")
            ok = False
        fingerprint = last4 = None
        if has_fp:
            raw = data["fingerprint"]
            fp_line = _line_of(data, "fingerprint", line)
            if isinstance(raw, str) and _FINGERPRINT.fullmatch(raw.strip()):
                fingerprint = raw.strip()
            else:
                ok = False
                if isinstance(raw, str) and _looks_secret(raw):
                    what = "this looks like an API key itself: never put a key here, only its fingerprint"
                elif isinstance(raw, str) and re.fullmatch(r"[0-9A-Fa-f]{12}", raw.strip()):
                    what = "must be written in lowercase hex"
                elif isinstance(raw, str):
                    what = f"must be 12 lowercase hex digits (got {len(raw.strip())} characters)"
                else:
                    what = f"must be 12 lowercase hex digits as a quoted string, not {_kind(raw)}"
                self.error(fp_line, f"{path}.fingerprint", what)
        if has_last4:
            raw = data["last4"]
            l4_line = _line_of(data, "last4", line)
            if isinstance(raw, str) and len(raw) == 4 and raw.isprintable() and " " not in raw:
                last4 = raw
            else:
                ok = False
                if isinstance(raw, str) and _looks_secret(raw):
                    what = (
                        "this looks like an API key itself: never put a key here, only its last 4 characters"
                    )
                elif isinstance(raw, str):
                    what = f"must be exactly the key's last 4 characters (got {len(raw)} characters)"
                else:
                    what = f'must be a quoted string such as "x7Yz", not {_kind(raw)}'
                self.error(l4_line, f"{path}.last4", what)
        environment = team = feature = None
        if "environment" in data:
            environment = self.environment_name(
                data["environment"], _line_of(data, "environment", line), f"{path}.environment"
            )
        if "team" in data:
            team = self.text(data["team"], _line_of(data, "team", line), f"{path}.team")
        if "feature" in data:
            feature = self.text(data["feature"], _line_of(data, "feature", line), f"{path}.feature")
        budget = rate = None
        if "budget" in data:
            budget = self.budget(data["budget"], _line_of(data, "budget", line), f"{path}.budget")
        if "rate_limit" in data:
            rate = self.rate_limit(
                data["rate_limit"], _line_of(data, "rate_limit", line), f"{path}.rate_limit"
            )
        if not ok:
            return None
        return KeyPolicy(
            name=name,
            fingerprint=fingerprint,
            last4=last4,
            environment=environment,
            team=team,
            feature=feature,
            budget=budget,
            rate_limit=rate,
        )

    def keys(self, value: Any, line: int) -> tuple[KeyPolicy, ...]:
        entries = self.named_entries(value, line, "keys")
        result: list[KeyPolicy] = []
        fingerprints: dict[str, str] = {}
        last4s: dict[str, str] = {}
        for index, (raw_name, body) in enumerate(entries.items()):
            entry_line = _line_of(entries, raw_name, line)
            if not isinstance(raw_name, str) or not raw_name.strip():
                self.error(
                    entry_line, f"keys[#{index + 1}]", "the entry name must be a string, e.g. ci-openai"
                )
                continue
            if _looks_secret(raw_name):
                self.error(
                    entry_line,
                    f"keys[#{index + 1}]",
                    "this entry name looks like an API key: name entries by their use (e.g. ci-openai) "
                    "and give the key's fingerprint or last4",
                )
                continue
            path = f"keys.{raw_name}"
            entry = self.key(raw_name.strip(), body, entry_line, path)
            if entry is None:
                continue
            if entry.fingerprint is not None:
                other = fingerprints.setdefault(entry.fingerprint, entry.name)
                if other != entry.name:
                    fp_line = _line_of(body, "fingerprint", entry_line)
                    self.error(fp_line, f"{path}.fingerprint", f"the same fingerprint as keys.{other}")
                    continue
            if entry.last4 is not None:
                other = last4s.setdefault(entry.last4, entry.name)
                if other != entry.name:
                    l4_line = _line_of(body, "last4", entry_line)
                    self.error(l4_line, f"{path}.last4", f"the same last4 as keys.{other}: ambiguous")
                    continue
            result.append(entry)
        return tuple(result)

    def users(self, value: Any, line: int) -> dict[str, UserPolicy]:
        entries = self.named_entries(value, line, "users")
        result: dict[str, UserPolicy] = {}
        for raw_name, body in entries.items():
            entry_line = _line_of(entries, raw_name, line)
            path = f"users.{raw_name}"
            if not isinstance(raw_name, str) or not raw_name.strip():
                self.error(entry_line, path, "the user name must be a string")
                continue
            data = self.mapping(body, entry_line, path, _USER_KEYS)
            budget = rate = None
            if "budget" in data:
                budget = self.budget(data["budget"], _line_of(data, "budget", entry_line), f"{path}.budget")
            if "rate_limit" in data:
                rate = self.rate_limit(
                    data["rate_limit"], _line_of(data, "rate_limit", entry_line), f"{path}.rate_limit"
                )
            name = raw_name.strip()
            result[name] = UserPolicy(name=name, budget=budget, rate_limit=rate)
        return result

    def attribution(self, value: Any, line: int) -> AttributionSettings:
        data = self.mapping(value, line, "attribution", _ATTRIBUTION_KEYS)
        defaults = AttributionSettings()
        found: dict[str, tuple[str, ...]] = {
            "environment": defaults.environment_vars,
            "team": defaults.team_vars,
            "feature": defaults.feature_vars,
        }
        if "process_env" in data:
            pe_line = _line_of(data, "process_env", line)
            process_env = self.mapping(
                data["process_env"], pe_line, "attribution.process_env", _PROCESS_ENV_KEYS
            )
            for name in _PROCESS_ENV_KEYS:
                if name not in process_env:
                    continue
                item_line = _line_of(process_env, name, pe_line)
                path = f"attribution.process_env.{name}"
                raw = process_env[name]
                if raw is None:
                    found[name] = ()
                    continue
                names = self.string_list(raw, item_line, path)
                if names is None:
                    continue
                bad = [n for n in names if not _ENV_VAR.fullmatch(n)]
                if bad:
                    self.error(item_line, path, f"not a variable name: {', '.join(bad)}")
                    continue
                found[name] = names
        rules: list[tuple[str, str]] = []
        if "hosts" in data:
            hosts_line = _line_of(data, "hosts", line)
            hosts = self.named_entries(data["hosts"], hosts_line, "attribution.hosts")
            for pattern, env in hosts.items():
                entry_line = _line_of(hosts, pattern, hosts_line)
                path = f"attribution.hosts.{pattern}"
                if not isinstance(pattern, str) or not pattern.strip():
                    self.error(entry_line, path, "the hostname pattern must be a string")
                    continue
                name = self.environment_name(env, entry_line, path)
                if name is not None:
                    rules.append((pattern.strip(), name))
        unidentified_user = None
        if "unidentified_user" in data:
            raw = data["unidentified_user"]
            if isinstance(raw, str) and raw.strip():
                unidentified_user = raw.strip()
            else:
                self.error(
                    _line_of(data, "unidentified_user", line),
                    "attribution.unidentified_user",
                    f"must be a user name (a string), not {_kind(raw)}",
                )
        return AttributionSettings(
            environment_vars=found["environment"],
            team_vars=found["team"],
            feature_vars=found["feature"],
            host_rules=tuple(rules),
            unidentified_user=unidentified_user,
        )

    def notifications(self, value: Any, line: int) -> NotificationSettings:
        data = self.mapping(value, line, "notifications", _NOTIFICATION_KEYS)
        defaults = NotificationSettings()
        desktop, webhook, timeout = defaults.desktop, defaults.webhook, defaults.timeout_s
        if "desktop" in data:
            raw = data["desktop"]
            if isinstance(raw, bool):
                desktop = raw
            else:
                self.error(
                    _line_of(data, "desktop", line),
                    "notifications.desktop",
                    f"must be true or false, not {_kind(raw)}",
                )
        if data.get("webhook") is not None:
            raw = data["webhook"]
            hook_line = _line_of(data, "webhook", line)
            # The URL is not echoed: a webhook's path is often its secret (Slack's is).
            if not isinstance(raw, str) or not raw.strip():
                self.error(hook_line, "notifications.webhook", f"must be an http(s) URL, not {_kind(raw)}")
            else:
                url = raw.strip()
                try:
                    parts = urlsplit(url)
                    host = parts.hostname
                    parts.port  # noqa: B018 (raises ValueError on a bad port)
                except ValueError:
                    parts, host = None, None
                if parts is None or parts.scheme.lower() not in ("http", "https"):
                    scheme = parts.scheme if parts is not None and parts.scheme else "none"
                    self.error(
                        hook_line,
                        "notifications.webhook",
                        f"must start with http:// or https:// (scheme: {_show(scheme)[:20]})",
                    )
                elif not host or any(ch.isspace() for ch in url):
                    self.error(hook_line, "notifications.webhook", "must be a URL with a host and no spaces")
                else:
                    webhook = url
        if "timeout_s" in data:
            raw = data["timeout_s"]
            t_line = _line_of(data, "timeout_s", line)
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                self.error(
                    t_line, "notifications.timeout_s", f"must be a number of seconds, not {_kind(raw)}"
                )
            elif not 0 < raw <= MAX_NOTIFY_TIMEOUT_S:
                self.error(
                    t_line,
                    "notifications.timeout_s",
                    f"must be more than 0 and at most {MAX_NOTIFY_TIMEOUT_S} seconds (got {raw})",
                )
            else:
                timeout = float(raw)
        return NotificationSettings(desktop=desktop, webhook=webhook, timeout_s=timeout)

    def providers(self, value: Any, line: int) -> tuple[CustomProvider, ...]:
        found: list[CustomProvider] = []
        seen: dict[tuple[str, int], str] = {}
        for name, entry in self.named_entries(value, line, "providers").items():
            path = f"providers.{_show(name)}"
            entry_line = _line_of(value, name, line)
            data = self.mapping(entry, entry_line, path, _PROVIDER_KEYS)
            url = self.text(data.get("url"), _line_of(data, "url", entry_line), f"{path}.url")
            api = data.get("api", "openai")
            if api not in API_FAMILIES:
                self.error(
                    _line_of(data, "api", entry_line),
                    f"{path}.api",
                    f"must be one of {', '.join(API_FAMILIES)}",
                )
                continue
            pricing = data.get("pricing_provider")
            if pricing is not None:
                pricing = self.text(
                    pricing, _line_of(data, "pricing_provider", entry_line), f"{path}.pricing_provider"
                )
            if url is None:
                continue
            try:
                parts = urlsplit(url if "://" in url else f"http://{url}")
                host, port = parts.hostname, parts.port
            except ValueError:
                host, port, parts = None, None, None
            if parts is None or parts.scheme not in ("http", "https") or not host:
                self.error(_line_of(data, "url", entry_line), f"{path}.url", "must be http(s)://host[:port]")
                continue
            port = port or (443 if parts.scheme == "https" else 80)
            if (host, port) in seen:
                self.error(entry_line, path, f"{host}:{port} is already provider {seen[(host, port)]}")
                continue
            seen[(host, port)] = str(name)
            found.append(CustomProvider(str(name), host.lower(), port, parts.scheme, api, pricing))
        return tuple(found)

    def azure_deployments(self, value: Any, line: int) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, model in self.named_entries(value, line, "azure_deployments").items():
            text = self.text(model, _line_of(value, name, line), f"azure_deployments.{_show(name)}")
            if text is not None:
                found[str(name)] = text
        return found

    def prices(
        self, value: Any, line: int, custom: tuple[CustomProvider, ...] = ()
    ) -> tuple[tuple[str, PriceOverride], ...]:
        from addon.providers import BUILTIN  # here: the registry reads these policies' types

        builtin, declared = [p.name for p in BUILTIN], [p.name for p in custom]
        providers = builtin + declared
        found: list[tuple[str, PriceOverride]] = []
        for pattern, entry in self.named_entries(value, line, "prices").items():
            path = f"prices.{_show(pattern)}"
            entry_line = _line_of(value, pattern, line)
            scope, slash, _ = str(pattern).partition("/")
            if slash and scope != "models" and scope not in providers:
                # provider/model: a scope no call is recorded under would never match, silently;
                # most often it is OpenRouter's vendor/model id written as the model alone.
                self.error(
                    entry_line,
                    path,
                    f"a key with a slash is provider/model, and {_show(scope)[:40]} is no provider "
                    f"(built in: {', '.join(builtin)}; under providers: {', '.join(declared) or 'none'}), "
                    "so it would never match: declare it under providers:, or, for OpenRouter's "
                    f"model id {_show(str(pattern))[:80]}, write openrouter/{_show(str(pattern))[:80]}",
                )
                continue
            data = self.mapping(entry, entry_line, path, _PRICE_KEYS)
            given = {key for key in _PRICE_KEYS if data.get(key) is not None}
            tokens = given & {"input", "output"}
            if not tokens and "usd_per_hour" not in given:
                why = "needs input and output (USD per million tokens) or usd_per_hour"
                self.error(entry_line, path, why + " (USD per hour of audio)")
                continue
            if tokens or given & {"cached_input", "cache_write"}:  # a token price needs both
                for key in {"input", "output"} - tokens:
                    self.error(entry_line, f"{path}.{key}", "is required (USD per million tokens)")
            amounts = {
                key: self.decimal(data[key], _line_of(data, key, entry_line), f"{path}.{key}")
                if key in given
                else None
                for key in _PRICE_KEYS
            }
            if None in (amounts[key] for key in given) or (tokens and len(tokens) < 2):
                continue
            found.append(
                (
                    str(pattern),
                    PriceOverride(
                        input=amounts["input"],
                        output=amounts["output"],
                        cached_input=amounts["cached_input"],
                        cache_write=amounts["cache_write"],
                        usd_per_hour=amounts["usd_per_hour"],
                    ),
                )
            )
        return tuple(found)

    def document(self, data: Any, source: Path | None) -> Policies:
        if data is None:
            data = _Map()
            data.line = 1
            data.key_lines = {}
            data.duplicates = []
        if not isinstance(data, dict):
            self.error(
                1, "(top level)", f"must be a mapping of the keys {', '.join(_TOP_KEYS)}, not {_kind(data)}"
            )
            return Policies(source=source, enforcing=True)
        data = self.mapping(data, 1, "", _TOP_KEYS)
        default_env = "development"
        if "default_environment" in data:
            found = self.environment_name(
                data["default_environment"], _line_of(data, "default_environment", 1), "default_environment"
            )
            default_env = found or default_env
        environments = self.environments(data.get("environments"), _line_of(data, "environments", 1))
        if environments and default_env not in environments:
            # Legal (an environment without rules), but a name this close to a declared one is a
            # typo that would quietly lift every rule from the calls nothing else attributes.
            close = difflib.get_close_matches(default_env, list(environments), n=1, cutoff=0.8)
            if close:
                self.error(
                    _line_of(data, "default_environment", 1),
                    "default_environment",
                    f"{default_env} is declared nowhere under environments: did you mean {close[0]}?",
                )
        keys = self.keys(data.get("keys"), _line_of(data, "keys", 1))
        users = self.users(data.get("users"), _line_of(data, "users", 1))
        attribution = self.attribution(data.get("attribution"), _line_of(data, "attribution", 1))
        notifications = NotificationSettings()
        if "notifications" in data:
            notifications = self.notifications(data["notifications"], _line_of(data, "notifications", 1))
        providers = self.providers(data.get("providers"), _line_of(data, "providers", 1))
        deployments = self.azure_deployments(
            data.get("azure_deployments"), _line_of(data, "azure_deployments", 1)
        )
        prices = self.prices(data.get("prices"), _line_of(data, "prices", 1), providers)
        premium = None
        if data.get("premium_usd_per_mtok") is not None:
            premium = self.decimal(
                data["premium_usd_per_mtok"],
                _line_of(data, "premium_usd_per_mtok", 1),
                "premium_usd_per_mtok",
            )
        return Policies(
            default_environment=default_env,
            environments=MappingProxyType(environments),
            keys=keys,
            users=MappingProxyType(users),
            attribution=attribution,
            premium_usd_per_mtok=premium,
            notifications=notifications,
            providers=providers,
            azure_deployments=MappingProxyType(deployments),
            prices=prices,
            source=source,
            enforcing=True,
        )


def parse_policies(text: str, source: Path | None = None) -> Policies:
    """Parse and validate policies.yaml text; raise ``PolicyError`` listing every problem."""
    filename = source.name if source is not None else "policies.yaml"
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "cannot be parsed"
        raise PolicyError([f"{filename}:{line}: (yaml): not valid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"{filename}:1: (yaml): not valid YAML: {type(exc).__name__}"]) from None
    finally:
        loader.dispose()
    validator = _Validator(filename)
    policies = validator.document(data, source)
    if validator.problems:
        raise PolicyError(validator.messages())
    return policies


def load_policies(path: Path) -> Policies:
    """Read ``path``. A missing file means meter only (``enforcing`` False); an invalid one raises."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Policies(source=None, enforcing=False)
    except OSError as exc:
        raise PolicyError(f"{path.name}:1: (file): cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path.name}:1: (file): not UTF-8 text ({exc.reason})") from None
    return parse_policies(text, path)


# -- live reload ---------------------------------------------------------------------------------


SETTLE_S = 0.05  # a changed policies.yaml is read twice this far apart before it is applied


class PolicyFile:
    """policies.yaml watched for edits; ``check()`` costs one ``stat`` when nothing changed.

    ``policies`` is what is in force: the last valid content, or meter-only ``Policies()``
    when there is no file. Each edit is reported once.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.policies = Policies()
        self._signature: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) last read
        self._digest: bytes | None = None  # sha256 of the content last processed
        self._present = False
        self._missing_once = False  # the file was missing at the last check (see ``_removed``)
        self._empty_once = False  # the file was empty at the last check (see ``_settled``)

    def load(self) -> Policies:
        """Read the file now (at start); raise ``PolicyError`` when it is invalid."""
        found = self._read()
        if found is None:
            self._present, self._signature, self._digest = False, None, None
            self.policies = Policies()
            return self.policies
        signature, data = found
        self._present, self._signature = True, signature
        self._digest = hashlib.sha256(data).digest()
        self.policies = self._parse(data)
        return self.policies

    def may_have_changed(self) -> bool:
        """False when ``check()`` would find nothing to do. One ``stat`` and no read: cheap enough
        for the event loop, so an unchanged file costs no thread hop (two wake-ups) per look."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._present
        except OSError:
            return False
        return self._missing_once or (st.st_mtime_ns, st.st_size, st.st_ino) != self._signature

    def check(self) -> tuple[Policies | None, str | None]:
        """``(new, None)`` after a valid edit, ``(None, error)`` after an invalid one, else ``(None, None)``.

        After an invalid edit the last good policies stay in force; a deleted file
        means meter only: ``(Policies(), message)``.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._removed()
        except OSError:
            return None, None
        self._missing_once = False
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._signature:
            return None, None
        try:
            found = self._read()
        except PolicyError as exc:
            self._signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            self._digest = None
            return None, str(exc)
        if found is None:
            return self._removed()
        signature, data = found
        if signature is None:  # changed while being read: read it again next time
            return None, None
        digest = hashlib.sha256(data).digest()
        if digest != self._digest and not self._settled(data):
            return None, None  # caught in the middle of a save: read it again next time
        self._signature = signature
        self._present = True
        if digest == self._digest:
            return None, None
        self._digest = digest
        try:
            policies = self._parse(data)
        except PolicyError as exc:
            return None, str(exc)
        self.policies = policies
        return policies, None

    def _settled(self, data: bytes) -> bool:
        """Is ``data`` the file as saved, not a moment of the save? An editor that truncates the
        file and then writes it can be caught in between: empty, or cut off (and maybe still
        valid YAML). The same content a moment later is the saved one; an empty file must also
        be seen at two checks running (a moment can fall between a truncation and a write)."""
        time.sleep(SETTLE_S)
        try:
            again = self._read()
        except PolicyError:  # unreadable a moment later: still being written
            return False
        if again is None or again[1] != data:
            return False
        if data.strip():
            self._empty_once = False
            return True
        settled, self._empty_once = self._empty_once, not self._empty_once
        return settled

    def _removed(self) -> tuple[Policies | None, str | None]:
        """Meter only once the file is missing at two checks in a row.

        An editor or tool that saves by deleting the file and writing it anew leaves it
        missing for a moment: one check in that moment must not lift every policy.
        """
        if not self._present:
            return None, None
        if not self._missing_once:
            self._missing_once = True
            return None, None
        self._missing_once = False
        self._present, self._signature, self._digest = False, None, None
        self.policies = Policies()
        return self.policies, f"{self.path} was removed: metering only, no policy is enforced"

    def _read(self) -> tuple[tuple[int, int, int] | None, bytes] | None:
        """``(signature, content)``, signature None if the file changed while read; None if missing."""
        try:
            before = os.stat(self.path)
            data = self.path.read_bytes()
            after = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PolicyError(f"{self.path.name}:1: (file): cannot be read: {exc.strerror}") from None
        sig_before = (before.st_mtime_ns, before.st_size, before.st_ino)
        sig_after = (after.st_mtime_ns, after.st_size, after.st_ino)
        return (sig_after if sig_before == sig_after else None), data

    def _parse(self, data: bytes) -> Policies:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{self.path.name}:1: (file): not UTF-8 text ({exc.reason})") from None
        return parse_policies(text, self.path)
