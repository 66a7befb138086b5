"""A call's budget reservation: what it may cost at most, as a function of the model it runs.

Input is counted from the request's size, output from its cap (else the model's recent p90 here)
for each answer it asks for, at the price where its path says it runs; image tools, SVG authors and
advisor tools add their own. A server-side fallback list reserves its entries too (``fallback_chain``
where each hop may be billed, ``dearest`` where one model answers). Pure functions of explicit inputs:
the Meter binds its pricer, output history and carried contexts (``Meter.cost_estimate``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from addon.carried_context import CarriedContexts
from addon.output_history import OutputHistory
from addon.pricing import Pricer
from addon.providers import Provider
from addon.providers.advisors import (
    Where,
    advisors_by_tool,
    reserved_uses,
    with_advisor_models,
    without_advisor_tools,
)
from addon.providers.anthropic_api import fallback_max_tokens, repeated_fallbacks
from addon.providers.fallback_lists import Fallbacks
from addon.providers.openai_api import CHAT_ONLY_PROVIDERS
from addon.providers.openai_media import (
    RESERVATION_IMAGE_MODEL,
    image_tool_tokens,
    reserved_image_tokens,
    reserved_input_image_tokens,
    svg_authors,
    with_image_tool_models,
)

if TYPE_CHECKING:
    from addon.image_tool import ToolRules
    from addon.request_decision import FallbackRules

log = logging.getLogger("tokometer")

Estimate = Callable[[str | None], Decimal]  # a call's reservation at the model it runs

# A budget reservation counts a request's bytes / 4 as input tokens (JSON makes that generous)
# and its max-tokens setting as output, for each answer it asks for (answers_asked); without one, the
# p90 of the model's recent outputs here (addon.output_history), never under this many.
BYTES_PER_TOKEN = 4
RESERVED_OUTPUT_TOKENS = 1000


def max_output_tokens(body: dict[str, Any] | None) -> int | None:
    """The output cap a request sets on each answer, in any provider's spelling (Gemini's in its
    JSON name or its proto field's, which Google's parsers take too), read at the largest positive
    whole number among them all: a body with two caps (chat's ``max_completion_tokens`` and older
    ``max_tokens``, a LiteLLM fallback object's overlaid on the request's; or a chat cap beside
    Responses' ``max_output_tokens``) may be obeyed at either by a server behind a gateway (OpenAI
    refuses the chat pair, 400 invalid_parameter_combination; a Responses server ignores
    ``max_tokens``, a field it does not define). Bedrock's InvokeModel bodies are the models' own:
    their caps are read too (``BEDROCK_NATIVE_CAPS``). None when no spelling holds one."""
    if not body:
        return None
    values = [body.get(name) for name in TOP_LEVEL_CAPS]
    for holder, names in NESTED_CAPS:
        config = body.get(holder)
        if isinstance(config, dict):
            values += [config.get(name) for name in names]
    # Gemini: either name of the field in either name of its holder
    values += gemini_config_values(body, "maxOutputTokens", "max_output_tokens")
    return max((value for value in values if type(value) is int and value > 0), default=None)


# Bedrock InvokeModel's native caps (the Bedrock user guide's inference parameters of each family;
# bedrock_api meters them all, by their bodies' usage or the X-Amzn-Bedrock-*-Token-Count headers):
# Meta Llama's ``max_gen_len``, AI21 Jurassic-2's ``maxTokens``, Anthropic's Text Completions
# (Claude v2, Instant) ``max_tokens_to_sample``; Amazon Nova's ``inferenceConfig.max_new_tokens``
# and Titan Text's ``textGenerationConfig.maxTokenCount``. Mistral, Cohere, AI21 Jamba, DeepSeek,
# Anthropic's Messages and the OpenAI-shaped ones spell it ``max_tokens``.
BEDROCK_NATIVE_CAPS = ("max_gen_len", "maxTokens", "max_tokens_to_sample")
TOP_LEVEL_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens", *BEDROCK_NATIVE_CAPS)
NESTED_CAPS = (
    ("inferenceConfig", ("maxTokens", "max_new_tokens")),  # Converse's; Nova's InvokeModel body's
    ("textGenerationConfig", ("maxTokenCount",)),  # Titan Text
)


def gemini_config_values(body: Mapping[str, Any], camel: str, snake: str) -> list[Any]:
    """The values of a Gemini generation config field, in every spelling Google's parsers take:
    either name of the field (JSON's ``camel``, the proto's ``snake``) in either name of the
    config (``generationConfig``, ``generation_config``)."""
    return [
        config[name]
        for config in (body.get("generationConfig"), body.get("generation_config"))
        if isinstance(config, Mapping)
        for name in (camel, snake)
        if config.get(name) is not None
    ]


# How many answers a call may write, each up to its output cap (the input is billed once):
# OpenAI's ``n`` (1 to 128, the API reference) in the chat shape on every provider that serves it
# (one that takes no n refuses the call or writes one answer: reserving n is the safe side), a
# legacy completion's ``best_of`` (up to 20, each written and billed, ``n`` of them returned), and
# on Bedrock's InvokeModel, where the body is the model's own (AI21 Jamba's ``n``; Cohere Command's
# ``num_generations``, 1 to 5, the Bedrock user guide's "Cohere Command models": Command R and R+
# document none); Gemini's ``generationConfig.candidateCount`` (1 to 8; Vertex's Gemini the same).
# Anthropic's Messages, Bedrock's Converse, OpenAI's Responses and Gemini's Interactions write one.
MAX_CHOICES = 128
# A legacy completion without max_tokens writes at most this many tokens an answer on OpenAI's own
# API and Azure's (the API reference: "Defaults to 16"); other servers' defaults vary.
LEGACY_COMPLETION_MAX_TOKENS = 16
MAX_BEST_OF = 20
MAX_CANDIDATES = 8
MAX_GENERATIONS = 5  # Cohere Command's num_generations on Bedrock
MAX_PROMPTS = 2048  # a legacy completion's prompts counted at most (each gets its own answers)
CHOICE_FLAVORS = frozenset({"chat", "completions", "invoke", "invoke_stream"})
CANDIDATE_FLAVORS = frozenset({"generate", "stream"})  # Gemini's generateContent (and Vertex's)
INVOKE_FLAVORS = frozenset({"invoke", "invoke_stream"})  # Bedrock's InvokeModel: the model's own body


def answer_count(value: Any, most: int) -> int:
    """One field's count of answers: 1 when absent (null), an integer at most ``most`` (at least
    1: the API refuses less), else ``most`` (``"8"``, ``8.0``: a server may read them as 8)."""
    if value is None:
        return 1
    if type(value) is int:
        return min(max(value, 1), most)
    return most


def answers_asked(flavor: str | None, body: Mapping[str, Any] | None) -> int:
    """How many answers a request of ``flavor`` asks for, for its reservation (see MAX_CHOICES)."""
    if not isinstance(body, Mapping):
        return 1
    if flavor in CHOICE_FLAVORS:
        each = max(answer_count(body.get("n"), MAX_CHOICES), answer_count(body.get("best_of"), MAX_BEST_OF))
        if flavor in INVOKE_FLAVORS:
            each = max(each, answer_count(body.get("num_generations"), MAX_GENERATIONS))
        return each * (prompt_count(body.get("prompt")) if flavor == "completions" else 1)
    if flavor in CANDIDATE_FLAVORS:
        counts = gemini_config_values(body, "candidateCount", "candidate_count")
        return max((answer_count(count, MAX_CANDIDATES) for count in counts), default=1)
    return 1


def prompt_count(prompt: Any) -> int:
    """How many prompts a legacy completion's ``prompt`` holds, each answered on its own (at most
    MAX_PROMPTS): a list of strings or of token-id lists, one each; anything else (a string, a
    flat list of token ids) is one."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return min(len(prompt), MAX_PROMPTS)
    return 1


def fallback_chain(
    first: Callable[[str | None], Decimal],
    others: Sequence[str],
    hop: Callable[[str | None], Decimal],
    capped: Mapping[int, Callable[[str | None], Decimal]],
    dropped: Callable[[str | None], Sequence[int]] = lambda sent: (),
    unread: bool = False,
) -> Callable[[str | None], Decimal]:
    """A server-side fallback chain's reservation: the model sent (``first``) and every entry of
    ``others`` after it (``hop``, or ``capped[i]`` where the entry sets its own output cap), each of
    which may be billed (a hop declines after writing, the next runs), but those the rewrite drops
    for the model sent (``dropped(sent)``: they are not sent). With ``unread`` (``"default"``, a
    list not read whole), one hop more at the dearest of the model sent and the entries read: the
    model Anthropic picks is not known. An upper bound: at most ``MAX_FALLBACK_MODELS`` entries
    are read."""

    def chained(model: str | None) -> Decimal:
        gone = set(dropped(model))
        hops = [capped.get(i, hop)(one) for i, one in enumerate(others) if i not in gone]
        if unread:
            hops.append(max([hop(model), *(hop(one) for i, one in enumerate(others) if i not in gone)]))
        return first(model) + sum(hops, Decimal(0))

    return chained


def dearest(
    estimate: Callable[[str | None], Decimal],
    others: Sequence[str],
    capped: Mapping[int, Callable[[str | None], Decimal]] | None = None,
) -> Callable[[str | None], Decimal]:
    """``estimate`` at the dearest of the model sent and ``others`` (a call may run on any); the
    ``others`` entry at index ``i`` by ``capped[i]`` where given (its own output cap)."""

    def dearest(model: str | None) -> Decimal:
        costs = [estimate(model)]
        costs += [(capped or {}).get(i, estimate)(one) for i, one in enumerate(others)]
        return max(costs)

    return dearest


def cost_estimate(
    pricer: Pricer,
    outputs: OutputHistory,
    contexts: CarriedContexts,
    entry: Provider | None,
    provider: str,
    size: int,
    body: dict[str, Any] | None,
    geo: str | None = None,
    image_request: Mapping[str, Any] | None = None,
    edited: int = 0,
    flavor: str | None = None,
) -> Callable[[str | None], Decimal]:
    """What a call may cost, for its budget reservation: input from the body's size, output
    from its max-tokens setting (else the p90 of what the model wrote in its recent calls here,
    never under ``RESERVED_OUTPUT_TOKENS``) for each answer a request of ``flavor`` asks for
    (``answers_asked``: OpenAI's ``n``, Gemini's ``candidateCount``, Cohere's ``num_generations``),
    at the price where the path says it runs. An image request (``image_request``: its JSON body
    or form fields) reserves the image tokens it asks for at the image output rate of the model
    sent, and an edit's ``edited`` input images
    at its image input rate, where OpenAI documents them; a Responses request with the
    ``image_generation`` tool, the images it may write at its image model's image output rate,
    and for each such tool naming an SVG author model (``svg.model``), the output that model may
    write (its p90 here: the request's cap is its text model's) at its text rate, for each call
    the tool may make.
    Only evaluated when a budget applies."""
    reads_advisors = entry

    def estimate(model: str | None) -> Decimal:
        tokens = size // BYTES_PER_TOKEN + contexts.carried(body)
        images = reserved_image_tokens(model, image_request) if image_request is not None else None
        if images is not None:
            seen = reserved_input_image_tokens(model, image_request, edited)
            return pricer.estimate(
                provider,
                model,
                tokens + seen,
                images,
                geo,
                output_image_tokens=images,
                input_image_tokens=seen,
            )
        # Each answer up to the cap; without one, what the model's answers here usually are.
        output = max_output_tokens(body)
        if output is None and flavor == "completions" and provider in CHAT_ONLY_PROVIDERS:
            output = LEGACY_COMPLETION_MAX_TOKENS  # OpenAI's default cap there
        output = output or outputs.reserved(provider, model)
        cost = pricer.estimate(provider, model, tokens, output * answers_asked(flavor, body), geo)
        tool = image_tool_tokens(body)
        if tool is not None:  # billed apart from the text model's usage, at the image model's rate
            image_model, image_tokens = tool
            images = pricer.estimate(provider, image_model, 0, image_tokens, output_image_tokens=image_tokens)
            if not images:  # a model without a price (the tool's default): a known image rate
                images = pricer.estimate(
                    provider, RESERVATION_IMAGE_MODEL, 0, image_tokens, output_image_tokens=image_tokens
                )
            cost += images
        authors, calls = svg_authors(body)
        for author in authors:  # the SVG author's tokens: a row of their own, at its text rates
            written = outputs.reserved(provider, author)  # the call's cap is its text model's
            cost += pricer.estimate(provider, author, 0, written * calls, geo)
        if reads_advisors is not None and reads_advisors.advisor_tools is not None:
            # Each consultation of an advisor tool reads the transcript and writes up to its
            # max_tokens (else its model's p90 here), at the advisor's rates: a row of its own.
            # An openrouter:advisor tool's named profiles share its consultations: the dearest.
            found = reads_advisors.advisor_tools(flavor or "", body)
            for advisors_of in advisors_by_tool(found).values():
                cost += max(
                    pricer.estimate(
                        provider,
                        advisor.model,
                        tokens,
                        advisor.max_tokens or outputs.reserved(provider, advisor.model),
                        geo,
                    )
                    * reserved_uses(advisor)
                    for advisor in advisors_of
                )
        return cost

    def estimate_or_text(model: str | None) -> Decimal:
        """Never raises: the policy decision it is part of must stand (a failure here used to
        let the call pass unchecked). Failing, the call reserves its text alone."""
        try:
            return estimate(model)
        except Exception:
            log.exception("tokometer: a call's reservation failed; it reserves its text alone")
        try:
            tokens = size // BYTES_PER_TOKEN
            return pricer.estimate(provider, model, tokens, RESERVED_OUTPUT_TOKENS, geo)
        except Exception:
            log.exception("tokometer: a call's reservation failed; it reserves nothing")
            return Decimal(0)

    return estimate_or_text


def reserved_body(
    body: dict[str, Any] | None, tools: ToolRules | None, advisor_models: Mapping[Where, str]
) -> dict[str, Any] | None:
    """The body a call's reservation prices: its image tools', SVG authors' and advisor tools'
    models as the allowlist sends them (``tools``; ``advisor_models``: place -> model written);
    ``body`` itself where none changes."""
    tool_models = tools.changes if tools is not None else {}
    svg_models = tools.svg_changes if tools is not None else {}
    reserved_models = {**tool_models, **tools.reserved} if tools is not None else {}
    priced = body
    if body is not None and (reserved_models or svg_models):  # reserved at the models sent
        priced = with_image_tool_models(body, reserved_models, svg_models)
    if priced is not None and advisor_models:  # reserved at the advisor models sent
        priced = with_advisor_models(priced, advisor_models)
    return priced


def with_fallback_lists(
    estimate: Estimate,
    priced: Callable[[dict[str, Any]], Estimate],
    body: dict[str, Any] | None,
    priced_body: dict[str, Any] | None,
    model: str | None,
    *,
    chain: bool,
    fallbacks: Fallbacks | None,
    ruled: FallbackRules | None,
    routing: Fallbacks | None,
    routed: FallbackRules | None,
    also: Sequence[str] = (),
) -> Estimate:
    """The request's reservation (``estimate``, of its ``priced_body``: at the tool and advisor
    models sent) with its fallback lists: Anthropic's server-side chain (``chain``: ``fallbacks``
    as the allowlist made them, ``ruled``) whose every hop may be billed, else OpenRouter's list at
    its dearest; then the lists beside it (``routing``, ruled ``routed``) and ``also`` (an Azure
    call's two models), at the dearest. ``priced(body)`` is the text estimate of a body (a hop)."""
    # Anthropic's server-side fallbacks: a chain whose every hop may be billed (a declined hop
    # that wrote output, then the next); OpenRouter's lists bill the one model that answers.
    unread = chain and fallbacks is not None and fallbacks.error is not None

    def hop_capped(found: Fallbacks | None) -> dict[int, Estimate]:
        """A LiteLLM fallback object's own output caps, ``n`` / ``best_of`` and ``tools`` are its
        attempt's (its members override the request's): that entry is reserved at them, its
        advisor and sub-agent tools on top of its hop at their own caps, as the request's."""
        return {
            i: priced({**priced_body, **dict(own)})
            for i, own in (found.hop_caps if found is not None else ())
            if priced_body is not None
        }

    if ruled is not None and (ruled.sent or unread) and chain and priced_body is not None:
        # Each hop reads the request and writes up to its own max_tokens (an entry's, else the
        # request's); the advisor's consultations are the request's, reserved once.
        hop_body = without_advisor_tools(priced_body) or priced_body
        hop = priced(hop_body)
        capped = {i: priced({**hop_body, "max_tokens": cap}) for i, cap in fallback_max_tokens(body).items()}
        listed, sent_list, changed = fallbacks.models if fallbacks else (), ruled.sent, ruled.changed

        def dropped_for(sent: str | None, asked: str | None = model) -> list[int]:
            """The entries the rewrite drops when the call runs ``sent`` (as it does)."""
            if not (sent != asked or changed) or unread:
                return []
            return repeated_fallbacks(asked, sent, listed, sent_list)

        estimate = fallback_chain(estimate, ruled.sent, hop, capped, dropped_for, unread)
    elif ruled is not None and ruled.sent:
        estimate = dearest(estimate, ruled.sent, hop_capped(fallbacks))
    # Beside Anthropic's chain on an api: anthropic gateway, LiteLLM's other lists and what the
    # chain's objects name of their own (in front of OpenRouter, its `models` list too): the
    # call, chain included, may start on or move to any of their entries.
    if routed is not None and routed.sent:
        estimate = dearest(estimate, routed.sent, hop_capped(routing))
    if also:  # Azure's v1 path naming one deployment and its body another: reserved at the dearer.
        estimate = dearest(estimate, also)
    return estimate
