"""Advisor tools in a request: another model the call runs within itself, at that model's rates.

Two shapes. Anthropic's advisor tool (``{"type": "advisor_20260301", "name": "advisor", "model":
..., "max_tokens"?, "max_uses"?}`` in ``tools``, beta ``advisor-tool-2026-03-01``): Anthropic
runs ``model`` server-side when the executor (the call's model) consults it, each consultation
reading the whole transcript and writing up to ``max_tokens``, at most ``max_uses`` times. It is
served by Anthropic's API (and gateways in front of it, which forward it) and by OpenRouter's
Anthropic-compatible ``/api/v1/messages``; Claude Code's advisor page says it is not available on
Amazon Bedrock, Google Vertex AI or Microsoft Foundry. OpenRouter's ``openrouter:advisor`` server
tool (``{"type": "openrouter:advisor", "parameters": {"model"?, "max_completion_tokens"?, ...}}``
in ``tools``, on Chat Completions and Responses): ``parameters.model`` is the advisor; without it
the executor picks one per consultation (the tool call's ``model`` argument), else the request's
model, so which model runs cannot be known from the request. Its ``parameters.advisors`` is a
roster of named profiles (``{"name", "model"?, "max_completion_tokens"?, ...}``), one of which the
executor selects per consultation, the selected profile's settings winning over the tool's: each
profile's model may run. OpenRouter also takes Anthropic's shape on ``/api/v1/messages``, where
"the model is the only setting it carries": its ``max_tokens`` and ``max_uses`` are not caps there.

OpenRouter's ``openrouter:fusion`` server tool (beta; ``{"type": "openrouter:fusion", "parameters":
{"analysis_models"?, "model"?, "max_completion_tokens"?, "max_tool_calls"?, ...}}``): when the
executor invokes it, every model of its panel (``parameters.analysis_models``, 1 to 8) answers the
prompt in parallel (with web search and fetch) and a judge (``parameters.model``; unset, the model
handling the request) compares their answers, ``max_completion_tokens`` capping each inner call;
OpenRouter bills the call as the sum of those completions. So each panel model and the judge are
held to the allowlist and reserved as an advisor is, each its own (all run at every invocation):
``fusion_members``. A tool without ``analysis_models`` runs OpenRouter's default panel (its
"Quality" preset, aliases of the newest models of families) and one with a ``preset`` and no
``model`` its preset's judge, which the request does not name: unreadable (refused where models
are restricted), and reserved at OpenRouter's defaults (``AdvisorTools.reserved_only``), as is the
``fusion`` plugin's panel and judge (``with_fusion_plugin_reserved``).

Anthropic accepts an executor/advisor pair only when the advisor is at least as capable as the
executor (its advisor-tool page's compatibility table): ``pair_known_valid`` and
``pair_known_invalid`` read that rule from the models' names, for a pair the proxy would make by
rewriting one of them. OpenRouter's advisor may be any model. Pure: no mitmproxy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from addon.model_rules import FUSION_DEFAULT_JUDGE, FUSION_DEFAULT_PANEL, base_model

ANTHROPIC_TYPE = "advisor_"  # how Anthropic's advisor tool's versioned type starts (advisor_20260301)
OPENROUTER_TYPE = "openrouter:advisor"
# OpenRouter's sub-agent server tool (beta): the executor hands tasks to ``parameters.model``, a
# worker billed as normal token usage on the parent request, which may carry its own tools
# (``parameters.tools``). Held to the allowlist and reserved as an advisor is.
SUBAGENT_TYPE = "openrouter:subagent"
OPENROUTER_TYPES = (OPENROUTER_TYPE, SUBAGENT_TYPE)
FUSION_TYPE = "openrouter:fusion"  # a panel of models and a judge, within the call
PLUGINS_FIELD = "plugins"
FUSION_PLUGIN = "fusion"  # {"id": "fusion", "analysis_models"?, "model"?, "preset"?}: adds the tool
MAX_ADVISOR_TOOLS = 64  # advisor tools read in one request (more: the tools cannot all be checked)
MAX_MODEL_NAME = 256  # characters of one model name (a longer one is no model id)
# Consultations reserved for an advisor tool that sets no max_uses: a bound, not a cap (Anthropic
# documents none; OpenRouter's tool has no such setting); with max_uses set, that many.
ADVISOR_USES_RESERVED = 3
# How deep openrouter:advisor tools nested in an advisor's own ``parameters.tools`` are read (a
# sub-agent's advisor, its advisor's...): deeper, the request cannot be checked whole.
MAX_ADVISOR_NESTING = 4
# Where an advisor's model is written: (tool index, then the index in each nested
# ``parameters.tools`` list down to its tool, then its profile index or None).
Where = tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class AdvisorTool:
    """One advisor of a request: its tool's index in ``tools`` (and, for a named profile of an
    ``openrouter:advisor`` tool's ``parameters.advisors``, its index there), its model, its caps
    (None: unset or not trusted), and whether it is OpenRouter's (its model in ``parameters``)."""

    index: int
    model: str
    max_tokens: int | None = None
    max_uses: int | None = None
    openrouter: bool = False
    profile: int | None = None
    # An openrouter:advisor tool nested in another's ``parameters.tools`` (the advisor's sub-agent
    # may consult it): its index in each nested list, from the tool at ``index`` down.
    nest: tuple[int, ...] = ()
    # A member of an openrouter:fusion tool: ``profile`` is then its index in
    # ``parameters.analysis_models``, None for the judge (``parameters.model``).
    fusion: bool = False

    @property
    def where(self) -> Where:
        """Where its model is written: (tool index, nested indices..., profile index or None)."""
        return self.index, *self.nest, self.profile


@dataclass(frozen=True, slots=True)
class AdvisorTools:
    """A request's advisor tools, and why they cannot all be read, if they cannot."""

    tools: tuple[AdvisorTool, ...] = ()
    error: str | None = None
    # Members the request runs but does not name (an openrouter:fusion tool's or the fusion
    # plugin's default panel and judge, OpenRouter's): reserved, never checked or rewritten (where
    # models are restricted such a request is refused as unreadable).
    reserved_only: tuple[AdvisorTool, ...] = ()


def advisor_tools(body: Any, *, openrouter: bool = False, anthropic_caps: bool = True) -> AdvisorTools:
    """The advisor tools of a request body: Anthropic's (``tools`` entries whose ``type`` starts
    with ``advisor_``), and with ``openrouter`` OpenRouter's (``type`` ``openrouter:advisor``, and
    each named profile of its ``parameters.advisors``, whose model is its own or else the tool's).
    A tool or profile naming no model (or not a string) makes the list unreadable. Without
    ``anthropic_caps`` an Anthropic-shaped tool's ``max_tokens``/``max_uses`` are not read
    (OpenRouter's ``/api/v1/messages`` takes its model only). Never raises."""
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return AdvisorTools()
    found: list[AdvisorTool] = []
    unnamed: list[AdvisorTool] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if not isinstance(kind, str):
            continue
        if kind.startswith(ANTHROPIC_TYPE):
            model = tool.get("model")
            if len(found) >= MAX_ADVISOR_TOOLS:
                error = f"it has more than {MAX_ADVISOR_TOOLS} advisor tools"
                return AdvisorTools(tuple(found), error, tuple(unnamed))
            if not _model_name(model):
                return AdvisorTools(tuple(found), f"tool {index + 1} ({kind}) names no model", tuple(unnamed))
            cap = _cap(tool.get("max_tokens")) if anthropic_caps else None
            uses = _cap(tool.get("max_uses")) if anthropic_caps else None
            found.append(AdvisorTool(index, model, cap, uses))
        elif openrouter and kind in OPENROUTER_TYPES:
            error = _openrouter_advisors(index, tool.get("parameters"), found, (), kind, unnamed)
            if error is not None:
                return AdvisorTools(tuple(found), error, tuple(unnamed))
        elif openrouter and kind == FUSION_TYPE:
            error = fusion_members(index, tool.get("parameters"), found, body.get("model"), (), unnamed)
            if error is not None:
                return AdvisorTools(tuple(found), error, tuple(unnamed))
    return AdvisorTools(tuple(found), None, tuple(unnamed))


def fusion_members(
    index: int,
    settings: Any,
    found: list[AdvisorTool],
    executor: Any,
    nest: tuple[int, ...] = (),
    unnamed: list[AdvisorTool] | None = None,
) -> str | None:
    """Add an ``openrouter:fusion`` tool's panel (``parameters.analysis_models``, each at its
    index) and its judge (``parameters.model``; unset, ``executor``, the model handling the
    request, when it names one) to ``found``, ``max_completion_tokens`` their cap. Why they cannot
    all be read, if they cannot. What runs unnamed goes to ``unnamed``, for its reservation: without
    ``analysis_models`` OpenRouter's default panel (and the judge), with a ``preset`` and no
    ``model`` its default judge (the preset's own is not knowable)."""
    settings = settings if isinstance(settings, dict) else {}
    unnamed = unnamed if unnamed is not None else []
    label = f"tool {index + 1} ({FUSION_TYPE})"
    panel = settings.get("analysis_models")
    cap = _cap(settings.get("max_completion_tokens"))
    judge = settings.get("model")
    if judge is None and settings.get("preset") is None:
        judge = executor  # "defaults to the same model handling your request"
    if panel is None:
        for i, model in enumerate(FUSION_DEFAULT_PANEL):
            unnamed.append(AdvisorTool(index, model, cap, None, True, i, nest, fusion=True))
        judge = judge if _model_name(judge) else FUSION_DEFAULT_JUDGE
        unnamed.append(AdvisorTool(index, judge, cap, None, True, None, nest, fusion=True))
        return (
            f"{label} names no panel (its parameters.analysis_models is unset: OpenRouter runs its "
            "default panel, which the request does not name; list the panel's models there)"
        )
    if not isinstance(panel, list):
        return f"{label}: its parameters.analysis_models is not a list"
    for i, model in enumerate(panel):
        if not _model_name(model):
            return f"{label}: entry {i + 1} of its parameters.analysis_models names no model"
        if len(found) >= MAX_ADVISOR_TOOLS:
            return f"it has more than {MAX_ADVISOR_TOOLS} advisor tools and panel models"
        found.append(AdvisorTool(index, model, cap, None, True, i, nest, fusion=True))
    if settings.get("model") is None and settings.get("preset") is not None:
        unnamed.append(AdvisorTool(index, FUSION_DEFAULT_JUDGE, cap, None, True, None, nest, fusion=True))
        return f"{label} names no judge (its parameters.model is unset: its parameters.preset's judge runs)"
    if settings.get("model") is None:
        if not _model_name(judge):
            return None  # a request naming no model (OpenRouter's models list): its entries are checked
    elif not _model_name(judge):
        return f"{label}: its parameters.model names no model"
    if len(found) >= MAX_ADVISOR_TOOLS:
        return f"it has more than {MAX_ADVISOR_TOOLS} advisor tools and panel models"
    found.append(AdvisorTool(index, judge, cap, None, True, None, nest, fusion=True))
    return None


def fusion_plugin(body: Any) -> dict[str, Any] | None:
    """The ``fusion`` plugin of a request's ``plugins`` (OpenRouter's: it adds the
    ``openrouter:fusion`` tool), or None."""
    plugins = body.get(PLUGINS_FIELD) if isinstance(body, dict) else None
    if not isinstance(plugins, list):
        return None
    return next((p for p in plugins if isinstance(p, dict) and p.get("id") == FUSION_PLUGIN), None)


def with_fusion_plugin_reserved(found: AdvisorTools, body: Any) -> AdvisorTools:
    """``found`` with, reserved only, the panel and judge the request's ``fusion`` plugin runs
    (its ``analysis_models``, else OpenRouter's default panel; its ``model``, else the default
    judge, the panel's first), each at every invocation: the plugin is refused where models are
    restricted (``fallback_lists.with_fusion_plugin``), and reserved where they are not."""
    plugin = fusion_plugin(body)
    if plugin is None:
        return found
    panel = plugin.get("analysis_models")
    named = [m for m in panel if _model_name(m)] if isinstance(panel, list) else []
    judge = plugin.get("model") if _model_name(plugin.get("model")) else FUSION_DEFAULT_JUDGE
    cap = _cap(plugin.get("max_completion_tokens"))
    # Not a tool of ``tools``: index -1 keeps its members apart from theirs in ``advisors_by_tool``.
    members = [
        AdvisorTool(-1, model, cap, None, True, i, fusion=True)
        for i, model in enumerate(named or FUSION_DEFAULT_PANEL)
    ]
    members.append(AdvisorTool(-1, judge, cap, None, True, None, fusion=True))
    return AdvisorTools(found.tools, found.error, (*found.reserved_only, *members))


def _openrouter_advisors(
    index: int,
    settings: Any,
    found: list[AdvisorTool],
    nest: tuple[int, ...] = (),
    kind: str = OPENROUTER_TYPE,
    unnamed: list[AdvisorTool] | None = None,
) -> str | None:
    """Add an ``openrouter:advisor`` tool's advisors to ``found``: ``parameters.model`` (the
    advisor of a consultation naming no profile), each named profile of ``parameters.advisors``
    (a selected profile's settings win over the tool's: its own model and
    ``max_completion_tokens``, else the tool's), and the advisors and sub-agent workers of the
    ``openrouter:advisor`` and ``openrouter:subagent`` tools in its own ``parameters.tools`` (the
    server tools its sub-agent may use), down to ``MAX_ADVISOR_NESTING``; an
    ``openrouter:subagent`` tool's the same way (``kind``: the tool's label, ``openrouter:advisor >
    parameters.tools 2 (openrouter:subagent)`` for a nested one). Why they cannot all be read, if
    they cannot."""
    settings = settings if isinstance(settings, dict) else {}
    model = settings.get("model")
    cap = _cap(settings.get("max_completion_tokens"))
    if len(found) >= MAX_ADVISOR_TOOLS:
        return f"it has more than {MAX_ADVISOR_TOOLS} advisor tools"
    if not _model_name(model):
        if kind.rstrip(")").endswith(SUBAGENT_TYPE):
            return f"tool {index + 1} ({kind}) names no worker model (its parameters.model is unset)"
        return (
            f"tool {index + 1} ({kind}) names no model (its parameters.model is unset: the executor "
            "picks the advisor per consultation)"
        )
    found.append(AdvisorTool(index, model, cap, None, True, None, nest))
    roster = settings.get("advisors")
    error = _roster(index, kind, model, cap, roster, found, nest) if roster is not None else None
    if error is not None:
        return error
    inner = settings.get("tools")
    if inner is None:
        return None
    if not isinstance(inner, list):
        return f"tool {index + 1} ({kind}): its parameters.tools is not a list"
    for i, tool in enumerate(inner):
        if isinstance(tool, dict) and tool.get("type") == FUSION_TYPE:  # its judge defaults to model
            error = fusion_members(index, tool.get("parameters"), found, model, (*nest, i), unnamed)
            if error is not None:
                return f"{kind} > parameters.tools {i + 1}: {error}"
            continue
        if not isinstance(tool, dict) or tool.get("type") not in OPENROUTER_TYPES:
            continue
        if len(nest) >= MAX_ADVISOR_NESTING:
            return f"tool {index + 1} ({kind}) nests advisors more than {MAX_ADVISOR_NESTING} deep"
        label = f"{kind} > parameters.tools {i + 1} ({tool['type']})"
        error = _openrouter_advisors(index, tool.get("parameters"), found, (*nest, i), label, unnamed)
        if error is not None:
            return error
    return None


def _roster(
    index: int,
    kind: str,
    model: str,
    cap: int | None,
    roster: Any,
    found: list[AdvisorTool],
    nest: tuple[int, ...],
) -> str | None:
    """Add the named profiles of an ``openrouter:advisor`` tool's ``parameters.advisors``."""
    if not isinstance(roster, list):
        return f"tool {index + 1} ({kind}): its parameters.advisors is not a list"
    for i, profile in enumerate(roster):
        if not isinstance(profile, dict):
            return f"tool {index + 1} ({kind}): profile {i + 1} of its parameters.advisors is not an object"
        own = profile.get("model")
        if own is not None and not _model_name(own):
            return f"tool {index + 1} ({kind}): profile {i + 1} of its parameters.advisors names no model"
        if len(found) >= MAX_ADVISOR_TOOLS:
            return f"it has more than {MAX_ADVISOR_TOOLS} advisor tools and profiles"
        profile_cap = _cap(profile.get("max_completion_tokens")) or cap
        found.append(AdvisorTool(index, own if own is not None else model, profile_cap, None, True, i, nest))
    return None


def _model_name(model: Any) -> bool:
    return isinstance(model, str) and bool(model.strip()) and len(model) <= MAX_MODEL_NAME


def with_advisor_models(body: dict[str, Any], models: Mapping[Where, str]) -> dict[str, Any]:
    """A new body whose advisors at the places of ``models`` (as ``AdvisorTool.where``) name those
    models (in ``model``, an ``openrouter:advisor`` tool's ``parameters.model``, a profile's
    ``model`` in its ``parameters.advisors``, or so in a tool nested in its ``parameters.tools``;
    every other member, and every other tool, kept)."""
    if not models:
        return body
    tools = list(body["tools"])
    for where, model in models.items():
        index, nest, profile = where[0], where[1:-1], where[-1]
        assert index is not None
        tools[index] = _with_model(tools[index], [i for i in nest if i is not None], profile, model)
    return {**body, "tools": tools}


def _with_model(tool: dict[str, Any], nest: list[int], profile: int | None, model: str) -> dict[str, Any]:
    if tool.get("type") not in (*OPENROUTER_TYPES, FUSION_TYPE):
        return {**tool, "model": model}
    settings = dict(tool.get("parameters") or {})
    if tool.get("type") == FUSION_TYPE and profile is not None:  # a panel model
        panel = list(settings["analysis_models"])
        panel[profile] = model
        settings["analysis_models"] = panel
    elif nest:
        inner = list(settings["tools"])
        inner[nest[0]] = _with_model(inner[nest[0]], nest[1:], profile, model)
        settings["tools"] = inner
    elif profile is None:
        settings["model"] = model
    else:
        roster = list(settings["advisors"])
        roster[profile] = {**roster[profile], "model": model}
        settings["advisors"] = roster
    return {**tool, "parameters": settings}


def without_advisor_tools(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """``body`` without its advisor tools (a fallback attempt's reservation: the advisor's uses are
    the request's, reserved once)."""
    tools = body.get("tools") if isinstance(body, dict) else None
    if body is None or not isinstance(tools, list):
        return body
    kept = [
        t
        for t in tools
        if not (
            isinstance(t, dict)
            and isinstance(t.get("type"), str)
            and (t["type"].startswith(ANTHROPIC_TYPE) or t["type"] in (*OPENROUTER_TYPES, FUSION_TYPE))
        )
    ]
    return body if len(kept) == len(tools) else {**body, "tools": kept}


def reserved_uses(tool: AdvisorTool) -> int:
    """The consultations an advisor tool's reservation counts: its ``max_uses``, else
    ``ADVISOR_USES_RESERVED``."""
    return tool.max_uses if tool.max_uses is not None else ADVISOR_USES_RESERVED


def advisors_by_tool(found: AdvisorTools) -> dict[tuple[int, ...], list[AdvisorTool]]:
    """The advisors of each tool (by index, and nested indices for a tool in an advisor's
    ``parameters.tools``): an ``openrouter:advisor`` tool's profiles share its consultations (each
    consultations are its own, reserved besides; so is each member of an ``openrouter:fusion``
    tool's panel and its judge (every one runs at each invocation)."""
    grouped: dict[tuple[int, ...], list[AdvisorTool]] = {}
    for tool in (*found.tools, *found.reserved_only):
        member = () if not tool.fusion else (-1,) if tool.profile is None else (-2 - tool.profile,)
        grouped.setdefault((tool.index, *tool.nest, *member), []).append(tool)
    return grouped


# -- Anthropic's executor/advisor pairs ------------------------------------------------------------

# Capability by family, as Anthropic ranks them (Mythos shares Fable's specs).
_FAMILY_RANK = {"haiku": 0, "sonnet": 1, "opus": 2, "fable": 3, "mythos": 3}
# The advisor models Anthropic's compatibility table names (read November 2026): Opus from 4.7,
# Fable, Mythos. A Sonnet advisor is not known valid, nor an older Opus; Haiku never advises.
_ADVISOR_FAMILIES = frozenset({"opus", "fable", "mythos"})
_MIN_OPUS_ADVISOR = (4, 7)
_CLAUDE = re.compile(r"^claude-(haiku|sonnet|opus|fable|mythos)-(\d{1,2})(?:[-.](\d{1,2}))?$")


def capability(model: str) -> tuple[str, int, tuple[int, int]] | None:
    """(family, rank, version) of a Claude model's name (``claude-opus-4-8``, dated, Vertex's
    ``@date``, OpenRouter's ``anthropic/`` prefix and dots too), or None when the name is not read."""
    name = base_model(model.rsplit("/", 1)[-1].split("@", 1)[0]).lower()
    m = _CLAUDE.match(name)
    if m is None:
        return None
    family = m[1]
    return family, _FAMILY_RANK[family], (int(m[2]), int(m[3] or 0))


def pair_known_invalid(executor: str, advisor: str) -> bool:
    """Anthropic rejects this pair, by its rule (the advisor at least as capable as the executor):
    a Haiku advisor, or one of a lower family, or of the same family and an older version."""
    theirs, ours = capability(advisor), capability(executor)
    if theirs is None:
        return False
    if theirs[0] == "haiku":
        return True
    return ours is not None and (theirs[1], theirs[2]) < (ours[1], ours[2])


def pair_known_valid(executor: str, advisor: str) -> bool:
    """Anthropic's compatibility table accepts this pair: an advisor of its advisor families (Opus
    from 4.7, Fable, Mythos) at least as capable as the executor, both names read."""
    theirs, ours = capability(advisor), capability(executor)
    if theirs is None or ours is None or theirs[0] not in _ADVISOR_FAMILIES:
        return False
    if theirs[0] == "opus" and theirs[2] < _MIN_OPUS_ADVISOR:
        return False
    return (theirs[1], theirs[2]) >= (ours[1], ours[2])


def _cap(value: Any) -> int | None:
    """A positive integer cap, or None (unset, null, not one)."""
    return value if type(value) is int and value > 0 else None
