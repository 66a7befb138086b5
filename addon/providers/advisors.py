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
model, so which model runs cannot be known from the request.

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

from addon.model_rules import base_model

ANTHROPIC_TYPE = "advisor_"  # how Anthropic's advisor tool's versioned type starts (advisor_20260301)
OPENROUTER_TYPE = "openrouter:advisor"
MAX_ADVISOR_TOOLS = 64  # advisor tools read in one request (more: the tools cannot all be checked)
MAX_MODEL_NAME = 256  # characters of one model name (a longer one is no model id)
# Consultations reserved for an advisor tool that sets no max_uses: a bound, not a cap (Anthropic
# documents none; OpenRouter's tool has no such setting); with max_uses set, that many.
ADVISOR_USES_RESERVED = 3


@dataclass(frozen=True, slots=True)
class AdvisorTool:
    """One advisor tool of a request: its index in ``tools``, its model, its caps (None: unset),
    and whether it is OpenRouter's (its model in ``parameters.model``)."""

    index: int
    model: str
    max_tokens: int | None = None
    max_uses: int | None = None
    openrouter: bool = False


@dataclass(frozen=True, slots=True)
class AdvisorTools:
    """A request's advisor tools, and why they cannot all be read, if they cannot."""

    tools: tuple[AdvisorTool, ...] = ()
    error: str | None = None


def advisor_tools(body: Any, *, openrouter: bool = False) -> AdvisorTools:
    """The advisor tools of a request body: Anthropic's (``tools`` entries whose ``type`` starts
    with ``advisor_``), and with ``openrouter`` OpenRouter's (``type`` ``openrouter:advisor``). A
    tool naming no model (or not a string) makes the list unreadable. Never raises."""
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return AdvisorTools()
    found: list[AdvisorTool] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if not isinstance(kind, str):
            continue
        if kind.startswith(ANTHROPIC_TYPE):
            settings: Any = tool
            model = tool.get("model")
            cap = _cap(tool.get("max_tokens"))
            nested = False
        elif openrouter and kind == OPENROUTER_TYPE:
            settings = tool.get("parameters")
            settings = settings if isinstance(settings, dict) else {}
            model = settings.get("model")
            cap = _cap(settings.get("max_completion_tokens"))
            nested = True
        else:
            continue
        if len(found) >= MAX_ADVISOR_TOOLS:
            return AdvisorTools(tuple(found), f"it has more than {MAX_ADVISOR_TOOLS} advisor tools")
        if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
            why = (
                " (its parameters.model is unset: the executor picks the advisor per consultation)"
                if nested
                else ""
            )
            return AdvisorTools(tuple(found), f"tool {index + 1} ({kind}) names no model{why}")
        uses = None if nested else _cap(settings.get("max_uses"))
        found.append(AdvisorTool(index, model, cap, uses, nested))
    return AdvisorTools(tuple(found))


def with_advisor_models(body: dict[str, Any], models: Mapping[int, str]) -> dict[str, Any]:
    """A new body whose advisor tools at the indices of ``models`` name those models (in
    ``model``, or an ``openrouter:advisor`` tool's ``parameters.model``; every other member, and
    every other tool, kept)."""
    if not models:
        return body
    tools = list(body["tools"])
    for index, model in models.items():
        tool = tools[index]
        if tool.get("type") == OPENROUTER_TYPE:
            tools[index] = {**tool, "parameters": {**(tool.get("parameters") or {}), "model": model}}
        else:
            tools[index] = {**tool, "model": model}
    return {**body, "tools": tools}


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
            and (t["type"].startswith(ANTHROPIC_TYPE) or t["type"] == OPENROUTER_TYPE)
        )
    ]
    return body if len(kept) == len(tools) else {**body, "tools": kept}


def reserved_uses(tool: AdvisorTool) -> int:
    """The consultations an advisor tool's reservation counts: its ``max_uses``, else
    ``ADVISOR_USES_RESERVED``."""
    return tool.max_uses if tool.max_uses is not None else ADVISOR_USES_RESERVED


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
