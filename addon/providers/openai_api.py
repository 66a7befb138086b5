"""OpenAI API responses -> normalised usage: chat completions, Responses API, embeddings, and
legacy completions (``/v1/completions``: chat's usage and stream shape, ``choices[].text``).

Also the OpenAI-compatible dialects (DeepSeek, Groq, OpenRouter, Mistral, xAI, Together,
Fireworks, Cerebras, Perplexity, Azure OpenAI): ``extract_usage`` is the one place that
knows their usage fields.

Pure functions over bytes; no mitmproxy. Stream parsing is cheap per chunk: a chunk is
JSON-decoded while streaming only to learn the model (first chunks) or an error; the
chunk(s) carrying usage are remembered and decoded once, in ``result()``; the completion
text is extracted from the remembered chunks only when no usage came at all.

A Responses answer's ``image_generation`` tool calls are read beside its usage (``tool_images_of``:
OpenAI bills their images apart, at the image model's rates); a stream's image call events are
counted by their type, a partial image (megabytes of base64) never decoded (``ImageEvents``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from addon.model_rules import base_model
from addon.providers.values import bare_path, flavor_by_suffix, loads
from addon.providers.values import text as _str
from addon.providers.values import token_count as _int
from addon.sse import SSEDecoder, SSEEvent
from addon.usage import Metered, ToolImages, Usage

FLAVORS: tuple[str, ...] = ("chat", "completions", "responses", "embeddings")
# Flavors read as chat is: the same usage object, streamed as chunks of ``choices`` with the usage
# in a final chunk (``stream_options.include_usage``); legacy completions' choices hold ``text``.
CHAT_LIKE = frozenset({"chat", "completions"})

# Matched on the END of the path, so prefixed routes work too ("/openai/v1/chat/completions",
# Azure's "/openai/deployments/{name}/chat/completions", Gemini's "/v1beta/openai/chat/completions").
_PATH_SUFFIXES: tuple[tuple[str, str], ...] = (
    # Before "/completions", which it also ends with: the first suffix matched wins.
    ("/chat/completions", "chat"),
    # Legacy completions (vLLM, Together, Fireworks... serve it too), but not another API's
    # (_NOT_LEGACY_COMPLETIONS: Mistral's /v1/agents/completions names an agent, no model).
    ("/completions", "completions"),
    ("/responses", "responses"),
    # Codex CLI's /compact and auto-compaction: the model reads the whole history (a Responses usage).
    ("/responses/compact", "responses"),
    ("/embeddings", "embeddings"),
)
# "/completions" under any prefix is a legacy completion (a version segment, an Azure deployment,
# DeepSeek's /beta/ FIM, Mistral's /v1/fim/, a gateway's base path such as Databricks'
# /serving-endpoints/) except under these, another API's: Mistral's agents name an agent, no model.
_NOT_LEGACY_COMPLETIONS = re.compile(r".*/agents/completions", re.IGNORECASE)
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# A background response still running: its usage comes with a later GET /v1/responses/{id}.
RUNNING = frozenset({"queued", "in_progress"})
_RESPONSES_START = frozenset({"response.created", "response.in_progress", "response.queued"})
_MODEL_TRIES = 3  # chat chunks JSON-decoded at most this many times just to learn the model
_MAX_ERROR = 300
# Completion text for an offline estimate: raw chunks kept at most (bytes), text returned at most (chars).
RAW_TEXT_CAP = 8 * 1024 * 1024
TEXT_CAP = 4 * 1024 * 1024
_NUMBER = rb"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
_COST_TEXT = re.compile(rb'"cost"\s*:\s*' + _NUMBER)
_TOTAL_COST_TEXT = re.compile(rb'"total_cost"\s*:\s*' + _NUMBER)
USD_TICKS_EXPONENT = 10  # xAI's usage.cost_in_usd_ticks: 1 USD = 10^10 ticks


def flavor_for_path(path: str) -> str | None:
    """The API flavor of a request path (query string allowed), or None if not metered."""
    flavor = flavor_by_suffix(path, _PATH_SUFFIXES)
    if flavor == "completions" and _NOT_LEGACY_COMPLETIONS.fullmatch(bare_path(path)) is not None:
        return None  # "/v1/agents/completions": another API
    return flavor


# Where /v1/completions serves a few models only (OpenAI's own API, Azure OpenAI): a downgrade to a
# chat model would be answered "This is a chat model and not supported in the v1/completions
# endpoint". OpenAI-compatible servers (vLLM, Together...) serve any of theirs there.
CHAT_ONLY_PROVIDERS = frozenset({"openai", "azure"})
LEGACY_COMPLETION_MODELS = frozenset({"gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"})


def serves_legacy_completions(model: str) -> bool:
    """Can ``model`` answer a legacy completion on OpenAI's API: one of the few that do, or an
    instruct model by its name (``gpt-35-turbo-instruct`` on Azure)?"""
    base = base_model(model).lower()
    return base in LEGACY_COMPLETION_MODELS or "instruct" in base


def extract_usage(usage: Any) -> Usage | None:
    """Normalise an OpenAI-style ``usage`` object (chat/embeddings or Responses shape).

    The one place that knows usage field names; provider dialects grow here:

    - DeepSeek: ``prompt_cache_hit_tokens`` + ``prompt_cache_miss_tokens`` = ``prompt_tokens``;
      the hits are the cache reads when ``prompt_tokens_details`` is absent.
    - Together: a top-level ``cached_tokens``.
    - xAI: ``completion_tokens`` EXCLUDES ``completion_tokens_details.reasoning_tokens``
      (its ``total_tokens`` = prompt + completion + reasoning); seen from the total, the
      reasoning is added to the output. OpenAI's completion already includes it.
    - Perplexity's ``citation_tokens``, ``num_search_queries`` and top-level
      ``reasoning_tokens`` are billed apart, not as tokens here (its ``cost`` says it all).
    """
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage or "prompt_cache_hit_tokens" in usage:
        details_in = _dict(usage.get("prompt_tokens_details"))
        details_out = _dict(usage.get("completion_tokens_details"))
        hits = usage.get("prompt_cache_hit_tokens")
        prompt = _int(usage.get("prompt_tokens"))
        if usage.get("prompt_tokens") is None and (hits is not None or "prompt_cache_miss_tokens" in usage):
            prompt = _int(hits) + _int(usage.get("prompt_cache_miss_tokens"))
        cached = details_in.get("cached_tokens")
        if cached is None:
            cached = hits if hits is not None else usage.get("cached_tokens")
        output = _int(usage.get("completion_tokens"))
        reasoning = _int(details_out.get("reasoning_tokens"))
        total = usage.get("total_tokens")
        if reasoning and type(total) is int and total == prompt + output + reasoning:
            output += reasoning  # xAI: reasoning reported beside the completion, not in it
        return Usage(
            input_tokens=prompt,
            cache_read_tokens=_int(cached),
            cache_write_tokens=_int(details_in.get("cache_write_tokens")),
            output_tokens=output,
            reasoning_tokens=reasoning,
            # gpt-audio / gpt-4o-audio: speech in and out, priced apart from text
            input_audio_tokens=_int(details_in.get("audio_tokens")),
            output_audio_tokens=_int(details_out.get("audio_tokens")),
            input_image_tokens=_int(details_in.get("image_tokens")),
        )
    if "input_tokens" in usage or "output_tokens" in usage:  # Responses API
        details_in = _dict(usage.get("input_tokens_details"))
        details_out = _dict(usage.get("output_tokens_details"))
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            cache_read_tokens=_int(details_in.get("cached_tokens")),
            cache_write_tokens=_int(details_in.get("cache_write_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            reasoning_tokens=_int(details_out.get("reasoning_tokens")),
            input_audio_tokens=_int(details_in.get("audio_tokens")),
            output_audio_tokens=_int(details_out.get("audio_tokens")),
            input_image_tokens=_int(details_in.get("image_tokens")),
        )
    return None


def image_usage(usage: Any) -> Usage | None:
    """Normalise a GPT image model's ``usage`` (image tokens as subsets of input and output)."""
    if not isinstance(usage, dict) or not ("input_tokens" in usage or "output_tokens" in usage):
        return None
    details_in = usage.get("input_tokens_details")
    details_out = usage.get("output_tokens_details")
    input_tokens = _int(usage.get("input_tokens"))
    output_tokens = _int(usage.get("output_tokens"))
    image_in = _int(details_in.get("image_tokens")) if isinstance(details_in, dict) else 0
    # Without a breakdown, every output token is an image token: these models write images only
    # (priced at the image output rate where the model has one, e.g. gpt-image-1.5's $32/M).
    image_out = _int(details_out.get("image_tokens")) if isinstance(details_out, dict) else output_tokens
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_image_tokens=max(0, min(image_in, input_tokens)),
        output_image_tokens=max(0, min(image_out, output_tokens)),
    )


# --- the image_generation tool's images (billed apart from the text model's usage) ----------------

IMAGE_CALL = "image_generation_call"  # an output item: one call of the tool
IMAGE_TOOL = "image_generation"
IMAGE_EVENT = "response.image_generation_call."  # the prefix of a stream's image call events

# A final event carries the response whole, its images' base64 too (megabytes each): decoded in the
# stream's hook, on the event loop (~20 ms for 12 MB). Their values are cut first (C-speed scans).
CUT_RESULTS_FROM = 64 * 1024  # bytes of an event's data
_RESULT_KEY = b'"result"'
_JSON_SPACE = b" \t\r\n"


def without_image_results(data: bytes) -> bytes:
    """``data`` (an event's JSON) with each ``"result"`` string value longer than a few bytes cut
    to ``"_"``: an image's base64, which the meter never reads (a result still says there is one).
    A value holding a backslash (an escape, so no base64) is kept. Never raises; short data as is."""
    if len(data) < CUT_RESULTS_FROM or _RESULT_KEY not in data:
        return data
    parts: list[bytes] = []
    kept = 0
    found = data.find(_RESULT_KEY)
    while found != -1:
        at = found + len(_RESULT_KEY)
        while at < len(data) and data[at] in _JSON_SPACE:
            at += 1
        if at < len(data) and data[at] == ord(":"):
            at += 1
            while at < len(data) and data[at] in _JSON_SPACE:
                at += 1
            if at < len(data) and data[at] == ord('"'):
                end = data.find(b'"', at + 1)
                if end == -1:
                    break
                if end - at > 8 and data.find(b"\\", at + 1, end) == -1:
                    parts += (data[kept : at + 1], b"_")
                    kept = end
                found = data.find(_RESULT_KEY, end + 1)
                continue
        found = data.find(_RESULT_KEY, at)
    if not parts:
        return data
    parts.append(data[kept:])
    return b"".join(parts)


MAX_IMAGE_CALLS = 64  # image calls of one response followed at most (each writes one image)


def _wrote_image(item: dict[str, Any]) -> bool:
    """Did this ``image_generation_call`` item write an image (billed)? It did when it says it
    completed or carries its image (``result``: an answer has been seen saying "generating" with
    its image); one that failed (a moderation block) or never ended wrote none."""
    status = item.get("status")
    if status == "failed":
        return False
    return status == "completed" or bool(_str(item.get("result")))


# Characters of a model name read from an image tool (``tools[i].model``, ``svg.model``, echoed or
# in ``svg_usage``): a longer one is no model's name, so it counts as unreadable (refused where models
# are restricted), and nothing longer is kept while a response runs or with a background response.
MAX_TOOL_MODEL_NAME = 200


def _echoed_tool_model(tools: Any) -> str | None:
    """The model of the ``image_generation`` tool a response object echoes in its ``tools``."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == IMAGE_TOOL:
            model = tool.get("model")
            if isinstance(model, str) and 0 < len(model.strip()) <= MAX_TOOL_MODEL_NAME:
                return model.strip()
    return None


def tool_images_of(response: Any) -> ToolImages | None:
    """What a Responses object says of its ``image_generation`` tool's work: each image call of its
    ``output`` (the quality and size it used, or that it failed), its ``tool_usage.image_gen`` (the
    tokens the tool was billed, newer API versions) and the tool's model its ``tools`` echo. None
    when it holds neither an image call nor such usage. Never raises."""
    if not isinstance(response, dict):
        return None
    images: list[tuple[str | None, str | None]] = []
    failed = 0
    svg: dict[str, Usage] = {}
    output = response.get("output")
    if isinstance(output, list):
        for item in output:
            if not isinstance(item, dict) or item.get("type") != IMAGE_CALL:
                continue
            if len(images) + failed >= MAX_IMAGE_CALLS:
                break
            _add_svg_usage(svg, item.get("svg_usage"))
            if _wrote_image(item):
                images.append((_str(item.get("quality")), _str(item.get("size"))))
            else:
                failed += 1
    tool_usage = response.get("tool_usage")
    raw = tool_usage.get("image_gen") if isinstance(tool_usage, dict) else None
    usage = image_usage(raw)
    if not images and not failed and usage is None and not svg:
        return None
    cached = _int(raw.get("cached_tokens")) if isinstance(raw, dict) else 0
    return ToolImages(
        images=tuple(images),
        failed=failed,
        usage=usage,
        cached_tokens=max(0, min(cached, usage.input_tokens)) if usage is not None else 0,
        model=_echoed_tool_model(response.get("tools")),
        svg=tuple(svg.items()),
    )


MAX_SVG_MODELS = 4  # SVG author models of one response billed (each its own row)


def _add_svg_usage(found: dict[str, Usage], svg_usage: Any) -> None:
    """Add an image call's ``svg_usage`` (its SVG author model's tokens) to ``found``, per model.
    Its reasoning tokens are a part of its output tokens, unless ``total_tokens`` says they were
    counted beside them (then added). A negative count is taken as 0. Anything else is skipped."""
    if not isinstance(svg_usage, dict):
        return
    model = _str(svg_usage.get("model"))
    if not model or len(model) > MAX_TOOL_MODEL_NAME or (model not in found and len(found) >= MAX_SVG_MODELS):
        return
    given, output, reasoning = (  # a negative count is none
        max(0, _int(svg_usage.get(name))) for name in ("input_tokens", "output_tokens", "reasoning_tokens")
    )
    total = svg_usage.get("total_tokens")
    if reasoning and type(total) is int and total == given + output + reasoning:
        output += reasoning
    if not (given or output):
        return
    seen = found.get(model, Usage())
    found[model] = Usage(
        input_tokens=seen.input_tokens + given,
        output_tokens=seen.output_tokens + output,
        reasoning_tokens=seen.reasoning_tokens + min(reasoning, output),
    )


_ITEM_ID = re.compile(rb'"item_id"\s*:\s*"([^"\\]{1,200})"')
_QUALITY = re.compile(rb'"quality"\s*:\s*"([a-z]{1,20})"')
_SIZE = re.compile(rb'"size"\s*:\s*"([0-9a-z]{1,20})"')
_IMAGE_EVENT_TYPE = re.compile(rb'"type"\s*:\s*"(response\.image_generation_call\.[a-z_]{1,40})"')
_EVENT_HEAD = 256  # bytes of a nameless event searched for an image call event's type


def image_event_type(data: bytes) -> str | None:
    """The type of an image call event (``response.image_generation_call.*``) in a nameless event
    or a WebSocket message, looked for in its first bytes; None for any other. Never raises."""
    found = _IMAGE_EVENT_TYPE.search(data, 0, _EVENT_HEAD)
    return found.group(1).decode("ascii") if found is not None else None


def _found(pattern: re.Pattern[bytes], data: bytes) -> str | None:
    match = pattern.search(data)
    return match.group(1).decode("ascii", "replace") if match is not None else None


class ImageEvents:
    """A stream's image call events (``response.image_generation_call.*``), read without decoding a
    partial image (base64 of megabytes: its few members are found by their key, which base64 and
    JSON strings cannot spell): the partial images sent and, for a stream cut before its final
    event, the image calls that completed with the quality and size their partial images said."""

    __slots__ = ("_completed", "_seen", "partial_images")

    def __init__(self) -> None:
        self.partial_images = 0
        self._seen: dict[str, tuple[str | None, str | None]] = {}  # item id -> (quality, size)
        self._completed: list[str] = []

    def feed(self, kind: str, data: bytes) -> None:
        """One image call event (its type ``kind``); only partial images and completions count."""
        if kind == IMAGE_EVENT + "partial_image":
            self.partial_images += 1
            item = _found(_ITEM_ID, data)
            if item is not None and (item in self._seen or len(self._seen) < MAX_IMAGE_CALLS):
                self._seen[item] = (_found(_QUALITY, data), _found(_SIZE, data))
        elif kind == IMAGE_EVENT + "completed" and len(self._completed) < MAX_IMAGE_CALLS:
            item = _found(_ITEM_ID, data) or f"#{len(self._completed)}"
            if item not in self._completed:
                self._completed.append(item)

    def merged(self, final: ToolImages | None, ended: bool = True) -> ToolImages | None:
        """The tool's work: the final event's (``final``) with the partial images counted here; a
        final event without image calls (``ended``), the partial images alone; a stream cut before
        its final event, the image calls whose completion went by (None: nothing billed seen)."""
        if final is not None:
            return replace(final, partial_images=final.partial_images + self.partial_images)
        if ended:
            return ToolImages(partial_images=self.partial_images) if self.partial_images else None
        if not (self._completed or self.partial_images):
            return None
        images = tuple(self._seen.get(item, (None, None)) for item in self._completed)
        return ToolImages(images=images, partial_images=self.partial_images, from_events=True)


def with_web_searches(usage: Usage | None, output: Any) -> Usage | None:
    """``usage`` plus the hosted web and file searches a Responses ``output`` list holds, priced per call.

    Each ``web_search_call`` item whose action is a search (or that names no action) is one;
    opening a page or finding in it is part of a search already made. Each ``file_search_call``
    item is one file search ($2.50 per 1,000 tool calls, however many queries it ran).
    """
    if usage is None or not isinstance(output, list):
        return usage
    searches = files = 0
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "web_search_call":
            action = item.get("action")
            searches += not isinstance(action, dict) or action.get("type") in (None, "search")
        elif kind == "file_search_call":
            files += 1
    if not (searches or files):
        return usage
    return replace(
        usage, web_searches=usage.web_searches + searches, file_searches=usage.file_searches + files
    )


def usage_of(obj: dict[str, Any]) -> Any:
    """The usage object of a response / chunk: ``usage``, or Groq's ``x_groq.usage`` in streams."""
    usage = obj.get("usage")
    if isinstance(usage, dict) and usage:
        return usage
    x_groq = obj.get("x_groq")
    if isinstance(x_groq, dict) and isinstance(x_groq.get("usage"), dict):
        return x_groq["usage"]
    return usage


def extract_cost(usage: Any, raw: bytes | None = None) -> Decimal | None:
    """The cost the provider reported in ``usage``, in USD, or None.

    OpenRouter: ``usage.cost`` (a number); Perplexity: ``usage.cost.total_cost``; xAI:
    ``usage.cost_in_usd_ticks`` (an integer, 10^10 ticks to the dollar, exact). The
    Decimal is read from the number's text in ``raw`` (the JSON the object was decoded
    from) when found there, so ``0.0000945`` stays exactly that.
    """
    if not isinstance(usage, dict):
        return None
    ticks = usage.get("cost_in_usd_ticks")
    if type(ticks) is float and ticks.is_integer():
        ticks = int(ticks)
    if type(ticks) is int and ticks >= 0:
        return Decimal(ticks).scaleb(-USD_TICKS_EXPONENT)
    cost = usage.get("cost")
    pattern = _COST_TEXT
    if isinstance(cost, dict):
        cost = cost.get("total_cost")
        pattern = _TOTAL_COST_TEXT
    if type(cost) is not int and type(cost) is not float:
        return None
    if cost != cost or abs(cost) == float("inf"):
        return None
    if raw is not None:
        for m in pattern.finditer(raw):
            text = m.group(1)
            if float(text) == cost:
                try:
                    return Decimal(text.decode("ascii"))
                except InvalidOperation:  # pragma: no cover - the pattern only matches numbers
                    break
    return Decimal(repr(cost)) if type(cost) is float else Decimal(cost)


# Embeddings answers carry every vector: past this size only their tail is parsed.
EMBEDDINGS_TAIL_PARSE = 64 * 1024
_USAGE_TAIL = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
_MODEL_TAIL = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.)*")')


def _embeddings_tail(body: bytes) -> Metered | None:
    """Usage and model of a large embeddings body without decoding its vectors (None: parse it all)."""
    tail = body[-4096:]
    usage_json = _last_group(_USAGE_TAIL, tail)
    raw_usage = loads(usage_json) if usage_json is not None else None
    usage = extract_usage(raw_usage)
    if usage is None:
        return None
    model_json = _last_group(_MODEL_TAIL, tail)
    model = loads(model_json) if model_json is not None else None
    return Metered(usage=usage, model=_str(model), provider_cost=extract_cost(raw_usage, usage_json))


def _last_group(pattern: re.Pattern[bytes], data: bytes) -> bytes | None:
    """Group 1 of the last match of ``pattern`` in ``data``."""
    found = None
    for match in pattern.finditer(data):
        found = match.group(1)
    return found


def parse_response(flavor: str, body: bytes) -> Metered:
    """Usage, model, error, provider cost (text if no usage) of a complete JSON body. Never raises."""
    if not body.strip():
        return Metered(error="empty response body")
    if flavor == "embeddings" and len(body) > EMBEDDINGS_TAIL_PARSE:
        found = _embeddings_tail(body)
        if found is not None:
            return found
    obj = loads(body)
    if obj is None:
        return Metered(error="response body is not JSON")
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    raw_usage = usage_of(obj)
    usage = with_web_searches(extract_usage(raw_usage), obj.get("output"))
    error = error_message(obj.get("error"))
    if error is None and obj.get("status") == "failed":
        error = "response failed"
    status = _str(obj.get("status")) if obj.get("object") == "response" else None
    if usage is None and error is None and not (obj.get("background") is True and status in RUNNING):
        error = "no usage in response"
    response = obj.get("response")  # a Responses event saved as a body (background mode)
    tier = obj.get("service_tier") or (response.get("service_tier") if isinstance(response, dict) else None)
    return Metered(
        usage=usage,
        model=_str(obj.get("model")),
        error=error,
        provider_cost=extract_cost(raw_usage, body),
        output_text=None if usage is not None else _cap(_texts_of_body(obj)),
        service_tier=_str(tier),
        response_id=_str(obj.get("id")) if status is not None and obj.get("background") is True else None,
        response_status=status,
        context_id=_str(obj.get("id")) if status is not None else None,
        tool_images=tool_images_of(obj),
    )


def is_usage_only_chunk(event: SSEEvent) -> bool:
    """True for the extra chat chunk sent for ``stream_options.include_usage``.

    That is a JSON chunk with a non-null ``usage`` (or Groq's ``x_groq.usage``) and an
    empty (or absent) ``choices``. A last content chunk that also carries usage (Mistral,
    Together, Cerebras, Groq's ``x_groq``: it has the ``finish_reason``) is not one.
    Ordinary chunks are rejected by a substring test, without JSON decoding.
    """
    if not has_usage(event.data):
        return False
    obj = loads(event.data)
    return isinstance(obj, dict) and isinstance(usage_of(obj), dict) and obj.get("choices", []) in ([], None)


def has_usage(data: bytes) -> bool:
    """Cheap test: does this JSON text hold a ``"usage"`` key whose value is an object?

    One regex search (C): OpenAI sends ``"usage":null`` on every chunk of a stream. Any other
    value that is not an object (``false``, a number, a string, a list) is no usage either: it
    is not counted as a chunk with usage (which would make a later one look like a running count).
    """
    return _USAGE_OBJECT.search(data) is not None


_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


class _SSEBlock(bytes):
    """Whole SSE events kept raw by ``TextCollector.add_events`` (not one event's data)."""


class TextCollector:
    """The completion text of a stream, for an offline estimate when no usage comes.

    Streams keep the raw JSON of their content chunks (a list append per chunk, up to
    ``RAW_TEXT_CAP`` bytes) and decode them only if ``text()`` is asked for, which
    callers do only when usage is missing. ``text()`` may be called again later: it
    extracts only what arrived since. At most ``TEXT_CAP`` characters are returned.
    """

    __slots__ = ("_extract", "_keep", "_parts", "_raw", "_raw_size", "_text_size", "truncated")

    def __init__(
        self, extract: Callable[[bytes], list[str]], keep: Callable[[str | None, bytes], bool] | None = None
    ) -> None:
        self._extract = extract
        self._keep = keep  # which events of a kept block hold text (as the parser's feed judges)
        self._raw: list[bytes] = []
        self._raw_size = 0
        self._parts: list[str] = []
        self._text_size = 0
        self.truncated = False  # a cap was reached: the text is a prefix of the completion

    def add(self, data: bytes) -> None:
        """Keep one chunk's raw JSON for later."""
        if self.truncated:  # the text is at its cap already: nothing more is kept
            return
        size = self._raw_size + len(data)
        if size > RAW_TEXT_CAP:
            self.text()  # decode what is held: only TEXT_CAP (characters) cuts, however it was chunked
            size = len(data)
        self._raw.append(data)
        self._raw_size = size

    def add_events(self, block: bytes) -> None:
        """Keep a block of whole SSE events (framed only if the text is ever asked for)."""
        self.add(_SSEBlock(block))

    def text(self) -> str | None:
        """All text so far (None if there is none)."""
        if self._raw:
            raw, self._raw, self._raw_size = self._raw, [], 0
            for data in raw:
                if isinstance(data, _SSEBlock):
                    for event in SSEDecoder().feed(data):
                        if event.data and (self._keep is None or self._keep(event.event, event.data)):
                            self._take(self._extract(event.data))
                else:
                    self._take(self._extract(data))
        if not self._parts:
            return None
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0]

    def _take(self, parts: list[str]) -> None:
        for part in parts:
            room = TEXT_CAP - self._text_size
            if room <= 0:
                self.truncated = True
                return
            if len(part) > room:
                part = part[:room]
                self.truncated = True
            self._parts.append(part)
            self._text_size += len(part)


class StreamParser:
    """Feed the SSE events of one streamed response; ``result()`` at any time."""

    __slots__ = (
        "_bad",
        "_context_id",
        "_cost",
        "_done",
        "_error",
        "_finish_data",
        "_images",
        "_lazy",
        "_model",
        "_model_tries",
        "_prev_usage_data",
        "_response_id",
        "_status",
        "_text",
        "_tier",
        "_tool_images",
        "_usage",
        "_usage_chunks",
        "_usage_data",
        "flavor",
    )

    def __init__(self, flavor: str) -> None:
        self.flavor = flavor
        self._usage: Usage | None = None
        self._cost: Decimal | None = None
        self._model: str | None = None
        self._error: str | None = None
        self._done = False
        self._bad = 0  # events that looked relevant but were not JSON objects
        self._model_tries = 0
        # chat: the last two chunks that carry usage, decoded in result() (last valid one wins)
        self._usage_data: bytes | None = None
        self._prev_usage_data: bytes | None = None
        self._usage_chunks = 0  # chat: how many chunks carried usage (two or more: a running count)
        self._finish_data: list[bytes] = []  # chat: chunks with a finish_reason (one per choice)
        self._lazy: tuple[Usage | None, str | None, Decimal | None, int, str | None, bool] | None = None
        self._tier: str | None = None  # the service tier (Responses: from the final event)
        self._status: str | None = None  # the Responses object's status (its last event's)
        self._response_id: str | None = None  # a background response's id (followed if cut short)
        self._context_id: str | None = None  # the Responses object's id, in any mode
        self._text = TextCollector(_delta_texts if flavor == "responses" else _chat_texts)
        self._images: ImageEvents | None = None  # Responses: image call events, once one is seen
        self._tool_images: ToolImages | None = None  # the final event's image calls

    @property
    def done(self) -> bool:
        """The stream said it is finished (``[DONE]`` or a final Responses event)."""
        return self._done

    def take_plain(self, block: bytes) -> bool:
        """Take a block of whole events that can only carry completion text (kept raw for a later
        estimate): no usage, no ``finish_reason`` (``_ends_answer`` reads it), no ``[DONE]``, no
        error, the model known. False (nothing taken) when the block may carry more: it is then
        fed event by event, as ``feed`` would take it."""
        if self.flavor not in CHAT_LIKE or (self._model is None and self._model_tries < _MODEL_TRIES):
            return False
        if b'"error"' in block or b"[DONE]" in block or has_usage(block) or _FINISHED.search(block):
            return False
        if block.count(b"\ndata") != block.count(b"\n\ndata"):  # an event of several lines: joined first
            return False
        self._text.add_events(block)
        return True

    def feed(self, event: SSEEvent) -> None:
        """Take one event (comments and empty events are ignored)."""
        if not event.data:
            return
        if self.flavor == "responses":
            self._feed_responses(event)
        else:
            self._feed_chat(event.data)

    def result(self) -> Metered:
        """Usage seen so far (None if none), the reported model, the provider's cost, an error if any.

        ``output_text`` is filled only when there is no usage, or when a chat stream cut short
        had a running count on its content chunks (two or more chunks with usage, or usage on a
        chunk with content; not a usage-only chunk, no ``[DONE]``, choices seen not all finished):
        that count is then not the call's (``output_partial``).
        """
        usage, model, cost, bad, tier = self._usage, self._model, self._cost, self._bad, self._tier
        partial = False
        if self._usage_data is not None:
            if self._lazy is None:
                self._lazy = self._resolve()
            lazy_usage, lazy_model, lazy_cost, lazy_bad, lazy_tier, final = self._lazy
            bad += lazy_bad
            if lazy_usage is not None:
                usage, cost = lazy_usage, lazy_cost
                model = lazy_model or model
                tier = lazy_tier or tier
                partial = not (final or self._done)
        error = self._error
        if usage is None and error is None:
            if self._done and self.flavor in CHAT_LIKE:
                error = "stream ended without usage"
            elif bad:
                error = f"no usage in stream ({bad} event(s) not JSON)"
            else:
                error = "no usage in stream"
        text = self._text.text() if usage is None or partial else None
        tool_images = self._tool_images
        if self._images is not None:
            tool_images = self._images.merged(tool_images, ended=self._done)
        return Metered(
            usage=usage,
            model=model,
            error=error,
            provider_cost=cost,
            output_text=text,
            service_tier=tier,
            response_id=self._response_id,
            response_status=self._status,
            context_id=self._context_id,
            tool_images=tool_images,
            output_partial=partial,
        )

    def _resolve(self) -> tuple[Usage | None, str | None, Decimal | None, int, str | None, bool]:
        """Decode the remembered usage chunk(s): the last one that holds usage wins. (usage, model,
        cost, chunks not JSON, service tier, whether that chunk's count is the call's:
        ``_ends_answer``)."""
        bad = 0
        for data in (self._usage_data, self._prev_usage_data):
            if data is None:
                continue
            obj = loads(data)
            if not isinstance(obj, dict):
                bad += 1
                continue
            raw_usage = usage_of(obj)
            usage = extract_usage(raw_usage)
            if usage is not None:
                tier = _str(obj.get("service_tier"))
                cost = extract_cost(raw_usage, data)
                return usage, _str(obj.get("model")), cost, bad, tier, self._ends_answer(data, obj)
        return None, None, None, bad, None, True

    def _ends_answer(self, data: bytes, obj: dict[str, Any]) -> bool:
        """Is the count of this chat chunk with usage the call's? Yes for a chunk without choices
        (``include_usage``'s own), and where nothing shows a running count: the stream's only
        chunk with usage, its delta without content (OpenRouter's trailing usage chunk, with
        ``finish_reason`` null). Else only once every choice seen (in the chunks with a
        ``finish_reason`` and this one) has finished."""
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return True
        if self._usage_chunks < 2 and not _choice_texts(choices, streamed=True):
            return True
        seen: set[Any] = set()
        finished: set[Any] = set()
        for raw in self._finish_data:
            _note_choices(obj if raw is data else loads(raw), seen, finished)
        _note_choices(obj, seen, finished)
        return seen <= finished

    def _feed_chat(self, data: bytes) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        self._text.add(data)
        if has_usage(data):
            self._prev_usage_data, self._usage_data = self._usage_data, data
            self._usage_chunks += 1
            self._lazy = None
        if _FINISHED.search(data) is not None and len(self._finish_data) < _MAX_FINISHED:
            self._finish_data.append(data)  # decoded only if a running count needs it
            self._lazy = None
        want_model = self._model is None and self._model_tries < _MODEL_TRIES
        if not (want_model or b'"error"' in data):
            return
        self._model_tries += want_model
        obj = loads(data)
        if not isinstance(obj, dict):
            self._bad += 1
            return
        model = _str(obj.get("model"))
        if model is not None:
            self._model = model
        error = error_message(obj.get("error"))
        if error is not None:
            self._error = error

    def _feed_responses(self, event: SSEEvent) -> None:
        name = event.event
        data = event.data
        if name is not None and name.endswith(".delta"):  # text, reasoning summary, arguments
            if name != "response.audio.delta":
                self._text.add(data)
            return
        if (name is None or name == "message") and _delta_type(data):  # a gateway dropped "event:"
            self._text.add(data)
            return
        image_kind = name if name is not None and name.startswith(IMAGE_EVENT) else None
        if image_kind is None and (name is None or name == "message"):
            image_kind = image_event_type(data)
        if image_kind is not None:  # a partial image is megabytes of base64: never decoded
            if self._images is None:
                self._images = ImageEvents()
            self._images.feed(image_kind, data)
            return
        if not (
            name in _RESPONSES_FINAL
            or name == "error"
            or (name in _RESPONSES_START and self._model is None)
            or ((name is None or name == "message") and (has_usage(data) or b'"error"' in data))
        ):
            return
        data = without_image_results(data)  # a final event's images: never decoded
        obj = loads(data)
        if not isinstance(obj, dict):
            self._bad += 1
            return
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "error":
            self._error = error_message(obj.get("error") or obj) or "error event"
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        found = response_metered(kind, response, data)
        self._model = found.model or self._model
        self._tier = found.service_tier or self._tier
        self._status = found.response_status or self._status
        self._context_id = _str(response.get("id")) or self._context_id
        if response.get("background") is True:
            self._response_id = _str(response.get("id")) or self._response_id
        if found.usage is not None:
            self._usage, self._cost = found.usage, found.provider_cost
        if found.tool_images is not None:
            self._tool_images = found.tool_images
        if kind in _RESPONSES_FINAL:
            self._done = True
        if found.error is not None:
            self._error = found.error


# A chat chunk with a finish_reason that is not null (a JSON string escapes its quotes: text never matches).
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_MAX_FINISHED = 128  # finishing chunks kept (one per choice; OpenAI's n is at most 128)


def _note_choices(obj: Any, seen: set[Any], finished: set[Any]) -> None:
    """Add a chat chunk's choice indexes to ``seen``, those with a ``finish_reason`` to ``finished``."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            index = choice.get("index", 0)
            index = index if isinstance(index, int | str) else repr(index)
            seen.add(index)
            if choice.get("finish_reason") is not None:
                finished.add(index)


def response_metered(kind: str, response: dict[str, Any], raw: bytes) -> Metered:
    """What one Responses event's ``response`` object says (a stream's ``response.created`` or its
    final event; the WebSocket mode's events): its model, service tier and status, its usage with
    the hosted web and file searches of its ``output``, the provider's cost (read from ``raw``,
    the event's JSON), its image_generation tool's work (``tool_images_of``) and, for a failed
    response, why. ``error`` is None when nothing failed."""
    usage = with_web_searches(extract_usage(response.get("usage")), response.get("output"))
    error = None
    if kind == "response.failed" or response.get("status") == "failed":
        error = error_message(response.get("error")) or "response failed"
    return Metered(
        usage=usage,
        model=_str(response.get("model")),
        error=error,
        provider_cost=extract_cost(response.get("usage"), raw) if usage is not None else None,
        service_tier=_str(response.get("service_tier")),
        response_status=_str(response.get("status")),
        tool_images=tool_images_of(response),
    )


def _delta_type(data: bytes) -> bool:
    """Is this nameless Responses event a ``*.delta`` with text (judged from its leading ``type``)?"""
    end = data.find(b'.delta"', 0, 96)
    start = data.rfind(b'"', 0, end) if end > 0 else -1
    return start >= 0 and data[start : end + 7] != b'"response.audio.delta"'


def _chat_texts(data: bytes) -> list[str]:
    """The text of one chat chunk (content, reasoning, refusal, tool-call arguments)."""
    obj = loads(data)
    return _choice_texts(obj.get("choices"), streamed=True) if isinstance(obj, dict) else []


def _choice_texts(choices: Any, streamed: bool = False) -> list[str]:
    """Texts of chat ``choices``: their ``delta`` in a stream, their ``message`` in a body.

    (Perplexity sends both in both; in its streams ``message`` is the text so far.)
    """
    out: list[str] = []
    if not isinstance(choices, list):
        return out
    keys = ("delta", "message") if streamed else ("message", "delta")
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get(keys[0])
        if not isinstance(message, dict):
            message = choice.get(keys[1])
        if not isinstance(message, dict):
            text = choice.get("text")  # legacy completions shape
            if isinstance(text, str) and text:
                out.append(text)
            continue
        for key in ("reasoning_content", "reasoning", "content", "refusal"):
            value = message.get(key)
            if isinstance(value, str):
                if value:
                    out.append(value)
            elif isinstance(value, list):  # content parts
                out.extend(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    out.extend(
                        v for k in ("name", "arguments") if isinstance(v := function.get(k), str) and v
                    )
    return out


def _delta_texts(data: bytes) -> list[str]:
    """The ``delta`` of one Responses ``*.delta`` event (text, reasoning summary, arguments)."""
    obj = loads(data)
    delta = obj.get("delta") if isinstance(obj, dict) else None
    return [delta] if isinstance(delta, str) and delta else []


def _texts_of_body(obj: dict[str, Any]) -> list[str]:
    """The completion text of a complete chat or Responses body."""
    out = _choice_texts(obj.get("choices"))
    output = obj.get("output")
    if isinstance(output, list):
        for item in output:
            if not isinstance(item, dict):
                continue
            for key in ("content", "summary"):
                parts = item.get(key)
                if isinstance(parts, list):
                    out.extend(
                        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
                    )
            if isinstance(item.get("arguments"), str):
                out.append(item["arguments"])
    return out


def _cap(parts: list[str]) -> str | None:
    """Join texts, at most ``TEXT_CAP`` characters; None if empty."""
    text = "".join(parts)[:TEXT_CAP]
    return text or None


def error_message(err: Any) -> str | None:
    """A short text for an API error object (``{"type", "code", "message"}``), a string, or None."""
    if err is None or err == {} or err == "":
        return None
    if isinstance(err, dict):
        kind = err.get("code") or err.get("type")
        if kind == "error":
            kind = None
        message = err.get("message")
        text = f"{kind}: {message}" if kind and message else str(message or kind or err)
    else:
        text = str(err)
    return text[:_MAX_ERROR]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
