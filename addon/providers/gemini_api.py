"""Google Gemini API (generativelanguage.googleapis.com) responses -> normalised usage.

Pure functions over bytes; no mitmproxy. The model is in the URL path
(``/v1beta/models/{model}:generateContent``, ``/v1/...``, ``tunedModels/{name}``), so a
downgrade rewrites the path. Usage comes from ``usageMetadata``:
``promptTokenCount`` INCLUDES ``cachedContentTokenCount``; billed output is
``candidatesTokenCount`` + ``thoughtsTokenCount``; ``toolUsePromptTokenCount`` is input too.

Streams (``:streamGenerateContent``) come as SSE (``?alt=sse``) or as one JSON array
streamed element by element (see ``addon.json_stream``). Every chunk carries a
``usageMetadata``; the LAST one is final. Per chunk the parser only runs substring
tests and keeps a reference to the chunk: the last usage chunk is decoded once, in
``result()``, and the text only when no usage came.

Google Search grounding is billed apart (``Usage.web_searches``): Gemini 3 and later per
distinct non-empty query in ``candidates[].groundingMetadata.webSearchQueries``, Gemini 2.5
and older once per grounded answer (ai.google.dev/gemini-api/docs/google-search, pricing).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from addon.json_stream import JSONArrayDecoder
from addon.providers.openai_api import TextCollector
from addon.providers.values import loads
from addon.providers.values import text as _str
from addon.providers.values import token_count as _int
from addon.sse import SSEDecoder, SSEEvent
from addon.usage import Metered, Usage

HOSTS: tuple[str, ...] = ("generativelanguage.googleapis.com",)
FLAVORS: tuple[str, ...] = ("generate", "stream")
# Request headers that carry the API key (it may also be in the ``key`` query parameter).
KEY_HEADERS: tuple[str, ...] = ("x-goog-api-key", "authorization")

_METHODS = {"generateContent": "generate", "streamGenerateContent": "stream"}
# ".../models/{name}:{method}" at the end of the path; ":" may arrive percent-encoded.
_PATH = re.compile(
    r"/(?P<kind>models|tunedModels)/(?P<name>[^/:%]+(?:%(?!3[aA])[^/:%]*)*)(?::|%3[aA])(?P<method>\w+)$"
)
_COUNT_KEYS = (
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "cachedContentTokenCount",
    "toolUsePromptTokenCount",
    "totalTokenCount",
)
_MAX_ERROR = 300
# "gemini-2.5-flash", "models/gemini-3.8-flash": the major version decides how grounding is billed.
_GEMINI_MAJOR = re.compile(r"(?:^|/)gemini-(\d+)")
_MAX_QUERIES = 1000  # distinct search queries kept per response (a bound, never reached in practice)


def _split(path: str) -> tuple[str, str]:
    """(path part, the rest: ``?query`` and/or ``#fragment``, kept verbatim)."""
    cut = len(path)
    for sep in ("?", "#"):
        i = path.find(sep)
        if 0 <= i < cut:
            cut = i
    return path[:cut], path[cut:]


def _match(path: str) -> re.Match[str] | None:
    return _PATH.search(_split(path)[0].rstrip("/"))


def names_a_model(path: str) -> bool:
    """Whether ``path`` is a native ``models/{model}:method`` (or ``tunedModels/...``) call."""
    return _match(path) is not None


def flavor_for_path(path: str) -> str | None:
    """``"generate"`` / ``"stream"`` for ``models/{m}:generateContent`` / ``:streamGenerateContent``.

    Other methods (``countTokens``, ``embedContent``, ``batchGenerateContent``...) are not
    metered: None.
    """
    m = _match(path)
    return _METHODS.get(m["method"]) if m else None


def request_model(path: str, body: dict[str, Any] | None = None) -> str | None:
    """The model named in the URL: ``gemini-2.5-flash`` (no ``models/``), or ``tunedModels/{name}``."""
    m = _match(path)
    if m is None:
        return None
    name = unquote(m["name"])
    return f"tunedModels/{name}" if m["kind"] == "tunedModels" else name


def with_model(path: str, body: dict[str, Any] | None, model: str) -> tuple[str, dict[str, Any] | None]:
    """The request path naming ``model`` instead (query string kept verbatim); the body is unchanged.

    ``model`` may be ``gemini-2.5-flash``, ``models/gemini-2.5-flash`` or ``tunedModels/x``.
    Raises ``ValueError`` if the path names no model.
    """
    part, rest = _split(path)
    trailing = part[len(part.rstrip("/")) :]
    part = part.rstrip("/")
    m = _PATH.search(part)
    if m is None:
        raise ValueError(f"no model in Gemini path {path!r}")
    model = model.strip()
    kind = "models"
    if model.startswith("tunedModels/"):
        kind, model = "tunedModels", model[len("tunedModels/") :]
    else:
        model = model.removeprefix("models/")
    if not model:
        raise ValueError("empty model name")
    sep = part[m.end("name") : m.start("method")]
    new = f"{part[: m.start()]}/{kind}/{quote(model, safe='-._~@')}{sep}{m['method']}"
    return new + trailing + rest, body


def stream_framing(path: str, content_type: str) -> str:
    """How a stream is framed: ``"sse"`` (``alt=sse``) or ``"json_array"`` (the default).

    The response's Content-Type decides when it says; else the request's ``alt`` parameter.
    """
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "text/event-stream":
        return "sse"
    if ct in ("application/json", "application/x-ndjson", "text/json"):
        return "json_array"
    query = _split(path)[1].split("#", 1)[0].lstrip("?")
    alt = parse_qs(query).get("alt", [])
    return "sse" if alt and alt[-1].lower() == "sse" else "json_array"


def extract_usage(meta: Any) -> Usage | None:
    """Normalise a ``usageMetadata`` object, or None if it holds no count."""
    if not isinstance(meta, dict) or not any(k in meta for k in _COUNT_KEYS):
        return None
    thoughts = _int(meta.get("thoughtsTokenCount"))
    prompt = by_modality(meta.get("promptTokensDetails"), meta.get("toolUsePromptTokensDetails"))
    answer = by_modality(meta.get("candidatesTokensDetails"))
    cached = by_modality(meta.get("cacheTokensDetails"))
    return Usage(
        input_tokens=_int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount")),
        cache_read_tokens=_int(meta.get("cachedContentTokenCount")),
        output_tokens=_int(meta.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
        input_audio_tokens=prompt.get("AUDIO", 0),
        output_audio_tokens=answer.get("AUDIO", 0),
        input_image_tokens=prompt.get("IMAGE", 0),
        output_image_tokens=answer.get("IMAGE", 0),
        cache_audio_read_tokens=cached.get("AUDIO", 0),
    )


def by_modality(*details: Any, count: str = "tokenCount") -> dict[str, int]:
    """Token counts by modality (upper case: ``TEXT``, ``IMAGE``, ``AUDIO``...) of ``*TokensDetails``
    lists (``{"modality", "tokenCount"}``; the Interactions API's ``*_by_modality``: ``count="tokens"``)."""
    counts: dict[str, int] = {}
    for entries in details:
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict) and isinstance(modality := entry.get("modality"), str):
                key = modality.upper()
                counts[key] = counts.get(key, 0) + _int(entry.get(count))
    return counts


def grounding_queries(obj: dict[str, Any], into: set[str] | None = None) -> set[str] | None:
    """The Google Search queries of a response or chunk's ``groundingMetadata``, added to ``into``.

    None (or ``into`` unchanged) when no candidate shows a Google Search: a non-empty query or
    a ``searchEntryPoint``. Empty queries are not billed ("we ignore the empty web search
    queries"), so a grounded answer listing none gives an empty set.
    """
    candidates = obj.get("candidates")
    if not isinstance(candidates, list):
        return into
    for candidate in candidates:
        meta = candidate.get("groundingMetadata") if isinstance(candidate, dict) else None
        if not isinstance(meta, dict):
            continue
        queries = meta.get("webSearchQueries")
        queries = queries if isinstance(queries, list) else []
        texts = [q.strip() for q in queries if isinstance(q, str) and q.strip()]
        if not texts and not isinstance(meta.get("searchEntryPoint"), dict):
            continue  # no search made (Maps or retrieval grounding, an empty block)
        into = into if into is not None else set()
        into.update(texts[: max(0, _MAX_QUERIES - len(into))])
    return into


def with_grounding(usage: Usage | None, queries: set[str] | None, model: str | None) -> Usage | None:
    """``usage`` plus the billed Google Searches: one per query (Gemini 3+), one per answer (older)."""
    if usage is None or queries is None:
        return usage
    match = _GEMINI_MAJOR.search(model or "")
    per_answer = match is not None and int(match.group(1)) < 3
    searches = 1 if per_answer else len(queries)
    return replace(usage, web_searches=usage.web_searches + searches) if searches else usage


def parse_response(flavor: str, body: bytes) -> Metered:
    """Usage, model and error of a complete, content-decoded body. Never raises.

    A stream body read whole (a JSON array, or SSE text) is parsed as the stream it is; it ended as
    the server ended it, so its last usage is the call's (never ``output_partial``).
    """
    head = body.lstrip()[:6]
    if not head:
        return Metered(error="empty response body")
    if head[:1] == b"[" or head.startswith((b"data:", b":", b"event:")):
        parser = StreamParser(flavor)
        if head[:1] == b"[":
            decoder = JSONArrayDecoder()
            for element in decoder.feed(body) + decoder.close():
                parser.feed(element)
        else:
            sse = SSEDecoder()
            for event in sse.feed(body) + sse.close():
                parser.feed(event)
        result = parser.result()
        if result.output_partial:
            result.output_partial, result.output_text = False, None
        return result
    obj = loads(body)
    if obj is None:
        return Metered(error="response body is not JSON")
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    model = _str(obj.get("modelVersion"))
    usage = with_grounding(extract_usage(obj.get("usageMetadata")), grounding_queries(obj), model)
    error = error_message(obj.get("error"))
    if usage is None and error is None:
        error = "no usage in response"
    text = None if usage is not None else "".join(_candidate_texts(obj)) or None
    tier = service_tier_of(obj.get("usageMetadata"))
    return Metered(usage=usage, model=model, error=error, output_text=text, service_tier=tier)


# Vertex AI says how a Gemini call was served in ``usageMetadata.trafficType`` (google-genai's
# TrafficType): Flex and Priority PayGo are its service tiers; provisioned throughput is capacity
# paid for apart (the list price overstates it: its own tier, so reports can tell).
_TRAFFIC_TIERS = {
    "on_demand": None,
    "on_demand_flex": "flex",
    "on_demand_priority": "priority",
    "provisioned_throughput": "provisioned",
}


def service_tier_of(meta: Any) -> str | None:
    """The tier that served the call: ``usageMetadata.serviceTier`` (standard, flex, priority), or
    Vertex's ``trafficType`` (ON_DEMAND_FLEX: flex, ON_DEMAND_PRIORITY: priority...)."""
    if not isinstance(meta, dict):
        return None
    tier = normalise_tier(meta.get("serviceTier"))
    if tier is None and isinstance(traffic := meta.get("trafficType"), str) and traffic:
        traffic = traffic.lower().removeprefix("traffic_type_")
        tier = _TRAFFIC_TIERS.get(traffic, traffic)
    return tier


def normalise_tier(tier: Any) -> str | None:
    """A service tier as stored: lower-case, the enum spelling's prefix off (``SERVICE_TIER_FLEX``: flex)."""
    if not isinstance(tier, str) or not tier:
        return None
    tier = tier.lower()
    return tier.removeprefix("service_tier_") or None


class StreamParser:
    """Feed the chunks of one streamed response; ``result()`` at any time.

    A chunk is an ``SSEEvent`` (``alt=sse``) or one JSON array element's text (bytes,
    from ``JSONArrayDecoder``).
    """

    __slots__ = (
        "_bad",
        "_blocked",
        "_decoded",
        "_done",
        "_error",
        "_finished",
        "_last",
        "_last_final",
        "_lazy",
        "_model",
        "_prev",
        "_prev_final",
        "_queries",
        "_seen",
        "_text",
        "flavor",
    )

    def __init__(self, flavor: str = "stream") -> None:
        self.flavor = flavor
        self._last: bytes | None = None  # the last chunk holding a usageMetadata
        self._prev: bytes | None = None  # the one before (used if the last is cut)
        # Whether the answer had ended at those chunks (their usage is then the call's).
        self._last_final = False
        self._prev_final = False
        self._lazy: tuple[Usage | None, str | None, int, str | None, bool] | None = None
        self._model: str | None = None
        self._error: str | None = None
        self._done = False
        self._seen: set[int] = set()  # candidate indexes seen in the chunks decoded
        self._finished: set[int] = set()  # those with a finishReason
        self._blocked = False  # promptFeedback.blockReason: the prompt was refused, no answer
        self._decoded: tuple[bytes, Any] | None = None  # a usage chunk decoded in feed (not twice)
        self._bad = 0
        self._queries: set[str] | None = None  # Google Search queries of grounded chunks
        self._text = TextCollector(self._chunk_texts)

    @property
    def done(self) -> bool:
        """The answer ended, as said by chunks that parsed: every candidate seen has its
        ``finishReason`` (each ``candidateCount`` answer its own), or the prompt was blocked
        (``promptFeedback.blockReason``, no candidates)."""
        return self._done

    def feed(self, event: SSEEvent | bytes) -> None:
        """Take one chunk (empty events and comments are ignored)."""
        data = event.data if isinstance(event, SSEEvent) else event
        if not data or data.isspace():
            return
        self._text.add(data)
        obj: Any = None
        # Rare (once per candidate, or a blocked prompt): decoded at once. A chunk cut short (the
        # body ended inside it) is not JSON and ends nothing.
        if b'"finishReason"' in data or b'"blockReason"' in data:
            obj = loads(data)
            if isinstance(obj, dict):
                self._take_ending(obj)
        if b'"usageMetadata"' in data:
            self._prev, self._last = self._last, data
            self._prev_final, self._last_final = self._last_final, self._done
            self._lazy = None
            if obj is not None:
                self._decoded = (data, obj)
        if b'"groundingMetadata"' in data:  # rare: decoded at once, its queries kept
            obj = loads(data) if obj is None else obj
            if isinstance(obj, dict):
                self._queries = grounding_queries(obj, self._queries)
                self._model = _str(obj.get("modelVersion")) or self._model
        if b'"error"' in data:
            obj = loads(data) if obj is None else obj
            if not isinstance(obj, dict):
                self._bad += 1
                return
            error = error_message(obj.get("error"))
            if error is not None:
                self._error = error

    def _take_ending(self, obj: dict[str, Any]) -> None:
        """Note a parsed chunk's candidates (by ``index``) and which have finished, or its
        ``blockReason``; ``_done`` once every candidate seen has finished."""
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self._blocked = True
        candidates = obj.get("candidates")
        for candidate in candidates if isinstance(candidates, list) else ():
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index", 0)
            index = index if isinstance(index, int) else 0
            self._seen.add(index)
            if candidate.get("finishReason"):
                self._finished.add(index)
        self._done = self._blocked or (bool(self._seen) and self._seen <= self._finished)

    def result(self) -> Metered:
        """Usage of the last chunk that had one (None if none), the model, an error if any.

        Each chunk's usage is a running count: unless the chunk it came from ended the answer
        (the ``finishReason`` of the last candidate still going, a ``blockReason``) or came after
        that, it is not the call's (``output_partial``, with the text seen for an estimate)."""
        if self._lazy is None:
            self._lazy = self._resolve()
        usage, model, bad, tier, final = self._lazy
        bad += self._bad
        partial = usage is not None and not final
        text = self._text.text() if usage is None or partial else None
        error = self._error
        if usage is None and error is None:
            error = f"no usage in stream ({bad} event(s) not JSON)" if bad else "no usage in stream"
        model = model or self._model
        usage = with_grounding(usage, self._queries, model)
        return Metered(
            usage=usage, model=model, error=error, output_text=text, service_tier=tier, output_partial=partial
        )

    def _resolve(self) -> tuple[Usage | None, str | None, int, str | None, bool]:
        """Decode the last usage chunk (or, if it is cut, the one before): overwrite, never add.
        (usage, model, chunks not JSON, service tier, whether that chunk came as the answer ended)."""
        bad = 0
        for data in (self._last, self._prev):
            if data is None:
                continue
            decoded = self._decoded
            obj = decoded[1] if decoded is not None and decoded[0] is data else loads(data)
            if not isinstance(obj, dict):
                bad += 1
                continue
            meta = obj.get("usageMetadata")
            usage = extract_usage(meta)
            if usage is not None:
                final = self._last_final if data is self._last else self._prev_final
                return usage, _str(obj.get("modelVersion")), bad, service_tier_of(meta), final
        return None, None, bad, None, False

    def _chunk_texts(self, data: bytes) -> list[str]:
        """The text of one chunk (noting its ``modelVersion``)."""
        obj = loads(data)
        if not isinstance(obj, dict):
            return []
        model = _str(obj.get("modelVersion"))
        if model is not None:
            self._model = model
        return _candidate_texts(obj)


def _candidate_texts(obj: dict[str, Any]) -> list[str]:
    """Texts of ``candidates[].content.parts[]`` (thoughts included; function calls as JSON)."""
    out: list[str] = []
    candidates = obj.get("candidates")
    if not isinstance(candidates, list):
        return out
    for candidate in candidates:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            continue
        for part in parts:
            if not isinstance(part, dict):
                continue
            if isinstance(text := part.get("text"), str) and text:
                out.append(text)
            elif isinstance(call := part.get("functionCall"), dict):
                out.append(json.dumps(call, ensure_ascii=False))
    return out


def error_message(err: Any) -> str | None:
    """A short text for a Google API error (``{"code", "message", "status"}``), or None."""
    if err is None or err == {} or err == "":
        return None
    if isinstance(err, dict):
        kind = err.get("status") or err.get("code")
        message = err.get("message")
        text = f"{kind}: {message}" if kind and message else str(message or kind or err)
    else:
        text = str(err)
    return text[:_MAX_ERROR]
