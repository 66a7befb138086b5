"""The models an Anthropic Messages call runs besides its ``model``: the advisor tool's, and the
server-side fallbacks'.

The advisor tool (``{"type": "advisor_20260301", "name": "advisor", "model": ..., "max_tokens"?,
"max_uses"?}`` in ``tools``, beta ``advisor-tool-2026-03-01``) has the executor (the call's model)
consult the advisor model mid-request, server-side: each consultation reads the whole transcript
and writes up to the tool's ``max_tokens``, at most ``max_uses`` times. Its tokens are reported in
``usage.iterations`` (``advisor_message`` entries naming the advisor), left out of the top-level
usage, and billed at the advisor's rates. So the tool's model is held to the allowlist as the call's
is and its consultations reserved at its rates (the request's side: addon.providers.advisors), and
its tokens metered on a row of their own (``iteration_rows``), as the Responses
``image_generation`` tool's images are (addon.image_tool).

A fallback-served answer (``fallbacks``, beta ``server-side-fallback-2026-07-01``; read as a
fallback list by ``addon.providers.anthropic_api.fallback_models``) is priced at the model that
served it (the row's ``model_reported``); the hops that declined before it, when the top-level
usage counts them, get a row each at their own model's rates. Pure: no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from addon.model_rules import base_model
from addon.pricing import SUBSCRIPTION
from addon.record import CallRecord, billed_apart
from addon.usage import Iterations, Usage

FLAVOR = "messages"  # an advisor's or a declined hop's tokens are a Messages inference's
ADVISOR_NOTE = "the advisor tool's tokens (usage.iterations advisor_message) of call"
DECLINED_NOTE = "the tokens of a hop that declined (server-side fallback, usage.iterations) of call"


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
    row = billed_apart(
        parent,
        row_id,
        FLAVOR,
        requested=requested,
        sent=sent,
        reported=reported,
        action=action,
        note=note,
        inference_geo=parent.inference_geo,  # run where the call ran
    )
    row.set_usage(usage, "reported")
    if parent.price_status == SUBSCRIPTION:  # a flat-fee plan's call: its advisor too
        row.cost_usd, row.price_status, row.price_source = Decimal(0), SUBSCRIPTION, parent.price_source
    return row
