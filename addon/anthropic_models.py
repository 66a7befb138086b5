"""The models an Anthropic Messages call runs besides its ``model``: the advisor tool's, and the
server-side fallbacks'.

The advisor tool (``{"type": "advisor_20260301", "name": "advisor", "model": ..., "max_tokens"?,
"max_uses"?}`` in ``tools``, beta ``advisor-tool-2026-03-01``) has the executor (the call's model)
consult the advisor model mid-request, server-side: each consultation reads the whole transcript
and writes up to the tool's ``max_tokens``, at most ``max_uses`` times. Its tokens are reported in
``usage.iterations`` (``advisor_message`` entries naming the advisor), left out of the top-level
usage, and billed at the advisor's rates. So the tool's model is held to the allowlist as the call's
is (``advisor_tools``; a downgrade writes the target in as ``tools[i].model``, ``with_advisor_models``),
its consultations reserved at its rates (``reserved_uses``), and its tokens metered on a row of their
own (``iteration_rows``), as the Responses ``image_generation`` tool's images are (addon.image_tool).

A fallback-served answer (``fallbacks``, beta ``server-side-fallback-2026-07-01``; read as a
fallback list by ``addon.providers.anthropic_api.fallback_models``) is priced at the model that
served it (the row's ``model_reported``); the hops that declined before it, when the top-level
usage counts them, get a row each at their own model's rates. Pure: no mitmproxy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from addon.model_rules import base_model
from addon.pricing import SUBSCRIPTION
from addon.record import CallRecord
from addon.usage import Iterations, Usage

ADVISOR_TYPE = "advisor_"  # how the advisor tool's versioned type starts (advisor_20260301)
MAX_ADVISOR_TOOLS = 64  # advisor tools read in one request (more: the tools cannot all be checked)
MAX_MODEL_NAME = 256  # characters of one model name (a longer one is no model id)
# Consultations reserved for an advisor tool that sets no max_uses: a bound, not a cap (Anthropic
# documents none); with max_uses set, that many.
ADVISOR_USES_RESERVED = 3
FLAVOR = "messages"  # an advisor's or a declined hop's tokens are a Messages inference's
ADVISOR_NOTE = "the advisor tool's tokens (usage.iterations advisor_message) of call"
DECLINED_NOTE = "the tokens of a hop that declined (server-side fallback, usage.iterations) of call"
_COUNTS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
    "web_searches",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "cache_audio_read_tokens",
    "file_searches",
    "audio_seconds",
)


@dataclass(frozen=True, slots=True)
class AdvisorTool:
    """One advisor tool of a request: its index in ``tools``, its model, its caps (None: unset)."""

    index: int
    model: str
    max_tokens: int | None = None
    max_uses: int | None = None


@dataclass(frozen=True, slots=True)
class AdvisorTools:
    """A request's advisor tools, and why they cannot all be read, if they cannot."""

    tools: tuple[AdvisorTool, ...] = ()
    error: str | None = None


def advisor_tools(body: Any) -> AdvisorTools:
    """The advisor tools of a Messages request body (``tools`` entries whose ``type`` starts with
    ``advisor_``). A tool naming no model (or not a string) makes the list unreadable. Never raises."""
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return AdvisorTools()
    found: list[AdvisorTool] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if not (isinstance(kind, str) and kind.startswith(ADVISOR_TYPE)):
            continue
        if len(found) >= MAX_ADVISOR_TOOLS:
            return AdvisorTools(tuple(found), f"it has more than {MAX_ADVISOR_TOOLS} advisor tools")
        model = tool.get("model")
        if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
            return AdvisorTools(tuple(found), f"tool {index + 1} ({kind}) names no model")
        found.append(AdvisorTool(index, model, _cap(tool.get("max_tokens")), _cap(tool.get("max_uses"))))
    return AdvisorTools(tuple(found))


def with_advisor_models(body: dict[str, Any], models: Mapping[int, str]) -> dict[str, Any]:
    """A new body whose advisor tools at the indices of ``models`` name those models (every other
    member, and every other tool, kept)."""
    if not models:
        return body
    tools = list(body["tools"])
    for index, model in models.items():
        tools[index] = {**tools[index], "model": model}
    return {**body, "tools": tools}


def reserved_uses(tool: AdvisorTool) -> int:
    """The consultations an advisor tool's reservation counts: its ``max_uses``, else
    ``ADVISOR_USES_RESERVED``."""
    return tool.max_uses if tool.max_uses is not None else ADVISOR_USES_RESERVED


def iteration_rows(
    parent: CallRecord,
    found: Iterations | None,
    row_ids: Sequence[str],
    sent: Mapping[str, tuple[str, str, str]] | None = None,
) -> list[CallRecord]:
    """The rows of what a call's ``usage.iterations`` bill apart from its top-level usage: each
    advisor model's tokens, then each declined hop's model's (ids from ``row_ids``, in that order).
    The call's attribution, status and timing; that model's name and tokens (an advisor entry
    naming none: the advisor as sent, the only one; else unnamed, unpriced). ``sent`` maps the base
    name of an advisor model as let through to (requested, sent, action): its row says the decision
    (a downgrade). Unpriced: the store's pricer prices them at that model's rates."""
    if found is None:
        return []
    rows: list[CallRecord] = []
    only = next(iter(sent.values()))[1] if sent is not None and len(sent) == 1 else None
    for (model, usage), row_id in zip(found.advisors, row_ids, strict=False):
        named = model or only
        requested, to, action = named, named, "allowed"
        if sent is not None and named is not None and base_model(named) in sent:
            requested, to, action = sent[base_model(named)]
        rows.append(
            _child_row(parent, row_id, usage, requested, to, named, action, f"{ADVISOR_NOTE} {parent.id}")
        )
    for (model, usage), row_id in zip(found.declined, row_ids[len(found.advisors) :], strict=False):
        note = f"{DECLINED_NOTE} {parent.id}: billed at its own model's rates"
        rows.append(_child_row(parent, row_id, usage, model, model, model, parent.action, note))
    return rows


def row_count(found: Iterations | None) -> int:
    """How many rows ``iteration_rows`` makes of ``found``."""
    return 0 if found is None else len(found.advisors) + len(found.declined)


def _child_row(
    parent: CallRecord,
    row_id: str,
    usage: Usage,
    requested: str | None,
    sent: str | None,
    reported: str | None,
    action: str,
    note: str,
) -> CallRecord:
    row = dataclasses.replace(
        parent,
        id=row_id,
        api_flavor=FLAVOR,
        model_requested=requested,
        model_sent=sent,
        model_reported=reported,
        action=action,
        ttft_ms=None,
        service_tier=None,
        cost_usd=None,
        price_status=None,
        price_source=None,
        price_model=None,
        usage_source="none",
        error=note[:1000],
        **dict.fromkeys(_COUNTS),  # type: ignore[arg-type]
    )
    row.set_usage(usage, "reported")
    if parent.price_status == SUBSCRIPTION:  # a flat-fee plan's call: its advisor too
        row.cost_usd, row.price_status, row.price_source = Decimal(0), SUBSCRIPTION, parent.price_source
    return row


def _cap(value: Any) -> int | None:
    """A positive integer cap, or None (unset, null, not one)."""
    return value if type(value) is int and value > 0 else None
