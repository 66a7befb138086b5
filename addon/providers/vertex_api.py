"""Google Cloud Vertex AI: Gemini and Claude on ``*aiplatform.googleapis.com`` -> normalised usage.

Pure functions; no mitmproxy. Vertex names the model in the path:

- Gemini: ``/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``
  and ``:streamGenerateContent`` (``v1beta1`` too; express mode drops ``projects/.../locations/...``),
  answered as the Gemini API answers (``addon.providers.gemini_api`` reads them);
- Claude: ``.../publishers/anthropic/models/{model}:rawPredict`` and ``:streamRawPredict``, an
  Anthropic Messages body without ``model`` (``anthropic_version: vertex-2023-10-16``), answered
  as Anthropic answers (``addon.providers.anthropic_api`` reads them).

- Its OpenAI-compatible endpoint, ``.../projects/{p}/locations/{l}/endpoints/openapi/chat/completions``
  (the openai SDK pointed at Vertex; the body names ``google/gemini-2.5-flash`` or a partner
  model), answered as OpenAI's chat (``addon.providers.openai_api`` reads it; flavor ``chat``).

Other methods (``countTokens``, Claude's ``count-tokens:rawPredict``, ``predict``, batch jobs,
model listing) are not metered. Hosts: ``{location}-aiplatform.googleapis.com``, the global
``aiplatform.googleapis.com`` and the multi-region ``aiplatform.{us,eu}.rep.googleapis.com``.

Callers authenticate with OAuth access tokens that change every hour: they are never read. The
project in the path stands for the credential (``vertex:{project}`` is fingerprinted) and is
recorded as the ``gcp_project`` tag; an express-mode API key (``x-goog-api-key``, ``?key=``) is
fingerprinted as any key. The location is the call's ``inference_geo``: Claude Sonnet 4.5 and
later models cost 10% more on regional and multi-region endpoints than on the global one
(Anthropic, "Claude on Vertex AI", global vs regional endpoints; older models: no difference).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from addon.providers import anthropic_api, gemini_api, openai_api
from addon.usage import Metered

HOST = "aiplatform.googleapis.com"  # the global endpoint (and express mode)
# Regional (us-central1-aiplatform...) and multi-region (aiplatform.us.rep...) hosts; no anchors.
HOST_PATTERN = r"[a-z0-9][a-z0-9-]*-aiplatform\.googleapis\.com|aiplatform\.[a-z0-9-]+\.rep\.googleapis\.com"
FLAVORS: tuple[str, ...] = ("generate", "stream", "messages", "chat")
KEY_HEADERS: tuple[str, ...] = ("x-goog-api-key",)  # express mode; Authorization is an OAuth token

_METHODS = {
    ("google", "generateContent"): "generate",
    ("google", "streamGenerateContent"): "stream",
    ("anthropic", "rawPredict"): "messages",
    ("anthropic", "streamRawPredict"): "messages",
}
_PATH = re.compile(
    r"^/v1(?:beta1)?"
    r"(?:/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+))?"
    r"/publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:%]+(?:%(?!3[aA])[^/:%]*)*)"
    r"(?::|%3[aA])(?P<method>[A-Za-z]+)$"
)
_OPENAPI = re.compile(
    r"^/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/endpoints/openapi/chat/completions$"
)
# Claude's token counting is a rawPredict on a model named "count-tokens": not a billed call.
_NOT_MODELS = frozenset({"count-tokens"})
GLOBAL = "global"
# "Regional and multi-region endpoints include a 10% pricing premium over global endpoints. This
# applies to Claude Sonnet 4.5 and future models only" (docs.claude.com, Claude on Vertex AI).
REGIONAL_PREMIUM = Decimal("1.1")
_CLAUDE_VERSION = re.compile(r"^claude-(?:[a-z]+-)?(\d{1,2})(?:-(\d{1,2}))?(?=$|[-@.])")
_DATED = re.compile(r"-(20\d\d[01]\d[0-3]\d)$")
_AT_DATE = re.compile(r"@(20\d\d[01]\d[0-3]\d)$")


@dataclass(frozen=True, slots=True)
class PathFacts:
    """What a request path says about the call beyond its model (Vertex: project and location)."""

    credential: str | None = None  # a stable stand-in for a key that rotates (never a secret)
    tags: Mapping[str, str] = field(default_factory=dict)  # added to the row's tags
    geo: str | None = None  # where it runs: the row's inference_geo


def _path_part(path: str) -> str:
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path.rstrip("/")


def _match(path: str) -> re.Match[str] | None:
    return _PATH.match(_path_part(path))


def _openapi(path: str) -> re.Match[str] | None:
    return _OPENAPI.match(_path_part(path))


def _body_model(body: dict[str, Any] | None) -> str | None:
    """The OpenAI-compatible body's model without its publisher (``google/gemini-2.5-flash``)."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model.strip():
        return None
    return model.strip().rsplit("/", 1)[-1]


def publisher(path: str) -> str | None:
    """``google`` or ``anthropic`` (the publisher in the path), or None."""
    m = _match(path)
    return m["publisher"] if m else None


def flavor_for_path(path: str) -> str | None:
    """``generate`` / ``stream`` (Gemini), ``messages`` (Claude's raw and stream predict), else None."""
    m = _match(path)
    if m is None:
        return "chat" if _openapi(path) is not None else None
    if unquote(m["model"]) in _NOT_MODELS:
        return None
    return _METHODS.get((m["publisher"], m["method"]))


def request_model(path: str, body: dict[str, Any] | None = None) -> str | None:
    """The model named in the path (``gemini-2.5-flash``, ``claude-sonnet-4-5@20250929``), or in
    the OpenAI-compatible body (without its ``google/`` publisher)."""
    m = _match(path)
    if m is None:
        return _body_model(body) if _openapi(path) is not None else None
    return unquote(m["model"])


def with_model(path: str, body: dict[str, Any] | None, model: str) -> tuple[str, dict[str, Any] | None]:
    """The path naming ``model`` instead (query kept); the body is unchanged.

    A Claude path takes Claude models only, a Gemini path no Claude model (``ValueError``
    otherwise: the proxy then refuses the call). An Anthropic dated id (``claude-haiku-4-5-20251001``)
    is written the Vertex way (``claude-haiku-4-5@20251001``).
    """
    m = _match(path)
    if m is None and _openapi(path) is not None:
        current = body.get("model") if isinstance(body, dict) else None
        if not isinstance(current, str) or model.strip().startswith("claude-"):
            raise ValueError(f"{model} cannot be sent on Vertex's OpenAI-compatible endpoint")
        publisher_prefix = current.rsplit("/", 1)[0] + "/" if "/" in current else ""
        return path, {**body, "model": publisher_prefix + model.strip()}  # type: ignore[dict-item]
    if m is None:
        raise ValueError(f"no model in Vertex path {path!r}")
    model = model.strip().removeprefix("models/")
    is_claude = model.startswith("claude-")
    if m["publisher"] == "anthropic":
        if not is_claude:
            raise ValueError(f"{model} is not a Claude model: Vertex serves it on another path")
        model = _DATED.sub(r"@\1", model)
    elif is_claude:
        raise ValueError(f"{model} is a Claude model: Vertex serves it on another path")
    return gemini_api.with_model(path, body, model)


def path_facts(path: str) -> PathFacts | None:
    """The project (a stand-in credential and the ``gcp_project`` tag) and location of a call."""
    m = _match(path) or _openapi(path)
    if m is None:
        return None
    project = unquote(m["project"]) if m["project"] else None
    location = unquote(m["location"]).lower() if m["location"] else None
    return PathFacts(
        credential=f"vertex:{project}" if project else None,
        tags={"gcp_project": project} if project else {},
        geo=location,
    )


def stream_framing(path: str, content_type: str) -> str | None:
    """Gemini streams: SSE (``?alt=sse``) or a JSON array; Claude's: SSE; None for whole bodies."""
    flavor = flavor_for_path(path)
    if flavor == "stream":
        return gemini_api.stream_framing(path, content_type)
    if flavor in ("messages", "chat") and "text/event-stream" in content_type.lower():
        return "sse"
    return None


def parse_response(flavor: str, body: bytes, headers: Mapping[str, str]) -> Metered:
    """A whole response: Anthropic's shape for ``messages``, Gemini's otherwise. Never raises."""
    if flavor == "messages":
        return anthropic_api.parse_response(flavor, body)
    if flavor == "chat":
        return openai_api.parse_response(flavor, body)
    return gemini_api.parse_response(flavor, body)


def stream_parser(
    flavor: str,
) -> anthropic_api.StreamParser | gemini_api.StreamParser | openai_api.StreamParser:
    """The stream reader of the publisher's shape."""
    if flavor == "messages":
        return anthropic_api.StreamParser(flavor)
    if flavor == "chat":
        return openai_api.StreamParser(flavor)
    return gemini_api.StreamParser(flavor)


def pricing_model(model: str) -> str:
    """The name genai-prices knows: without the publisher the OpenAI-compatible endpoint reports
    (``google/gemini-2.5-flash``), and a Claude snapshot's ``@YYYYMMDD`` as ``-YYYYMMDD``
    (``claude-opus-4@20250514`` is ``claude-opus-4-20250514``)."""
    return _AT_DATE.sub(r"-\1", model.strip().rsplit("/", 1)[-1])


def pricing_id(model: str) -> str:
    """The genai-prices provider whose list prices Vertex charges: Anthropic's for Claude, else Google's."""
    return "anthropic" if pricing_model(model).startswith("claude-") else "google"


def _claude_from_4_5(model: str) -> bool:
    """Claude Sonnet 4.5 or a later model (Haiku 4.5, Opus 4.5, 4.6, 5...)."""
    m = _CLAUDE_VERSION.match(model.strip())
    if m is None:
        return False
    return (int(m[1]), int(m[2] or 0)) >= (4, 5)


def geo_surcharge(model: str | None, geo: str | None) -> tuple[Decimal, str] | None:
    """How Vertex prices ``model`` served at ``geo``: (factor on the list price, price_source note).

    The list price is Anthropic's for Claude, Google's for the rest; Claude Sonnet 4.5 and later
    cost 1.1x on a regional or multi-region endpoint (any location but ``global``). None without
    a model.
    """
    if not model or not model.strip():
        return None
    note = f"(vertex: {pricing_id(model)} list price)"
    if not geo or geo == GLOBAL or not _claude_from_4_5(model):
        return Decimal(1), note
    return REGIONAL_PREMIUM, f"{note} x1.1 (regional endpoint {geo})"
