"""The Responses API's ``image_generation`` tool: its model checked as any model is, and the images
it wrote billed on a row of their own.

The tool names its image model in the request (``tools[i].model``; the server's default when it
names none, ``DEFAULT_IMAGE_TOOL_MODEL``). It is held to the environment's allowlist like the call's
own model: allowed, downgraded by writing an image model in as ``tools[i].model`` (only that value
changes), or the call refused. Where models are restricted, a tool naming none has its default
checked and written in (or its downgrade target), so the server never picks a model unchecked.
On Azure the tool's ``model`` (or, when it names none, the ``x-ms-oai-image-generation-deployment``
header) names a deployment: checked as the model policies.yaml ``azure_deployments`` maps it to, a
downgrade writing the deployment serving its target where the deployment was named.

OpenAI bills the tool's images apart from the response's ``usage`` (the text model's tokens), at the
image model's rates. A response whose tool wrote images is therefore two rows: the call's own (its
text model's usage) and one for the images, ``api_flavor`` ``images``, priced at the tool's model,
with the call's attribution: the response's ``tool_usage.image_gen`` when it reports one, else
OpenAI's per-image table (``openai_media.image_tool_usage``). Each model's spend is then at its own
rates in every report, and the budgets count the images as they are billed. Pure: no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from addon.enforcement import Decision
from addon.model_rules import base_model
from addon.pricing import PRICED, SUBSCRIPTION, UNKNOWN_MODEL, Pricer
from addon.providers.fallback_lists import object_at, with_at, written
from addon.providers.openai_api import MAX_TOOL_MODEL_NAME
from addon.providers.openai_media import (
    DEFAULT_IMAGE_TOOL_MODEL,
    RESERVATION_IMAGE_MODEL,
    ImageTool,
    image_tool_usage,
    image_tools,
    model_name,
    with_image_tool_models,
)
from addon.record import CallRecord, billed_apart
from addon.usage import ToolImages

FLAVOR = "images"  # the tool's images are billed as an image model's (its rates, its name)
UNREADABLE = (
    "the image_generation tool's model could not be read, so it cannot be checked against the allowlist"
)
ROW_NOTE = "the image_generation tool's images of call"  # how a tool's images row's error starts
# The names of image models (GPT image models, ChatGPT's): the only downgrade targets a tool can run.
IMAGE_MODEL_PREFIXES = ("gpt-image", "chatgpt-image")


def is_image_model(model: str) -> bool:
    """Is ``model`` an image model a tool can run (``gpt-image-*``, ``chatgpt-image-*``)?"""
    return base_model(model).startswith(IMAGE_MODEL_PREFIXES)


@dataclass(frozen=True, slots=True)
class ImageToolCall:
    """What the proxy let a request's (first) image tool run: the model it asked for (the default
    when it named none), the one sent upstream, the decision (allowed, downgraded), the tool, and
    the same of its SVG author model."""

    requested: str
    sent: str
    action: str
    tool: ImageTool
    # Its SVG author (``svg.model``) as let through, if it names one: (requested, sent, action).
    svg: tuple[str, str, str] | None = None
    # Azure: the deployment sent (in ``tools[i].model`` or the image deployment header), serving
    # ``sent`` (``requested``/``sent`` are then the models the deployments serve).
    deployment: str | None = None


# Characters of a model name (the tool's bound on one read: longer is unreadable), quality or size
# kept with a background response: call_to_json shortens to it, call_from_json rejects beyond it.
_MAX_KEPT = MAX_TOOL_MODEL_NAME


def _short(value: Any) -> str | None:
    """``value`` if it is a string of at most ``_MAX_KEPT`` characters, else None."""
    return value if isinstance(value, str) and len(value) <= _MAX_KEPT else None


def _cut(value: str | None) -> str | None:
    """``value`` shortened to ``_MAX_KEPT`` characters: what ``_short`` reads back (a policy's
    downgrade target is not bounded by what the tool named)."""
    return value[:_MAX_KEPT] if value is not None else None


def call_to_json(call: ImageToolCall) -> dict[str, Any]:
    """What a background response's pending entry keeps of its image tool call (``call_from_json``
    reads it back): short strings and the tool's index, never a prompt or an image."""
    tool = call.tool
    return {
        "requested": _cut(call.requested),
        "sent": _cut(call.sent),
        "action": call.action,
        "index": tool.index,
        "model": _cut(tool.model),
        "quality": _short(tool.quality),
        "size": _short(tool.size),
        "svg": [_cut(one) for one in call.svg] if call.svg is not None else None,
        "deployment": _cut(call.deployment),
    }


def call_from_json(value: Any) -> ImageToolCall | None:
    """The image tool call ``call_to_json`` kept (another version may have written it): None when
    it is not one. Never raises."""
    if not isinstance(value, dict):
        return None
    requested, sent, action = (_short(value.get(name)) for name in ("requested", "sent", "action"))
    index, model = value.get("index"), value.get("model")
    if not (requested and sent and action in ("allowed", "downgraded")) or type(index) is not int:
        return None
    if model is not None and not _short(model):
        return None
    tool = ImageTool(index, model, True, _short(value.get("quality")), _short(value.get("size")))
    svg, deployment = _svg_from_json(value.get("svg")), (_short(value.get("deployment")) or None)
    return ImageToolCall(requested, sent, action, tool, svg, deployment)  # type: ignore[arg-type]


def _svg_from_json(value: Any) -> tuple[str, str, str] | None:
    """The SVG author decision ``call_to_json`` kept, else None (its row then says what it reports)."""
    if not isinstance(value, list) or len(value) != 3:
        return None
    requested, sent, action = (_short(one) for one in value)
    if not (requested and sent and action in ("allowed", "downgraded")):
        return None
    return requested, sent, action


@dataclass(slots=True)
class ToolRules:
    """The allowlist applied to a request's image tools: the models to write in (index in ``tools``
    -> model), the call of its first image tool, the downgrade notices, a refusal if one is refused."""

    changes: dict[int, str] = field(default_factory=dict)
    svg_changes: dict[int, str] = field(default_factory=dict)  # index -> SVG author model to write in
    call: ImageToolCall | None = None
    notices: list[str] = field(default_factory=list)
    refusal: Decision | None = None
    refused_model: str | None = None  # the model the refusal names
    svg_calls: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # index -> SVG author's
    # Azure: the deployment to write into the image deployment header (a downgrade of the one it named)
    header: str | None = None
    # Azure: index -> the model the tool's deployment serves (as sent), for its reservation only
    reserved: dict[int, str] = field(default_factory=dict)
    # A LiteLLM fallback object's ``tools`` with its image tools' downgrades written in, by where
    # the object is (``Fallbacks.tool_objects``): ``with_tool_rules`` writes them into the body.
    objects: dict[tuple[str | int, ...], list[Any]] = field(default_factory=dict)


class ModelDecider(Protocol):
    """What the tool rules ask of the enforcer (``addon.enforcement.Enforcer``)."""

    def decide_model(self, provider: str, environment: str, model: str | None) -> Decision: ...

    def refuse_model(self, provider: str, environment: str, model: str, reason: str) -> Decision: ...


DEFAULT_MODEL_PROVIDER = "openai"  # whose default DEFAULT_IMAGE_TOOL_MODEL is
AZURE = "azure"  # whose tools[i].model names a deployment, as its image deployment header does
# Azure's request header naming the deployment a tool naming no model runs.
DEPLOYMENT_HEADER = "x-ms-oai-image-generation-deployment"


def rule_image_tools(
    enforcer: ModelDecider,
    provider: str,
    environment: str,
    tools: Sequence[ImageTool],
    restricted: bool,
    tool_choice_none: bool = False,
    deployments: Mapping[str, str] | None = None,
    header: str | None = None,
) -> ToolRules:
    """Each image tool's model through the allowlist (``Enforcer.decide_model``: no budget, no rate
    limit: the call's own decision counts those). One whose model cannot be read is refused where
    models are ``restricted`` (fail closed). A tool naming none runs the server's default
    (``DEFAULT_IMAGE_TOOL_MODEL``), which the server may change: where models are ``restricted``
    that default is checked and written in as ``tools[i].model`` when allowed (the target when
    downgraded), so the server never runs a model the proxy did not check; elsewhere it runs as it
    is. Under ``tool_choice_none`` (the request's ``tool_choice: "none"``) a tool naming none cannot
    run: neither refused nor rewritten.
    Elsewhere than OpenAI the default is unknown here: a tool naming none is refused where models
    are ``restricted``, save on Azure when the request's ``DEPLOYMENT_HEADER`` (``header``) names
    the deployment it runs. On Azure ``tools[i].model`` and that header name deployments: each is
    checked as the model ``deployments`` (policies.yaml ``azure_deployments``) maps it to (an
    unmapped name as itself), and a downgrade writes the deployment serving its target where the
    deployment was named (``changes``, or ``header``), refused when no deployment serves it.
    A disallowed model is downgraded (its target written in) or refused, saying it is the tool's;
    a target that is no image model (a catch-all's text model) counts as none: refused."""
    rules = ToolRules()
    for tool in tools:
        model = tool.runs
        if not _rule_svg_author(enforcer, provider, environment, tool, restricted, rules):
            return rules
        if tool.model is None and tool.readable and tool_choice_none:  # it cannot run: left as it is
            continue
        if provider == AZURE and tool.readable and (tool.model is not None or header is not None):
            in_header = tool.model is None
            deployment = tool.model if tool.model is not None else model_name(header)
            if deployment is None:  # a header that is no deployment's name
                if restricted:
                    why = f"the {DEPLOYMENT_HEADER} header could not be read as a deployment's name"
                    rules.refusal = enforcer.refuse_model(provider, environment, "(unreadable)", why)
                    rules.refused_model = "(unreadable)"
                    return rules
                continue
            if not _rule_azure_tool(
                enforcer, environment, tool, deployment, in_header, deployments or {}, rules
            ):
                return rules
            continue
        if tool.model is None and tool.readable and restricted and provider != DEFAULT_MODEL_PROVIDER:
            # Azure without its image deployment header, another API: its own default, unknown here.
            why = f"the image_generation tool names no model, and on {provider} the one it runs is not known"
            rules.refusal = enforcer.refuse_model(provider, environment, "(unnamed)", f"{why}: name it")
            rules.refused_model = "(unnamed)"
            return rules
        if model is None:
            if restricted:
                rules.refusal = enforcer.refuse_model(provider, environment, "(unreadable)", UNREADABLE)
                rules.refused_model = "(unreadable)"
                return rules
            continue
        decision = enforcer.decide_model(provider, environment, model)
        if decision.refusal is not None:
            why = "the image_generation tool's model"
            if tool.model is None:
                why += f": the tool names none, and {model} is its default"
            rules.refusal = enforcer.refuse_model(provider, environment, model, why)
            rules.refused_model = model
            return rules
        target = decision.model_sent if decision.action == "downgraded" else None
        if target and not is_image_model(target):  # a catch-all's text model: the tool cannot run it
            why = f"the image_generation tool's model: its downgrade target {target} is not an image model"
            rules.refusal = enforcer.refuse_model(provider, environment, model, why)
            rules.refused_model = model
            return rules
        sent = model
        if decision.action == "downgraded" and decision.model_sent:
            sent = decision.model_sent
            rules.changes[tool.index] = sent
            if decision.notice:
                rules.notices.append(f"image_generation tool: {decision.notice}")
        elif tool.model is None and restricted:  # the default as checked, pinned: never another one
            rules.changes[tool.index] = model
        if rules.call is None:
            action = "downgraded" if sent != model else "allowed"
            rules.call = ImageToolCall(model, sent, action, tool, rules.svg_calls.get(tool.index))
    return rules


def _rule_azure_tool(
    enforcer: ModelDecider,
    environment: str,
    tool: ImageTool,
    deployment: str,
    in_header: bool,
    deployments: Mapping[str, str],
    rules: ToolRules,
) -> bool:
    """An Azure tool's ``deployment`` (named in ``tools[i].model``, or in the image deployment
    header when ``in_header``) checked as the model ``deployments`` maps it to (an unmapped name as
    itself): allowed; downgraded by writing the deployment serving the target where it was named
    (refused when none does, or the target is no image model); or refused (False)."""
    model = deployments.get(deployment, deployment)
    where = f"the {DEPLOYMENT_HEADER} header's deployment" if in_header else "the tool's deployment"
    why = f"the image_generation tool's model ({where} {deployment}"
    why += f", serving {model})" if model != deployment else ")"
    decision = enforcer.decide_model(AZURE, environment, model)
    target = decision.model_sent if decision.action == "downgraded" else None
    written = None
    if decision.refusal is None and target and target != model:
        if not is_image_model(target):  # a catch-all's text model: the tool cannot run it
            why += f": its downgrade target {target} is not an image model"
        else:
            written = next((name for name, served in deployments.items() if served == target), None)
            if written is None:
                why += f": no Azure deployment serves its downgrade target {target}"
                why += " (policies.yaml azure_deployments)"
    if decision.refusal is not None or (target and target != model and written is None):
        rules.refusal = enforcer.refuse_model(AZURE, environment, model, why)
        rules.refused_model = model
        return False
    sent, sent_deployment = model, deployment
    if written is not None and target is not None:
        sent, sent_deployment = target, written
        if in_header:
            rules.header = written
        else:
            rules.changes[tool.index] = written
        if decision.notice:
            rules.notices.append(f"image_generation tool: {decision.notice} (deployment {written})")
    rules.reserved[tool.index] = sent
    if rules.call is None:
        action = "downgraded" if sent != model else "allowed"
        svg = rules.svg_calls.get(tool.index)
        rules.call = ImageToolCall(model, sent, action, tool, svg, sent_deployment)
    return True


SVG_UNREADABLE = (
    "the image_generation tool's SVG author model (tools[i].svg.model) could not be read, so it "
    "cannot be checked against the allowlist"
)


def _rule_svg_author(
    enforcer: ModelDecider,
    provider: str,
    environment: str,
    tool: ImageTool,
    restricted: bool,
    rules: ToolRules,
) -> bool:
    """The tool's SVG author model (``svg.model``, a text model writing the SVG) through the
    allowlist: allowed, downgraded (its target, if no image model, written in as ``svg.model``), or
    refused (``rules.refusal`` set: False). One that cannot be read is refused where ``restricted``."""
    if not tool.svg_readable:
        if restricted:
            rules.refusal = enforcer.refuse_model(provider, environment, "(unreadable)", SVG_UNREADABLE)
            rules.refused_model = "(unreadable)"
            return False
        return True
    model = tool.svg_model
    if model is None:
        return True
    decision = enforcer.decide_model(provider, environment, model)
    target = decision.model_sent if decision.action == "downgraded" else None
    why = "the image_generation tool's SVG author model (tools[i].svg.model)"
    if target and is_image_model(target):
        why += f": its downgrade target {target} is an image model, not an SVG author"
    elif decision.refusal is None:
        rules.svg_calls[tool.index] = (model, model, "allowed")
        if target and target != model:
            rules.svg_changes[tool.index] = target
            rules.svg_calls[tool.index] = (model, target, "downgraded")
            if decision.notice:
                rules.notices.append(f"image_generation tool's SVG author: {decision.notice}")
        return True
    rules.refusal = enforcer.refuse_model(provider, environment, model, why)
    rules.refused_model = model
    return False


def tool_row(
    parent: CallRecord, found: ToolImages | None, call: ImageToolCall | None, row_id: str
) -> CallRecord | None:
    """The row of the images the call ``parent`` had its image tool write (None when it wrote none
    OpenAI bills): the call's attribution, status and timing, ``api_flavor`` images, the tool's
    model (as the response echoes it, else as sent, else the default), the tool's usage (reported,
    or counted from OpenAI's table: its ``error`` says which, and names the call). Unpriced: the
    store's pricer prices it, at the image model's rates."""
    if found is None or not found.images_billed:
        return None
    sent = call.sent if call is not None else None
    model = found.model or sent or DEFAULT_IMAGE_TOOL_MODEL
    deployment = call.deployment if call is not None else None
    if deployment is not None and found.model in (None, deployment):  # Azure: the model it serves
        model = sent or model
    usage, source, note = image_tool_usage(found, model, call.tool if call is not None else None)
    notes = [f"{ROW_NOTE} {parent.id}: {note}"]
    if found.model is None and sent is None:
        notes.append(f"the request names no image_generation tool: priced as {model}, the tool's default")
    elif deployment is not None:
        notes.append(f"priced as {model}, the model Azure deployment {deployment} serves")
    elif found.model is None and call is not None and call.tool.model is None:
        unpriced = " (genai-prices has no price for it)" if model == DEFAULT_IMAGE_TOOL_MODEL else ""
        notes.append(f"the tool names no model: priced as {model}, its default{unpriced}")
    if found.failed:
        notes.append(f"{found.failed} image call(s) wrote no image: not billed")
    row = billed_apart(
        parent,
        row_id,
        FLAVOR,
        requested=call.requested if call is not None else model,
        sent=sent or model,
        reported=model if deployment is not None and found.model == deployment else found.model,
        action=call.action if call is not None else "allowed",
        note="; ".join(notes),
        inference_geo=None,
    )
    row.set_usage(usage, source)
    if parent.price_status == SUBSCRIPTION:  # a flat-fee plan's call: its images too
        row.cost_usd, row.price_status, row.price_source = Decimal(0), SUBSCRIPTION, parent.price_source
    return row


def price_unpriced_images(record: CallRecord, pricer: Pricer) -> None:
    """A tool's images row (``tool_row``'s) that ``pricer`` left ``unknown_model`` (the tool's
    default, which genai-prices has no price for, or another image model without a price): priced
    at ``RESERVATION_IMAGE_MODEL``'s rates, as its reservation was, so budgets do not count it $0.
    Its ``usage_source`` is then ``estimated`` and its ``error`` says so. Any other row: untouched."""
    if record.api_flavor != FLAVOR or record.price_status != UNKNOWN_MODEL:
        return
    if not (record.error or "").startswith(ROW_NOTE) or "/responses" not in record.path:
        return  # an Images API row (its error is upstream's words): never this
    p = pricer.price_usage(
        record.provider,
        (RESERVATION_IMAGE_MODEL,),
        record.usage,
        record.ts,
        record.status_code,
        record.service_tier,
        record.inference_geo,
    )
    if p.status != PRICED:
        return
    unpriced = record.model_reported or record.model_sent
    record.cost_usd, record.price_status, record.price_source, record.price_model = (
        p.cost_usd,
        p.status,
        p.source,
        p.model,
    )
    record.usage_source = "estimated"
    why = f"no price for {unpriced}: priced at {RESERVATION_IMAGE_MODEL}'s rates, as reserved (an estimate)"
    record.error = f"{record.error}; {why}"[:1000]


SVG_FLAVOR = "responses"  # the SVG author is a text model: its tokens are a Responses call's


def svg_rows(
    parent: CallRecord, found: ToolImages | None, row_ids: Sequence[str], call: ImageToolCall | None = None
) -> list[CallRecord]:
    """The rows of the tokens the tool's SVG author model(s) spent (each image call's
    ``svg_usage``, summed per model, one row each, ids from ``row_ids``): the call's attribution,
    status and timing, that model's name, its reported tokens. The row of the model ``call``'s SVG
    author was sent as (its undated name) says the model requested and the decision (a downgrade);
    another, the model reported, allowed. Unpriced: the store's pricer prices them at that model's
    (text) rates."""
    if found is None:
        return []
    rows = []
    for (model, usage), row_id in zip(found.svg, row_ids, strict=False):
        requested, sent, action = model, model, "allowed"
        if call is not None and call.svg is not None and base_model(model) == base_model(call.svg[1]):
            requested, sent, action = call.svg
        row = billed_apart(
            parent,
            row_id,
            SVG_FLAVOR,
            requested=requested,
            sent=sent,
            reported=model,
            action=action,
            note=f"the image_generation tool's SVG author tokens (svg_usage) of call {parent.id}",
            inference_geo=None,
        )
        row.set_usage(usage, "reported")
        if parent.price_status == SUBSCRIPTION:
            row.cost_usd, row.price_status, row.price_source = Decimal(0), SUBSCRIPTION, parent.price_source
        rows.append(row)
    return rows


@dataclass(frozen=True, slots=True)
class _InFallbackObject:
    """The enforcer, its refusals saying the tool is in the fallback object written at ``place``."""

    enforcer: ModelDecider
    place: str

    def decide_model(self, provider: str, environment: str, model: str | None) -> Decision:
        return self.enforcer.decide_model(provider, environment, model)

    def refuse_model(self, provider: str, environment: str, model: str, reason: str) -> Decision:
        return self.enforcer.refuse_model(
            provider, environment, model, f"{reason}, in its {self.place} object"
        )


def rule_fallback_object_tools(
    rules: ToolRules,
    enforcer: ModelDecider,
    provider: str,
    environment: str,
    body: Mapping[str, Any] | None,
    places: Sequence[tuple[str | int, ...]],
    restricted: bool,
    deployments: Mapping[str, str] | None = None,
) -> ToolRules:
    """``rules`` (the request's own image tools') with the image tools of the LiteLLM fallback
    objects written at ``places`` (``Fallbacks.tool_objects``) held to the allowlist as well: an
    object's ``tools`` replace the call's for its attempt (and the list's later ones), so each is
    ruled as the request's are (``rule_image_tools``), save that ``tool_choice: "none"`` is not
    trusted to keep a tool naming no model from running (the attempt may run with another
    object's ``tool_choice``), nor is an Azure image deployment header. A downgrade is written
    into the object (``rules.objects``, with a notice); a refusal refuses the call. Unchanged once
    ``rules`` refuses."""
    for place in places:
        if rules.refusal is not None:
            return rules
        holder = object_at(body, place)
        tools = image_tools(holder) if isinstance(holder, dict) else ()
        if not tools:
            continue
        where = written(place)
        found = rule_image_tools(
            _InFallbackObject(enforcer, where), provider, environment, tools, restricted, False, deployments
        )
        if found.refusal is not None:
            rules.refusal, rules.refused_model = found.refusal, found.refused_model
            return rules
        if found.changes or found.svg_changes:
            assert isinstance(holder, dict)
            rules.objects[place] = with_image_tool_models(holder, found.changes, found.svg_changes)["tools"]
            rules.notices += [f"{where}: {notice}" for notice in found.notices]
    return rules


def with_tool_rules(body: dict[str, Any], rules: ToolRules) -> dict[str, Any]:
    """``body`` with the image tool models ``rules`` writes in: the request's own tools'
    (``with_image_tool_models``), then each fallback object's ``tools`` (``rules.objects``).
    ValueError where the request's tools are not as read."""
    new_body = body
    if rules.changes or rules.svg_changes:
        new_body = with_image_tool_models(new_body, rules.changes, rules.svg_changes)
    for place, tools in rules.objects.items():
        new_body = with_at(new_body, (*place, "tools"), tools)
    return new_body
