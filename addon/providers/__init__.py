"""The provider registry: which hosts are LLM APIs, and which parser reads each.

Each provider family is a pure module (request/response bytes in, normalised
usage out); this registry only ties hosts, paths, keys and stream framings to
them. Built-in providers are fixed; policies.yaml adds custom hosts
(``providers:``) and Azure deployment names (``azure_deployments:``), so the
addon builds a ``Registry`` from the policies in force.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_plus

from addon.providers import (
    advisors,
    anthropic_api,
    batches,
    bedrock_api,
    fallback_lists,
    gemini_api,
    gemini_interactions,
    gemini_live,
    openai_api,
    openai_live,
    openai_media,
    openai_realtime,
    openai_realtime_mints,
    openai_realtime_translation,
    openai_responses_ws,
    vertex_api,
)
from addon.providers.values import saves_openrouter_preset
from addon.providers.vertex_api import PathFacts
from addon.usage import Metered

if TYPE_CHECKING:
    from addon.policies import Policies


class StreamParser(Protocol):
    """Incremental reader of one provider's stream events (SSE events, JSON elements or frames)."""

    def feed(self, event: Any) -> None: ...

    def result(self) -> Metered: ...

    @property
    def done(self) -> bool:
        """The stream's final event was seen (usage is complete)."""
        ...


ParseResponse = Callable[[str, bytes, Mapping[str, str]], Metered]
RequestModel = Callable[[str, dict[str, Any] | None], str | None]
WithModel = Callable[[str, dict[str, Any] | None, str], tuple[str, dict[str, Any] | None]]


def _body_model(path: str, body: dict[str, Any] | None) -> str | None:
    model = body.get("model") if body else None
    return model if isinstance(model, str) else None


def _with_body_model(path: str, body: dict[str, Any] | None, model: str) -> tuple[str, dict[str, Any] | None]:
    if body is None:
        raise ValueError("no JSON body to rewrite")
    return path, {**body, "model": model}


def _openrouter_request_model(path: str, body: dict[str, Any] | None) -> str | None:
    """OpenRouter's model, its ``preset`` field folded in (``fallback_lists.requested_model``):
    ``{"model": m, "preset": s}`` is checked and reserved as ``m@preset/s``, ``{"preset": s}`` as
    ``@preset/s``, as OpenRouter runs them; a field that cannot be folded in cleanly still names a
    preset (matched only by a rule naming presets, reserved at a bare preset's ceiling)."""
    return fallback_lists.requested_model(body)


def _openrouter_with_model(
    path: str, body: dict[str, Any] | None, model: str
) -> tuple[str, dict[str, Any] | None]:
    """A downgrade on OpenRouter: the body names ``model`` and no preset any more (the preset's
    model, fallbacks and tools would otherwise still run)."""
    path, body = _with_body_model(path, body, model)
    if body is not None and fallback_lists.PRESET_FIELD in body:
        body = {name: value for name, value in body.items() if name != fallback_lists.PRESET_FIELD}
    return path, body


def _sse_only(path: str, content_type: str) -> str | None:
    return "sse" if "text/event-stream" in content_type.lower() else None


def _bedrock_framing(path: str, content_type: str) -> str | None:
    return "aws_eventstream" if bedrock_api.STREAM_CONTENT_TYPE in content_type.lower() else None


def _gemini_framing(path: str, content_type: str) -> str | None:
    return (
        gemini_api.stream_framing(path, content_type)
        if gemini_api.flavor_for_path(path) == "stream"
        else None
    )


def _ignore_headers(
    parse: Callable[[str, bytes], Metered],
) -> Callable[[str, bytes, Mapping[str, str]], Metered]:
    def parse_response(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
        return parse(flavor, body)

    return parse_response


@dataclass(frozen=True, slots=True)
class Provider:
    """One LLM API family on a set of hosts."""

    name: str  # the row's provider; also the genai-prices provider id unless pricing_id says otherwise
    flavor_for_path: Callable[[str], str | None]
    parse_response: ParseResponse
    stream_parser: Callable[[str], StreamParser]
    hosts: tuple[str, ...] = ()
    host_pattern: str | None = None  # regex (no anchors) for a family of hosts, e.g. Azure resources
    port: int = 443
    pricing_id: str | None = None
    # How a streamed response is framed, from (path, content type): "sse", "json_array", "aws_eventstream".
    stream_framing: Callable[[str, str], str | None] = _sse_only
    request_model: RequestModel = _body_model
    # Rewrites (path, body) to ask for another model; None: requests are signed, never rewritten.
    with_model: WithModel | None = _with_body_model
    key_headers: tuple[str, ...] = ("authorization",)
    key_query: tuple[str, ...] = ()  # query parameters that carry the key (Gemini's ?key=)
    key_from_header: Callable[[str], str | None] | None = None  # e.g. SigV4: the access key id only
    # Keys of a flat-fee plan (Claude Pro/Max's OAuth tokens): their calls cost nothing per token.
    subscription_key_prefixes: tuple[str, ...] = ()
    # Flavors whose streams report usage only when asked (OpenAI chat's stream_options).
    usage_opt_in_flavors: frozenset[str] = frozenset()
    is_usage_only_chunk: Callable[[Any], bool] | None = None
    pricing_model: Callable[[str], str] | None = None  # provider model id -> genai-prices name
    deployments: Mapping[str, str] = field(default_factory=dict)  # Azure: deployment -> model
    # One host, several price lists (Vertex: Claude at Anthropic's, Gemini at Google's): model -> id.
    pricing_id_for: Callable[[str], str] | None = None
    # What the path says besides the model (Vertex: the project, a stable stand-in for an OAuth
    # token that rotates hourly, and the location the call runs in).
    path_facts: Callable[[str], PathFacts | None] | None = None
    # A documented surcharge by (model, inference_geo): (factor, price_source note), or None. A
    # provider that has one prices its geo itself (Anthropic's US-only 1.1x is not applied).
    geo_surcharge: Callable[[str | None, str | None], tuple[Decimal, str] | None] | None = None
    # OpenAI Realtime over WebSocket: where its handshake is and how it names the model. None: none here.
    realtime: openai_realtime.Handshake | None = None
    # Gemini Live over WebSocket (the model is named in the session's first message). None: none here.
    live: gemini_live.Endpoint | None = None
    # Batch jobs: "openai" (the Batch API: a batch's input file, uploaded to /v1/files, is read for
    # its models) or "anthropic" (Message Batches: requests inline, usage in the results download).
    batch_api: str | None = None
    # OpenAI Responses over WebSocket (each response.create names its model). None: none here.
    responses_ws: openai_responses_ws.Endpoint | None = None
    # Realtime sessions minted over HTTP (client secrets, WebRTC calls, SIP accepts). None: none here.
    realtime_mints: openai_realtime_mints.Mints | None = None
    # OpenAI Live's primary WebSocket (``session.start`` names the model; billed by the second).
    # None: none here. (``live`` above is Gemini Live's.)
    openai_live: openai_live.Endpoint | None = None
    # OpenAI Realtime translation over WebSocket (the handshake's ``model``; no usage reported).
    # None: none here.
    realtime_translation: openai_realtime.Handshake | None = None
    # Other models a request names that the provider may run instead (OpenRouter's ``models``
    # fallback list and ``fallbacks`` objects): each held to the allowlist as the model is. None:
    # none here.
    fallback_models: Callable[[dict[str, Any] | None], fallback_lists.Fallbacks | None] | None = None
    # OpenRouter's ``models`` list where ``fallback_models`` reads Anthropic's server-side chain
    # (an api: anthropic gateway in front of OpenRouter): held to the allowlist too, the call
    # reserved at the dearest of its entries. None: none here.
    routing_models: Callable[[dict[str, Any] | None], fallback_lists.Fallbacks | None] | None = None
    # The advisor tools of a request of a flavor (another model the call runs within itself, at
    # its rates: Anthropic's advisor tool, OpenRouter's openrouter:advisor), each held to the
    # allowlist as the model is. None: none read here.
    advisor_tools: Callable[[str, dict[str, Any] | None], advisors.AdvisorTools] | None = None
    # Anthropic runs the advisor tool here (or behind this gateway): its executor/advisor pair rule
    # applies to a pair the proxy makes by rewriting either.
    advisor_pairs: bool = False

    @property
    def price_provider(self) -> str:
        """The genai-prices provider id to price this provider's calls under."""
        return self.pricing_id or self.name

    def matches(self, host: str) -> bool:
        return host in self.hosts or (
            self.host_pattern is not None and re.fullmatch(self.host_pattern, host) is not None
        )

    def allow_host_patterns(self) -> list[str]:
        """Anchored ``allow_hosts`` regexes for this provider's hosts."""
        found = [f"^{re.escape(host)}:{self.port}$" for host in self.hosts]
        if self.host_pattern is not None:
            found.append(f"^(?:{self.host_pattern}):{self.port}$")
        return found

    def keys_in_query(self, query: str) -> list[str]:
        """Every key value the query string carries, in order (a regex: a long query is cheap)."""
        return keys_in_query(query, self.key_query)


def keys_in_query(query: str, names: tuple[str, ...]) -> list[str]:
    """Every value of the parameters ``names`` in a query string, name by name, in order."""
    if not names or not query:
        return []
    found: list[str] = []
    for name in names:
        if f"{name}=" in query:
            pattern = rf"(?:^|&){re.escape(name)}=([^&]*)"
            found += [v for raw in re.findall(pattern, query) if (v := unquote_plus(raw))]
    return found


# Where an OpenAI-compatible host other than OpenAI takes its key: the Authorization bearer, and
# x-api-key, which the Anthropic SDK (and Claude Code) sends to the Anthropic-compatible endpoints
# many of them serve beside their OpenAI ones (OpenRouter's /api/v1/messages, and any path there;
# DeepSeek's /anthropic; xAI's /v1/messages). A header a host ignores costs nothing: a key read
# there only counts when policies.yaml maps it (see Meter._pick_key).
COMPATIBLE_KEY_HEADERS: tuple[str, ...] = ("authorization", "x-api-key")
# A policies.yaml host (a gateway in front of several APIs, LiteLLM's): every header one of the
# APIs the proxy knows takes a key in, whichever `api:` it speaks.
CUSTOM_KEY_HEADERS: tuple[str, ...] = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def _openai_compatible(name: str, *hosts: str, **kw: Any) -> Provider:
    readers: dict[str, Any] = {
        "flavor_for_path": openai_api.flavor_for_path,
        "parse_response": _ignore_headers(openai_api.parse_response),
        "stream_parser": openai_api.StreamParser,
        "key_headers": COMPATIBLE_KEY_HEADERS,
    }
    return Provider(
        name=name, hosts=hosts, is_usage_only_chunk=openai_api.is_usage_only_chunk, **(readers | kw)
    )


# --- OpenAI's own API: also image generation, audio transcription and batch jobs --------------


def _openai_flavor(path: str) -> str | None:
    found = openai_api.flavor_for_path(path) or openai_media.flavor_for_path(path)
    return found or batches.flavor_for_path(path)


def _openai_parse(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
    if flavor in openai_media.MEDIA_FLAVORS:
        return openai_media.parse_response(flavor, body)
    if flavor == batches.FLAVOR:
        return batches.parse_batch(body)
    return openai_api.parse_response(flavor, body)


def _openai_stream_parser(flavor: str) -> StreamParser:
    if flavor in openai_media.MEDIA_FLAVORS:
        return openai_media.StreamParser(flavor)
    return openai_api.StreamParser(flavor)


# --- OpenAI-shaped paths on another family's host ----------------------------------------------

# The OpenAI request and response shapes another family's host also serves, for the OpenAI SDK
# pointed at it (Anthropic's /v1/chat/completions, Gemini's /v1beta/openai/...). The flavor names
# differ from every native one ("messages", "generate", "stream"), so the flavor picks the parser.
OPENAI_SHAPED = frozenset({"chat", "embeddings"})


def _serving_openai_too(
    native: Provider, is_openai_path: Callable[[str], bool], flavors: frozenset[str], **kw: Any
) -> Provider:
    """``native``, with ``is_openai_path`` paths metered as OpenAI's ``flavors``."""

    def flavor_for_path(path: str) -> str | None:
        if not is_openai_path(path):
            return native.flavor_for_path(path)
        flavor = openai_api.flavor_for_path(path)
        return flavor if flavor in flavors else None

    def parse_response(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
        if flavor in OPENAI_SHAPED:
            return openai_api.parse_response(flavor, body)
        return native.parse_response(flavor, body, headers)

    def stream_parser(flavor: str) -> StreamParser:
        return openai_api.StreamParser(flavor) if flavor in OPENAI_SHAPED else native.stream_parser(flavor)

    def stream_framing(path: str, content_type: str) -> str | None:
        return (_sse_only if is_openai_path(path) else native.stream_framing)(path, content_type)

    def request_model(path: str, body: dict[str, Any] | None) -> str | None:
        return (_body_model if is_openai_path(path) else native.request_model)(path, body)

    native_with_model = native.with_model

    def with_model(path: str, body: dict[str, Any] | None, model: str) -> tuple[str, dict[str, Any] | None]:
        if is_openai_path(path):
            return _with_body_model(path, body, model)
        if native_with_model is None:
            raise ValueError(f"{native.name} requests cannot be rewritten")
        return native_with_model(path, body, model)

    return replace(
        native,
        flavor_for_path=flavor_for_path,
        parse_response=parse_response,
        stream_parser=stream_parser,
        stream_framing=stream_framing,
        request_model=request_model,
        with_model=with_model,
        is_usage_only_chunk=openai_api.is_usage_only_chunk,
        **kw,
    )


def _gemini_openai_path(path: str) -> bool:
    """Gemini's OpenAI compatibility (``/v1beta/openai/chat/completions``, ``.../embeddings``):
    any path that names no ``models/{model}:method`` and is not the Interactions API."""
    return not (gemini_api.names_a_model(path) or gemini_interactions.is_interactions_path(path))


# --- Gemini: generateContent (the model in the path) and the Interactions API (in the body) ----


def _gemini_flavor(path: str) -> str | None:
    return gemini_interactions.flavor_for_path(path) or gemini_api.flavor_for_path(path)


def _gemini_parse(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
    if flavor == gemini_interactions.FLAVOR:
        return gemini_interactions.parse_response(flavor, body)
    return gemini_api.parse_response(flavor, body)


def _gemini_stream_parser(flavor: str) -> StreamParser:
    if flavor == gemini_interactions.FLAVOR:
        return gemini_interactions.StreamParser(flavor)
    return gemini_api.StreamParser(flavor)


def _gemini_any_framing(path: str, content_type: str) -> str | None:
    if gemini_interactions.is_interactions_path(path):  # a create, or a GET of one (?stream=true)
        return gemini_interactions.stream_framing(path, content_type)
    return _gemini_framing(path, content_type)


def _gemini_request_model(path: str, body: dict[str, Any] | None) -> str | None:
    if gemini_interactions.is_interactions_path(path):
        return gemini_interactions.request_model(path, body)
    return gemini_api.request_model(path, body)


def _gemini_with_model(
    path: str, body: dict[str, Any] | None, model: str
) -> tuple[str, dict[str, Any] | None]:
    if gemini_interactions.is_interactions_path(path):
        return gemini_interactions.with_model(path, body, model)
    return gemini_api.with_model(path, body, model)


def _anthropic_openai_path(path: str) -> bool:
    """Anthropic's OpenAI SDK compatibility: ``/v1/chat/completions`` beside ``/v1/messages``."""
    return _anthropic_flavor(path) is None


def _anthropic_flavor(path: str) -> str | None:
    return anthropic_api.flavor_for_path(path) or batches.anthropic_flavor_for_path(path)


def _anthropic_parse(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
    if flavor == batches.FLAVOR:
        return batches.parse_message_batch(body)
    return anthropic_api.parse_response(flavor, body)


def _anthropic_advisors(flavor: str, body: dict[str, Any] | None) -> advisors.AdvisorTools:
    return advisors.advisor_tools(body) if flavor in anthropic_api.FLAVORS else advisors.AdvisorTools()


def _gateway_advisors(flavor: str, body: dict[str, Any] | None) -> advisors.AdvisorTools:
    # A gateway passes the tools on as they came: Anthropic's shape, and OpenRouter's when it
    # fronts OpenRouter (LiteLLM, a corporate router).
    return advisors.advisor_tools(body, openrouter=True)


def _openrouter_advisors(flavor: str, body: dict[str, Any] | None) -> advisors.AdvisorTools:
    # On /api/v1/messages Anthropic's shape carries its model only: its caps are not OpenRouter's.
    # The fusion plugin's panel and judge are reserved (its refusal: fallback_lists.with_fusion_plugin).
    found = advisors.advisor_tools(body, openrouter=True, anthropic_caps=False)
    return advisors.with_fusion_plugin_reserved(found, body)


def _openrouter_beside_anthropic_chain(body: dict[str, Any] | None) -> fallback_lists.Fallbacks | None:
    """Beside Anthropic's chain on an ``api: anthropic`` gateway priced as OpenRouter (in front of
    its ``/api/v1/messages``): LiteLLM's other lists and OpenRouter's ``models`` list, and its
    ``preset`` field and ``fusion`` plugin, which make them unreadable as on OpenRouter itself."""
    found = fallback_lists.beside_anthropic_chain(body, models_list=True)
    return fallback_lists.with_fusion_plugin(fallback_lists.with_preset(found, body), body)


# --- OpenRouter: OpenAI-compatible, and Anthropic's Messages API at /api/v1/messages ----------


def _openrouter_flavor(path: str) -> str | None:
    """The API flavor of an OpenRouter path, or None if not metered: its preset API among them
    (``values.saves_openrouter_preset``: /api/v1/presets/{slug}/chat/completions runs nothing)."""
    if saves_openrouter_preset(path):
        return None
    return anthropic_api.flavor_for_path(path) or openai_api.flavor_for_path(path)


def _without_openrouter_presets(flavor_for_path: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """A gateway's ``flavor_for_path`` in front of OpenRouter (priced as it): OpenRouter's preset
    API, which the gateway forwards as it is, is not metered there either, under the gateway's
    base path too (its calls are read by suffix)."""

    def flavor(path: str) -> str | None:
        return None if saves_openrouter_preset(path, under_base_path=True) else flavor_for_path(path)

    return flavor


def _openrouter_parse(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
    if flavor in anthropic_api.FLAVORS:
        return anthropic_api.parse_response(flavor, body)
    return openai_api.parse_response(flavor, body)


def _openrouter_stream_parser(flavor: str) -> StreamParser:
    if flavor in anthropic_api.FLAVORS:
        return anthropic_api.StreamParser(flavor)
    return openai_api.StreamParser(flavor)


# --- Azure OpenAI: the deployment in the path stands for a model -------------------------------

# The classic API's /openai/deployments/{name}/..., and the v1 API's /openai/v1/deployments/{name}/...,
# where openai-python's AzureOpenAI, given a base URL ending in /openai/v1/, puts the body's model for
# chat, legacy completions, embeddings, images and audio (its Responses go to /openai/v1/responses).
_AZURE_DEPLOYMENT = re.compile(r"^(?P<prefix>/openai/(?P<v1>v1/)?deployments/)(?P<name>[^/?#]+)(?P<rest>.*)$")


def azure_path_deployment(path: str) -> tuple[str, bool] | None:
    """The deployment an Azure OpenAI path names, and whether it is the v1 API's path (where the
    body names a deployment too), or None when it names none."""
    m = _AZURE_DEPLOYMENT.match(path)
    return (m["name"], m["v1"] is not None) if m is not None else None


def _azure_request_model(
    deployments: Mapping[str, str],
) -> Callable[[str, dict[str, Any] | None], str | None]:
    """The model a call runs: its deployment's (in the path, or the v1 API's body ``model``, a
    deployment's name too) as ``deployments`` maps it; an unmapped deployment is read as its name.
    A v1 path naming one deployment and its body another, serving another model, names none that
    can be trusted (which of them Azure runs is not known): None, refused where models are
    restricted."""

    def request_model(path: str, body: dict[str, Any] | None) -> str | None:
        m = _AZURE_DEPLOYMENT.match(path)
        name = _body_model(path, body) if m is None else m["name"]
        model = deployments.get(name, name) if name is not None else None
        named = _body_model(path, body) if m is not None and m["v1"] is not None else None
        return None if named is not None and deployments.get(named, named) != model else model

    return request_model


def _azure_with_model(deployments: Mapping[str, str]) -> WithModel:
    """A downgrade names the deployment that serves ``model`` wherever the call names one: in the
    path, the v1 API's body ``model``, or both (the v1 path /openai/v1/deployments/{name}/...). With
    none serving it, the call cannot be rewritten."""

    def with_model(path: str, body: dict[str, Any] | None, model: str) -> tuple[str, dict[str, Any] | None]:
        m = _AZURE_DEPLOYMENT.match(path)
        target = next((name for name, served in deployments.items() if served == model), None)
        if target is None:
            raise ValueError(f"no Azure deployment serves {model} (policies.yaml azure_deployments)")
        if m is None:  # the v1 API: the deployment is the body's model
            return _with_body_model(path, body, target)
        if m["v1"] is not None and _body_model(path, body) is not None:  # in the body too
            body = _with_body_model(path, body, target)[1]
        return f"{m['prefix']}{target}{m['rest']}", body

    return with_model


OPENAI_REALTIME = openai_realtime.Handshake(frozenset({"/v1/realtime"}))
# Azure OpenAI: the preview API names a deployment (``?api-version=..&deployment=``), the v1 API a
# ``model`` that is a deployment's name too.
AZURE_REALTIME_PATHS = frozenset({"/openai/realtime", "/openai/v1/realtime"})

AZURE = _openai_compatible(
    "azure",
    host_pattern=r"[a-z0-9][a-z0-9-]*\.(?:openai\.azure\.com|cognitiveservices\.azure\.com)",
    key_headers=("api-key", "authorization"),
)

BUILTIN: tuple[Provider, ...] = (
    _openai_compatible(
        "openai",
        "api.openai.com",
        key_headers=("authorization",),  # its only one
        usage_opt_in_flavors=frozenset({"chat", "completions"}),  # both take stream_options
        realtime=OPENAI_REALTIME,
        realtime_mints=openai_realtime_mints.OPENAI,
        batch_api="openai",
        responses_ws=openai_responses_ws.OPENAI,
        openai_live=openai_live.OPENAI,
        realtime_translation=openai_realtime_translation.OPENAI,
        # images, transcriptions and batches too (a custom host with `api: openai` takes these as well)
        flavor_for_path=_openai_flavor,
        parse_response=_openai_parse,
        stream_parser=_openai_stream_parser,
    ),
    _serving_openai_too(
        Provider(
            name="anthropic",
            hosts=("api.anthropic.com",),
            flavor_for_path=_anthropic_flavor,
            parse_response=_anthropic_parse,
            stream_parser=anthropic_api.StreamParser,
            key_headers=("x-api-key", "authorization"),
            batch_api="anthropic",
            # Server-side fallback's `fallbacks` (models Anthropic may run instead): each checked.
            fallback_models=anthropic_api.fallback_models,
            # The advisor tool (Messages only; not on Bedrock or Vertex AI, per Anthropic).
            advisor_tools=_anthropic_advisors,
            advisor_pairs=True,
            # Claude Code logged in to a Pro/Max plan (`claude setup-token`, CLAUDE_CODE_OAUTH_TOKEN)
            # sends `Authorization: Bearer sk-ant-oat01-...`: the plan's quota, not API credits.
            subscription_key_prefixes=("sk-ant-oat",),
        ),
        _anthropic_openai_path,
        frozenset({"chat"}),
        usage_opt_in_flavors=frozenset({"chat"}),  # its docs: stream_options fully supported
    ),
    _serving_openai_too(
        Provider(
            name="google",
            hosts=("generativelanguage.googleapis.com",),
            flavor_for_path=_gemini_flavor,
            parse_response=_gemini_parse,
            stream_parser=_gemini_stream_parser,
            stream_framing=_gemini_any_framing,
            request_model=_gemini_request_model,
            with_model=_gemini_with_model,
            key_headers=("x-goog-api-key", "authorization"),
            key_query=("key",),
            live=gemini_live.DEVELOPER,
        ),
        _gemini_openai_path,
        OPENAI_SHAPED,
    ),
    Provider(
        name="aws",
        host_pattern=r"bedrock-runtime(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?",
        flavor_for_path=bedrock_api.flavor_for_path,
        parse_response=bedrock_api.parse_response,
        stream_parser=bedrock_api.StreamParser,
        stream_framing=_bedrock_framing,
        request_model=bedrock_api.request_model,
        with_model=None,  # SigV4 signs the path and body: a rewrite would break the call
        key_from_header=bedrock_api.credential_of,
        pricing_model=bedrock_api.pricing_model,
    ),
    Provider(
        name="vertex",
        hosts=(vertex_api.HOST,),
        host_pattern=vertex_api.HOST_PATTERN,
        flavor_for_path=vertex_api.flavor_for_path,
        parse_response=vertex_api.parse_response,
        stream_parser=vertex_api.stream_parser,
        stream_framing=vertex_api.stream_framing,
        request_model=vertex_api.request_model,
        with_model=vertex_api.with_model,
        key_headers=vertex_api.KEY_HEADERS,  # express mode's API key; never the OAuth token
        key_query=("key",),
        pricing_id_for=vertex_api.pricing_id,
        pricing_model=vertex_api.pricing_model,
        path_facts=vertex_api.path_facts,
        geo_surcharge=vertex_api.geo_surcharge,
        live=gemini_live.VERTEX,
    ),
    AZURE,
    _openai_compatible("deepseek", "api.deepseek.com"),
    _openai_compatible("mistral", "api.mistral.ai"),
    _openai_compatible("groq", "api.groq.com"),
    # Its Anthropic-compatible /api/v1/messages too (Claude Code with ANTHROPIC_BASE_URL pointed at
    # it); every path's fallback lists (`models`, the Messages API's `fallbacks`) are checked.
    _openai_compatible(
        "openrouter",
        "openrouter.ai",
        flavor_for_path=_openrouter_flavor,
        parse_response=_openrouter_parse,
        stream_parser=_openrouter_stream_parser,
        fallback_models=fallback_lists.openrouter_lists,  # and its `preset` field
        request_model=_openrouter_request_model,  # its `preset` field folded into the model
        with_model=_openrouter_with_model,
        # openrouter:advisor (chat, Responses) and Anthropic's shape (/api/v1/messages): any model.
        advisor_tools=_openrouter_advisors,
    ),
    _openai_compatible("x-ai", "api.x.ai"),
    _openai_compatible("together", "api.together.xyz", "api.together.ai"),
    _openai_compatible("fireworks", "api.fireworks.ai"),
    _openai_compatible("cerebras", "api.cerebras.ai"),
    # Perplexity's Agent API takes a `models` list too (up to 5), which wins over `model`.
    _openai_compatible("perplexity", "api.perplexity.ai", fallback_models=fallback_lists.fallback_models),
)


def custom_provider(name: str, host: str, port: int, api: str, pricing_id: str | None = None) -> Provider:
    """A host from policies.yaml ``providers:`` speaking an OpenAI- or Anthropic-compatible API."""
    base = next(p for p in BUILTIN if p.name == api)
    return replace(
        base,
        name=name,
        hosts=(host.lower(),),
        host_pattern=None,
        port=port,
        pricing_id=pricing_id or name,
        key_headers=CUSTOM_KEY_HEADERS,  # a gateway: whatever API its clients speak
        usage_opt_in_flavors=frozenset(),  # never add stream_options to an API we do not know
        subscription_key_prefixes=(),  # a plan's token means a plan on the provider's own host only
        realtime=None,  # Realtime and Live are metered on the providers that serve them only
        realtime_mints=None,
        live=None,
        responses_ws=None,
        openai_live=None,
        realtime_translation=None,
        # A gateway (LiteLLM's) passes an advisor tool on whichever API it is sent in; in front of
        # OpenRouter (priced as it), the Anthropic shape's caps are OpenRouter's to ignore.
        advisor_tools=_openrouter_advisors if pricing_id == "openrouter" else _gateway_advisors,
        # In front of OpenRouter, its preset API (saving a preset runs nothing) is not metered, and
        # its `preset` field is read as OpenRouter reads it (m@preset/slug).
        flavor_for_path=(
            _without_openrouter_presets(base.flavor_for_path)
            if pricing_id == "openrouter"
            else base.flavor_for_path
        ),
        request_model=_openrouter_request_model if pricing_id == "openrouter" else base.request_model,
        with_model=_openrouter_with_model if pricing_id == "openrouter" else base.with_model,
        # Fallback lists the gateway or the host behind it may run: on the Anthropic API,
        # `fallbacks` is Anthropic's server-side fallback chain (each hop may bill, at its own
        # max_tokens), whatever it is priced as; on the OpenAI API LiteLLM's fallback lists, and
        # in front of OpenRouter its `models` list too.
        fallback_models=(
            base.fallback_models
            if api == "anthropic"
            else fallback_lists.gateway_fallbacks
            if pricing_id == "openrouter"
            else fallback_lists.gateway_client_fallbacks
        ),
        # Beside Anthropic's chain, the lists a LiteLLM router reads too (context_window_fallbacks,
        # content_policy_fallbacks, what a `fallbacks` object names of its own) and, in front of
        # OpenRouter, its `models` list: the call may start on, or move to, any of their entries.
        # In front of OpenRouter, its `preset` field and `fusion` plugin are checked there too (its
        # `fallback_models` stays Anthropic's chain, read as one: its Fallbacks.chain).
        routing_models=(
            _openrouter_beside_anthropic_chain
            if pricing_id == "openrouter"
            else partial(fallback_lists.beside_anthropic_chain, models_list=False)
        )
        if api == "anthropic"
        else None,
    )


class Registry:
    """The providers in force: the built-in ones plus policies.yaml's custom hosts."""

    def __init__(
        self, custom: tuple[Provider, ...] = (), azure_deployments: Mapping[str, str] | None = None
    ) -> None:
        deployments = dict(azure_deployments or {})
        azure = replace(
            AZURE,
            deployments=deployments,
            request_model=_azure_request_model(deployments),
            with_model=_azure_with_model(deployments),
            realtime=openai_realtime.Handshake(AZURE_REALTIME_PATHS, ("deployment", "model"), deployments),
            realtime_mints=replace(openai_realtime_mints.AZURE, deployments=deployments),
        )
        builtin = tuple(azure if p is AZURE else p for p in BUILTIN)
        self.providers: tuple[Provider, ...] = (*custom, *builtin)
        # A custom host is bound to its port (a local server); built-in hosts to their name.
        self._custom = {(host, p.port): p for p in custom for host in p.hosts}
        self._builtin = {host: p for p in builtin for host in p.hosts}
        self._patterns = [p for p in builtin if p.host_pattern is not None]
        self._by_name: dict[str, Provider] = {}
        for p in self.providers:
            self._by_name.setdefault(p.name, p)

    def by_name(self, name: str) -> Provider | None:
        """The provider whose calls are recorded under ``name``."""
        return self._by_name.get(name)

    def price_provider(self, name: str, model: str | None = None) -> tuple[str, Callable[[str], str] | None]:
        """(genai-prices provider id, model-name mapping) for a row's provider (and its model, for
        a provider whose host serves several price lists)."""
        provider = self._by_name.get(name)
        if provider is None:
            return name, None
        price_id = provider.price_provider
        if provider.pricing_id_for is not None and model:
            price_id = provider.pricing_id_for(model)
        return price_id, provider.pricing_model

    def geo_surcharge(
        self, name: str
    ) -> Callable[[str | None, str | None], tuple[Decimal, str] | None] | None:
        """The row provider's own geo pricing (Vertex's regional premium), if it has one."""
        provider = self._by_name.get(name)
        return provider.geo_surcharge if provider else None

    def for_host(self, host: str, port: int | None = None) -> Provider | None:
        """The provider serving ``host`` (case-insensitive) on ``port``, if any."""
        host = host.lower().rstrip(".")
        if port is not None and (found := self._custom.get((host, port))) is not None:
            return found
        if (found := self._builtin.get(host)) is not None:
            return found
        return next((p for p in self._patterns if p.matches(host)), None)

    def allow_host_patterns(self) -> list[str]:
        """Anchored ``allow_hosts`` regexes for every provider host."""
        return [pattern for p in self.providers for pattern in p.allow_host_patterns()]


def registry_for(policies: Policies) -> Registry:
    """The providers a policies.yaml puts in force: the built-in ones, its hosts, its Azure deployments."""
    return Registry(
        custom=tuple(
            custom_provider(p.name, p.host, p.port, p.api, p.pricing_provider) for p in policies.providers
        ),
        azure_deployments=policies.azure_deployments,
    )


DEFAULT_REGISTRY = Registry()


def allow_host_patterns() -> list[str]:
    """Anchored ``allow_hosts`` regexes for every built-in provider host."""
    return DEFAULT_REGISTRY.allow_host_patterns()
