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

Pure: no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def _cap(value: Any) -> int | None:
    """A positive integer cap, or None (unset, null, not one)."""
    return value if type(value) is int and value > 0 else None
