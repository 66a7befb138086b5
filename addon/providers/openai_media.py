"""OpenAI image generation and audio transcription answers -> normalised usage.

Flavors: ``images`` (``POST /v1/images/generations``, ``/v1/images/edits``,
``/v1/images/variations``) and ``transcription`` (``/v1/audio/transcriptions``,
``/v1/audio/translations``). Pure functions over bytes; no mitmproxy.

- GPT image models report token usage (``input_tokens_details.image_tokens``; output tokens
  are image tokens unless ``output_tokens_details`` splits them). DALL·E models report none:
  they are billed per image, which no price list here has.
- Transcriptions report ``{"type": "tokens", ...}`` (gpt-4o-*-transcribe, audio input tokens
  in ``input_token_details.audio_tokens``) or ``{"type": "duration", "seconds": N}``
  (whisper-1, billed per second of audio); ``response_format`` text, srt and vtt answer plain
  text without usage.
- Streams (SSE): ``image_generation.partial_image`` / ``image_edit.partial_image`` events are
  base64 images of megabytes, never JSON-decoded; ``image_generation.completed``,
  ``image_edit.completed`` and ``transcript.text.done`` carry the usage, found without decoding
  the image either.

Uploads (edits, variations, audio) are multipart/form-data: ``read_form`` finds their small text
fields (``model``, and ``n``, ``quality``, ``size``...) by walking the part boundaries, never
decoding the files.

A budget reservation of an image call counts the image output tokens its request asks for
(``reserved_image_tokens``: quality, size, n, streamed partial images), from OpenAI's table, and
an edit's input images (``reserved_input_image_tokens``: the most one image can cost, its pixels
never read; more with ``input_fidelity: high``). A Responses request with the ``image_generation``
tool reserves the images the tool may write the same way (``image_tool_tokens``); its tools are read
for the allowlist (``image_tools``, rewritten by ``with_image_tool_models``), and the images it wrote
counted as OpenAI bills them (``image_tool_usage``: the answer's ``tool_usage``, else the table).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from addon.model_rules import base_model
from addon.providers.openai_api import IMAGE_TOOL, MAX_TOOL_MODEL_NAME, error_message, image_usage
from addon.providers.values import bare_path, flavor_by_suffix, loads
from addon.providers.values import token_count as _int
from addon.sse import SSEEvent
from addon.usage import Metered, ToolImages, Usage

FLAVORS: tuple[str, ...] = ("images", "transcription")
MEDIA_FLAVORS = frozenset(FLAVORS)

_PATH_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("/images/generations", "images"),
    ("/images/edits", "images"),
    ("/images/variations", "images"),  # dall-e-2 only
    ("/audio/transcriptions", "transcription"),
    ("/audio/translations", "transcription"),  # whisper-1 only
)
# The event that ends a stream, and carries its usage.
_FINAL_EVENTS = frozenset({"image_generation.completed", "image_edit.completed", "transcript.text.done"})
_FINAL_OF = {"images": "its completed event", "transcription": "transcript.text.done"}
# Bodies and events above this size (base64 images) are searched for their usage member
# instead of being decoded whole.
SEARCH_FROM = 64 * 1024
_HEAD = 512  # bytes of an event searched first for its "type"

NO_IMAGE_USAGE = "no usage in the answer (DALL-E models report none: they are billed per image)"
PLAIN_TEXT = "plain-text answer (response_format text, srt or vtt): it carries no usage"
FROM_DURATION = "no usage object: the answer's duration taken as the billed audio seconds"
# Why a multipart upload is refused rather than downgraded (the meter's refusal says so).
FORM_NOT_REWRITTEN = (
    "a multipart/form-data upload (an image or audio file) is never rewritten by the proxy, "
    "so it is refused instead of downgraded: ask for an allowed model"
)

# "usage": the object (two levels of nesting at most, as OpenAI's details are) or null. Base64
# has no quotes and a JSON string escapes its own, so in an image answer this only matches a key.
_USAGE_MEMBER = re.compile(rb'"usage"\s*:\s*(null|\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
_TYPE_MEMBER = re.compile(rb'"type"\s*:\s*"([^"\\]{1,100})"')


def flavor_for_path(path: str) -> str | None:
    """``images`` or ``transcription`` for such a request path (query allowed), else None."""
    return flavor_by_suffix(path, _PATH_SUFFIXES)


def unpriced_reason(flavor: str, model: str | None) -> str:
    """Why an image or transcription call without usage has no price (for its ``price_source``)."""
    if flavor == "images" and model and model.startswith("dall-e"):
        return f"{model} is billed per image, a price it does not have"
    kind = "image" if flavor == "images" else "audio"
    return f"no usage reported ({kind} calls are never estimated offline)"


# --- usage objects ---------------------------------------------------------------------------


def _seconds(value: Any) -> float | int | None:
    """A duration in seconds: a finite, non-negative number (not a bool), else None."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and math.isfinite(value) and value >= 0:
        return int(value) if value.is_integer() else value
    return None


def transcription_usage(usage: Any) -> Usage | None:
    """Normalise a transcription's ``usage``: tokens (audio input a subset) or audio seconds."""
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration" or ("seconds" in usage and "input_tokens" not in usage):
        seconds = _seconds(usage.get("seconds"))
        return Usage(audio_seconds=seconds) if seconds is not None else None
    if "input_tokens" not in usage and "output_tokens" not in usage:
        return None
    details = usage.get("input_token_details")
    if not isinstance(details, dict):
        details = usage.get("input_tokens_details")
    input_tokens = _int(usage.get("input_tokens"))
    audio = _int(details.get("audio_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=input_tokens,
        output_tokens=_int(usage.get("output_tokens")),
        input_audio_tokens=max(0, min(audio, input_tokens)),
    )


def _usage_of(flavor: str, usage: Any) -> Usage | None:
    return image_usage(usage) if flavor == "images" else transcription_usage(usage)


def _usage_member(data: bytes) -> tuple[bool, Any]:
    """(found, raw usage) from the last ``"usage"`` member of a large JSON text, undecoded
    elsewhere. ``(False, None)`` when it cannot tell (the caller decodes the whole text)."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return True, None
    match = _USAGE_MEMBER.match(data, at)
    if match is None:
        return False, None
    raw = match.group(1)
    return True, None if raw == b"null" else loads(raw)


# --- whole answers ---------------------------------------------------------------------------


def parse_response(flavor: str, body: bytes) -> Metered:
    """Usage (or why there is none) of a complete image or transcription answer. Never raises."""
    if not body.strip():
        return Metered(error="empty response body")
    if flavor == "transcription":
        return _transcription(body)
    return _images(body)


def _images(body: bytes) -> Metered:
    if len(body) > SEARCH_FROM and body.lstrip()[:1] == b"{" and body.rstrip()[-1:] == b"}":
        found, raw = _usage_member(body)  # megabytes of base64 images: not decoded
        if found:
            usage = image_usage(raw)
            return Metered(usage=usage, error=None if usage is not None else NO_IMAGE_USAGE)
    obj = loads(body)
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    usage = image_usage(obj.get("usage"))
    error = error_message(obj.get("error"))
    if usage is None and error is None:
        error = NO_IMAGE_USAGE
    return Metered(usage=usage, error=error)


def _transcription(body: bytes) -> Metered:
    obj = loads(body) if body.lstrip()[:1] == b"{" else None
    if not isinstance(obj, dict):  # text, srt, vtt (a transcript may well start with "{" too)
        return Metered(error=PLAIN_TEXT)
    usage = transcription_usage(obj.get("usage"))
    error = error_message(obj.get("error"))
    if usage is None and error is None:
        seconds = _seconds(obj.get("duration"))  # verbose_json of a translation: no usage member
        if seconds is not None:
            return Metered(usage=Usage(audio_seconds=seconds), error=FROM_DURATION)
        error = "no usage in the answer"
    return Metered(usage=usage, error=error)


# --- streams ---------------------------------------------------------------------------------


def _event_type(data: bytes) -> str | None:
    """A nameless event's ``type`` (the first one naming an event, ``x.y`` or ``error``: a nested
    ``usage.type`` says ``tokens``), looked for in the event's head, then in all of it."""
    for text in (data[:_HEAD], data) if len(data) > _HEAD else (data,):
        for match in _TYPE_MEMBER.finditer(text):
            kind = match.group(1).decode("ascii", "replace")
            if "." in kind or kind == "error":
                return kind
    return None


class StreamParser:
    """Feed the SSE events of one image or transcription stream; ``result()`` at any time.

    Partial images and text deltas are passed over by their name (or leading ``type``); only
    the final event's usage member is decoded.
    """

    __slots__ = ("_bad", "_done", "_error", "_usage", "flavor")

    def __init__(self, flavor: str) -> None:
        self.flavor = flavor
        self._usage: Usage | None = None
        self._error: str | None = None
        self._done = False
        self._bad = 0  # final events that were not JSON objects

    @property
    def done(self) -> bool:
        """The final event (``*.completed``, ``transcript.text.done``) was seen."""
        return self._done

    def feed(self, event: SSEEvent) -> None:
        """Take one event (comments, empty events and ``[DONE]`` are ignored)."""
        data = event.data
        if not data or data == b"[DONE]":
            return
        kind = event.event if event.event not in (None, "message") else _event_type(data)
        if kind in _FINAL_EVENTS:
            self._final(data)
        elif kind == "error" or (kind is not None and kind.endswith(".failed")):
            obj = loads(data) if len(data) <= SEARCH_FROM else None
            found = error_message(obj.get("error") or obj) if isinstance(obj, dict) else None
            self._error = found or "error event"

    def _final(self, data: bytes) -> None:
        self._done = True
        found, raw = _usage_member(data) if len(data) > SEARCH_FROM else (False, None)
        if not found:
            obj = loads(data)
            if not isinstance(obj, dict):
                self._bad += 1
                return
            raw = obj.get("usage")
        usage = _usage_of(self.flavor, raw)
        if usage is not None:
            self._usage = usage  # one final event per stream (n=1): the last one stands

    def result(self) -> Metered:
        """Usage seen so far (None if none) and, without it, why."""
        error = self._error
        if self._usage is None and error is None:
            final = _FINAL_OF.get(self.flavor, "final")
            if self._bad:
                error = f"no usage in stream ({self._bad} final event(s) not JSON)"
            elif self._done:
                error = "stream ended without usage"
            else:
                error = f"no usage in stream (it ended before {final})"
        return Metered(usage=self._usage, error=error)


# --- what an image request asks for (its budget reservation) -----------------------------------

# Image output tokens of one image by quality and size: OpenAI's image generation guide, "Cost and
# latency", for the GPT image models before gpt-image-2 (developers.openai.com/api/docs/guides/
# image-generation#cost-and-latency). gpt-image-1.5's per-image prices there are these counts at
# its $32/M image output rate. gpt-image-2 and later bill by another formula: not here.
IMAGE_OUTPUT_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
TABLED_IMAGE_MODELS = frozenset({"gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"})
MAX_TABLED_IMAGE_TOKENS = max(tokens for sizes in IMAGE_OUTPUT_TOKENS.values() for tokens in sizes.values())
# The fewest output tokens an image is taken to cost (the smallest in the table, low 1024x1024): a
# tool_usage reporting fewer for the images written has skipped a record (the API says it may).
MIN_TABLED_IMAGE_TOKENS = min(tokens for sizes in IMAGE_OUTPUT_TOKENS.values() for tokens in sizes.values())
_LATER_IMAGE_MODELS = "gpt-image-"  # a GPT image model without a table (gpt-image-2...)
PARTIAL_IMAGE_TOKENS = 100  # each partial image of a stream ("Partial images cost", the same guide)
MAX_IMAGES = 10  # n: 1 to 10 (the API reference)
MAX_PARTIAL_IMAGES = 3  # partial_images: 0 to 3
# The fields of an image request (JSON or form) its reservation reads.
RESERVATION_FIELDS = frozenset({"n", "quality", "size", "stream", "partial_images", "input_fidelity"})
_MAX_RESERVATION_FIELD = 64  # bytes of such a form field read (longer: not a value the API takes)


def _values(value: Any) -> tuple[Any, ...]:
    """A field's values: a form field given more than once has several (the largest counts)."""
    return value if isinstance(value, tuple) else (value,)


_MAX_DIGITS = 6  # a count longer than this is no count the API takes (and int() caps digits)


def _count(value: Any) -> int | None:
    """A whole number from JSON (not a bool) or from a form field's digits, else None."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS:
            return int(digits)
    return None


def _most(value: Any, absent: int, most: int) -> int:
    """The largest of a field's counts, at most ``most``: ``absent`` when it is not given, and
    ``most`` when one cannot be read (``"+3"``, ``3.0``: a server may read them as 3)."""
    if value is None:
        return absent
    counts = [_count(one) for one in _values(value)]
    if any(count is None for count in counts):
        return most
    return min(max(absent, *counts), most)  # type: ignore[type-var]


def _choices(value: Any, known: Mapping[str, Any]) -> set[str]:
    """The keys of ``known`` a field allows: the one it names, else all (``auto``, absent, unknown)."""
    chosen: set[str] = set()
    for one in _values(value):
        if isinstance(one, str) and one in known:
            chosen.add(one)
        else:
            return set(known)
    return chosen or set(known)


def reserved_image_tokens(model: str | None, request: Mapping[str, Any] | None) -> int | None:
    """The image output tokens an image request may be billed for: ``n`` images of its quality and
    size (the largest when ``auto`` or absent: a reservation must not fall short), plus 100 for each
    partial image of a stream. ``request`` is its JSON body or its form's fields. A count that cannot
    be read (``"+3"``) counts as the most the API takes. A GPT image model without a documented table
    (gpt-image-2...) reserves the table's largest image for each; None for other models (DALL·E).
    Never raises."""
    if not model or not isinstance(request, Mapping):
        return None
    base = base_model(model)
    if base in TABLED_IMAGE_MODELS:
        qualities = _choices(request.get("quality"), IMAGE_OUTPUT_TOKENS)
        sizes = _choices(request.get("size"), IMAGE_OUTPUT_TOKENS["high"])
        per_image = max(IMAGE_OUTPUT_TOKENS[quality][size] for quality in qualities for size in sizes)
    elif base.startswith(_LATER_IMAGE_MODELS):  # gpt-image-2...: no table; its largest, at least
        per_image = MAX_TABLED_IMAGE_TOKENS
    else:
        return None
    images = _most(request.get("n"), 1, MAX_IMAGES)
    streamed = any(
        v is True or (isinstance(v, str) and v.lower() == "true") for v in _values(request.get("stream"))
    )
    if streamed:
        per_image += _most(request.get("partial_images"), 0, MAX_PARTIAL_IMAGES) * PARTIAL_IMAGE_TOKENS
    return images * per_image


# Image input tokens of one input image of a GPT image model before gpt-image-2 (the images and vision
# guide, "GPT Image 1": developers.openai.com/api/docs/guides/images-vision#gpt-image-1): scaled to fit
# 2048x2048, then down so its shortest side is 512px; 65 tokens, and 129 for each 512px tile. Its
# shortest side is then at most 512 and its longest at most 2048: 4 tiles at most, 581 tokens, what a
# reservation counts for each image without reading its pixels. ``input_fidelity: high`` adds 4,160
# tokens for a square image and 6,240 for any other: 6,240 reserved (gpt-image-1-mini does not take it).
INPUT_IMAGE_BASE_TOKENS = 65
INPUT_IMAGE_TILE_TOKENS = 129
MAX_INPUT_IMAGE_TILES = 4
HIGH_FIDELITY_TOKENS = 6240  # the larger of the two (square: 4,160)
HIGH_FIDELITY_MODELS = TABLED_IMAGE_MODELS - {"gpt-image-1-mini"}
MAX_INPUT_IMAGES = 16  # an edit takes up to 16 images (the API reference)
_EDITS = "/images/edits"
_IMAGE_PARTS = frozenset({b"image", b"image[]"})  # an edit's image files in a form (one, or a list)


def reserved_input_image_tokens(model: str | None, request: Mapping[str, Any] | None, images: int) -> int:
    """The image input tokens ``images`` input images of an edit may be billed for: the most one
    image can cost (581), plus 6,240 each with ``input_fidelity: high``; at most 16 images. 0 for a
    model without a documented formula (DALL·E, gpt-image-2...). Never raises."""
    if type(images) is not int or images <= 0 or not model:
        return 0
    base = base_model(model)
    if base not in TABLED_IMAGE_MODELS:
        return 0
    per_image = INPUT_IMAGE_BASE_TOKENS + MAX_INPUT_IMAGE_TILES * INPUT_IMAGE_TILE_TOKENS
    fidelity = request.get("input_fidelity") if isinstance(request, Mapping) else None
    if base in HIGH_FIDELITY_MODELS and any(
        isinstance(v, str) and v.strip().lower() == "high" for v in _values(fidelity)
    ):
        per_image += HIGH_FIDELITY_TOKENS
    return min(images, MAX_INPUT_IMAGES) * per_image


# The Responses API's image_generation tool (IMAGE_TOOL): its image model when it names none, as the
# openai SDK 3.57's types say (openai/types/responses/tool.py: "Default: gpt-image-2.6-sunburst";
# gpt-image-1, the earlier default, was shut down on 2026-10-23). The server picks it and may change
# it, so where models are restricted a tool naming none has it checked and written in
# (addon.image_tool). Its images are billed as this model, which genai-prices 0.2.3 has no price
# for: unless a policies.yaml ``prices:`` entry gives one, the row is priced at
# ``RESERVATION_IMAGE_MODEL``'s rates (addon.image_tool.price_unpriced_images). Its images are
# billed at the image model's rates, apart from the response's usage, which reports only the text
# model's tokens.
DEFAULT_IMAGE_TOOL_MODEL = "gpt-image-2.6-sunburst"
# The model whose rates reserve the images of an image model without a price here (the tool's
# default, an Azure deployment's name): gpt-image-1's $40/M, the highest GPT image output rate known.
RESERVATION_IMAGE_MODEL = "gpt-image-1"


def image_tool_tokens(body: Mapping[str, Any] | None) -> tuple[str, int] | None:
    """(image model, image output tokens) a Responses request's ``image_generation`` tool may be
    billed for: an image of the tool's quality and size (the largest when ``auto`` or absent) and
    100 per partial image it asks for, for each built-in tool call ``max_tool_calls`` allows (one
    when it sets none: a response may call the tool again, which nothing else bounds; at most
    ``MAX_IMAGES``). An image model without a table reserves the largest image (gpt-image-2 at its
    own rate; one unknown here, such as an Azure deployment, at ``RESERVATION_IMAGE_MODEL``'s; one
    without a price, the proxy reserves at that model's rate too). None without the
    tool (or with ``tool_choice: none``). Never raises."""
    tools = body.get("tools") if isinstance(body, Mapping) else None
    if not isinstance(tools, list) or tool_choice_none(body):
        return None
    found: tuple[str, int] | None = None
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != IMAGE_TOOL:
            continue
        model = tool.get("model")
        model = model.strip() if isinstance(model, str) and model.strip() else DEFAULT_IMAGE_TOOL_MODEL
        # Partial images come only in a stream (HTTP or WebSocket): counted whenever asked for.
        asked = {
            "quality": tool.get("quality"),
            "size": tool.get("size"),
            "stream": True,
            "partial_images": tool.get("partial_images"),
        }
        tokens = reserved_image_tokens(model, asked)
        if tokens is None:  # a model without a table or price here (an Azure deployment...)
            model = RESERVATION_IMAGE_MODEL  # its rate, for the largest image
            tokens = reserved_image_tokens(model, {**asked, "quality": None, "size": None})
        if tokens is not None and (found is None or tokens > found[1]):
            found = (model, tokens)
    if found is None:
        return None
    return found[0], found[1] * _tool_calls(body)  # type: ignore[arg-type]


def _tool_calls(body: Mapping[str, Any]) -> int:
    """How many built-in tool calls a Responses request may make, for its reservation: its
    ``max_tool_calls`` (at most ``MAX_IMAGES``), else one (nothing else bounds it)."""
    calls = body.get("max_tool_calls")
    return min(calls, MAX_IMAGES) if type(calls) is int and calls > 0 else 1


def svg_authors(body: Mapping[str, Any] | None) -> tuple[tuple[str, ...], int]:
    """(the SVG author model each ``image_generation`` tool of a Responses request names
    (``tools[i].svg.model``), the image calls each may author for: ``max_tool_calls`` or one),
    for its reservation: none with ``tool_choice: none``. Never raises."""
    if not isinstance(body, Mapping) or tool_choice_none(body):
        return (), 0
    authors = tuple(tool.svg_model for tool in image_tools(body) if tool.svg_model is not None)
    return authors, _tool_calls(body) if authors else 0


@dataclass(frozen=True, slots=True)
class ImageTool:
    """One ``image_generation`` tool of a Responses request: its place in ``tools``, the model it
    names (None: none, so the tool's default), whether that can be read (a ``model`` that is not a
    non-empty string of at most ``MAX_TOOL_MODEL_NAME`` characters cannot), and the quality and
    size it asks for (short strings only, else None: a waiting response keeps them, outside what a
    WebSocket's ``MAX_KEPT_BYTES`` bounds)."""

    index: int
    model: str | None
    readable: bool = True
    quality: str | None = None
    size: str | None = None
    svg_model: str | None = None  # the SVG author model it names (``svg.model``), if any
    svg_readable: bool = True  # False: ``svg`` or ``svg.model`` is there but no object / name

    @property
    def runs(self) -> str | None:
        """The model the tool runs: the one it names, else the default (None: unreadable)."""
        if not self.readable:
            return None
        return self.model if self.model is not None else DEFAULT_IMAGE_TOOL_MODEL


def image_tools(body: Mapping[str, Any] | None) -> tuple[ImageTool, ...]:
    """The ``image_generation`` tools of a Responses request body (whatever its ``tool_choice``:
    each is checked against the allowlist). Never raises."""
    tools = body.get("tools") if isinstance(body, Mapping) else None
    if not isinstance(tools, list):
        return ()
    found = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != IMAGE_TOOL:
            continue
        model = tool.get("model")
        readable = model is None or model_name(model) is not None
        named = model_name(model)
        svg_model, svg_readable = _svg_model(tool.get("svg"))
        quality, size = _kept(tool.get("quality")), _kept(tool.get("size"))
        found.append(ImageTool(index, named, readable, quality, size, svg_model, svg_readable))
    return tuple(found)


_MAX_KEPT_VALUE = 32  # characters of a tool's quality or size kept: longer, no table key


def _kept(value: Any) -> str | None:
    """A tool's quality or size as kept while its response runs (a WebSocket lane may wait long):
    a short string, else None (no table key: the largest is counted, as for none)."""
    return value if isinstance(value, str) and len(value) <= _MAX_KEPT_VALUE else None


def _svg_model(svg: Any) -> tuple[str | None, bool]:
    """(the SVG author model a tool's ``svg`` names, whether it can be read): (None, True) when it
    names none (absent, null, or no ``model``); (None, False) when ``svg`` is no object or its
    ``model`` no non-empty string."""
    if svg is None:
        return None, True
    if not isinstance(svg, dict):
        return None, False
    model = svg.get("model")
    if model is None:
        return None, True
    named = model_name(model)
    return named, named is not None


def model_name(value: Any) -> str | None:
    """A model name a tool gives: a non-empty string of at most ``MAX_TOOL_MODEL_NAME`` characters
    (stripped), else None (unreadable: a longer one is no model's name, and is never kept)."""
    if not isinstance(value, str):
        return None
    name = value.strip()
    return name if 0 < len(name) <= MAX_TOOL_MODEL_NAME else None


def tool_choice_none(body: Mapping[str, Any] | None) -> bool:
    """Does a Responses request say ``tool_choice: "none"`` (no tool may run)? Never raises."""
    return isinstance(body, Mapping) and body.get("tool_choice") == "none"


def with_image_tool_models(
    body: dict[str, Any], models: Mapping[int, str], svg_models: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """``body`` with each ``tools[i].model`` set to ``models[i]`` (written in where the tool named
    none) and each ``tools[i].svg.model`` to ``svg_models[i]``; every other member as it was.
    ValueError if ``i`` is no tool object of the body (or, for ``svg_models``, has no ``svg`` object)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        raise ValueError("the request has no tools to rewrite")
    changed = list(tools)
    for index, model in models.items():
        if not 0 <= index < len(changed) or not isinstance(changed[index], dict):
            raise ValueError(f"tools[{index}] is not a tool")
        changed[index] = {**changed[index], "model": model}
    for index, model in (svg_models or {}).items():
        if not 0 <= index < len(changed) or not isinstance(changed[index], dict):
            raise ValueError(f"tools[{index}] is not a tool")
        svg = changed[index].get("svg")
        if not isinstance(svg, dict):
            raise ValueError(f"tools[{index}].svg is not an object")
        changed[index] = {**changed[index], "svg": {**svg, "model": model}}
    return {**body, "tools": changed}


def _table_choice(said: Any, asked: Any, known: Mapping[str, Any]) -> tuple[set[str], bool]:
    """The table keys an image counts at: the one its call said it used, else the one its tool
    asked for, else all of them (the largest is counted); and whether it was named."""
    for value in (said, asked):
        if isinstance(value, str) and value in known:
            return {value}, True
    return set(known), False


def image_tool_usage(found: ToolImages, model: str, tool: ImageTool | None) -> tuple[Usage | None, str, str]:
    """(usage, usage source, note) of what an ``image_generation`` tool was billed for, at ``model``.

    The images are counted from their items: for a model with OpenAI's table (gpt-image-1, -1-mini,
    -1.5), each image the tool wrote at the table's tokens for the quality and size its call says it
    used (else the tool's, else the largest), and 100 per partial image sent: OpenAI's billing rule
    for the images. Another model (gpt-image-2 and later, an Azure deployment's name): each image as
    the largest tabled image (``MAX_TABLED_IMAGE_TOKENS``, what its reservation counts), so budgets
    see it. The answer's ``tool_usage.image_gen``, when it reports tokens, is taken ("reported")
    unless, for a tabled model whose every image's quality and size are named, its output tokens
    are fewer than the table's count (the API says it may skip a call's record): then the count is,
    with the reported input ("estimated"); otherwise (the count an upper bound) the report is
    taken unless its output tokens are fewer than ``MIN_TABLED_IMAGE_TOKENS`` per image written (a
    skipped record; for a model without a table, none at all), when the count is too. Without
    it, the count, "estimated" because the image model's input tokens (the prompt the text model
    wrote for it) are not known, so not counted. ``note`` says which, for the row. Never raises."""
    images = len(found.images)
    partials = found.partial_images
    what = f"{images} image(s)" + (f", {partials} partial image(s)" if partials else "")
    where = ""
    if found.from_events:
        where = "; read from the stream's image events (it ended before its final event)"
    tokens = partials * PARTIAL_IMAGE_TOKENS
    largest = False  # an image counted as the largest its quality or size may be: an upper bound
    if base_model(model) not in TABLED_IMAGE_MODELS:  # counted as reserved: the largest tabled image
        tokens += images * MAX_TABLED_IMAGE_TOKENS
        how = (
            f"{what} of {model}, which OpenAI bills by a formula this proxy does not have"
            f"{{reports}}: each image counted as the largest in OpenAI's table "
            f"({MAX_TABLED_IMAGE_TOKENS} tokens) at {model}'s rate"
            + (", 100 tokens per partial image" if partials else "")
            + ", as its reservation does: a floor, not its bill"
        )
    else:
        counted: list[str] = []
        for said_quality, said_size in found.images:
            qualities, named_quality = _table_choice(said_quality, tool and tool.quality, IMAGE_OUTPUT_TOKENS)
            sizes, named_size = _table_choice(said_size, tool and tool.size, IMAGE_OUTPUT_TOKENS["high"])
            quality, size = max(
                ((q, z) for q in qualities for z in sizes), key=lambda qz: IMAGE_OUTPUT_TOKENS[qz[0]][qz[1]]
            )
            tokens += IMAGE_OUTPUT_TOKENS[quality][size]
            counted.append(f"{quality} {size}")
            largest = largest or not (named_quality and named_size)
        table = f" ({', '.join(counted)})" if counted else ""
        how = (
            f"{what}{table} counted from OpenAI's per-image table"
            + (", 100 tokens per partial image" if partials else "")
            + (": a quality or size not said, the largest counted" if largest else "")
            + "{reports}"
        )
    reported = found.usage
    if reported is not None and (reported.input_tokens or reported.output_tokens):
        cached = ""
        if found.cached_tokens:
            cached = f" ({found.cached_tokens} cached input tokens counted at the uncached rate)"
        # Only a table's count of images whose quality and size are all named is a bill to compare
        # with: the largest image (a model without a table, a quality or size auto or not said) is
        # an upper bound (its real images may cost less), so the report is then taken unless it is
        # below the smallest image for each image written (a skipped record: 0 output tokens...).
        tabled = base_model(model) in TABLED_IMAGE_MODELS
        billed = tabled and not largest
        # Without a table nothing says what an image costs: only no output at all is a skipped record.
        least = tokens if billed else images * MIN_TABLED_IMAGE_TOKENS if tabled else 1
        if reported.output_tokens >= least:
            return reported, "reported", "usage as the response's tool_usage.image_gen reports it" + cached
        raised = replace(
            reported,
            output_tokens=tokens,
            output_image_tokens=reported.output_image_tokens + tokens - reported.output_tokens,
        )
        fewer = f"its images count ({tokens})"
        if not billed:
            fewer = f"the least its {images} image(s) cost ({MIN_TABLED_IMAGE_TOKENS} each)"
            if not tabled:
                fewer = f"any output for its {images} image(s)"
        note = (
            f"the response's tool_usage.image_gen reports {reported.output_tokens} output tokens, fewer "
            f"than {fewer}, as the API may skip a call's usage record: "
            + how.replace("{reports}", "")
            + f"; its input tokens as reported{cached}{where}"
        )
        return raised, "estimated", note
    reports = "" if base_model(model) in TABLED_IMAGE_MODELS else ", and the response reports no tool_usage"
    tail = "; the response reports no tool_usage, so the image model's input tokens are not counted"
    if base_model(model) not in TABLED_IMAGE_MODELS:
        tail = ""
    return (
        Usage(output_tokens=tokens, output_image_tokens=tokens),
        "estimated",
        how.replace("{reports}", reports) + tail + where,
    )


def input_images(path: str, body: Mapping[str, Any] | None, form: FormFields | None) -> int:
    """How many images an image request sends to be edited: an edit's image files (``image`` or
    ``image[]`` parts of its form), or the entries of its JSON ``images`` (``image``), at least
    one; 0 for any other image request (a generation). Never raises."""
    if not bare_path(path).endswith(_EDITS):
        return 0
    if form is not None:
        return max(1, form.image_files)
    found = 0
    if isinstance(body, Mapping):
        for name in ("images", "image"):
            value = body.get(name)
            found = max(found, len(value) if isinstance(value, list) else int(value is not None))
    return max(1, found)


def inline_image_bytes(body: Mapping[str, Any] | None) -> int:
    """Bytes of the images a JSON edit sends inline (``data:`` URLs in its ``images``/``image``):
    counted as its input images, not as its prompt's text. Never raises."""
    if not isinstance(body, Mapping):
        return 0
    found = 0
    for name in ("images", "image"):
        value = body.get(name)
        for entry in value if isinstance(value, list) else [value]:
            url = entry.get("image_url") if isinstance(entry, dict) else entry
            if isinstance(url, dict):
                url = url.get("url")
            if isinstance(url, str) and url[:5].lower() == "data:":
                found += len(url)
    return found


# --- multipart/form-data uploads -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormFields:
    """What a multipart upload's small text fields say (its files are never decoded)."""

    model: str | None = None
    text_bytes: int = 0  # bytes of its text fields (a prompt): the budget reservation's input
    error: str | None = None  # why the model could not be read
    # The values of its RESERVATION_FIELDS (n, quality, size...), each as often as it is given.
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    image_files: int = 0  # its ``image`` (``image[]``) file parts: an edit's input images


_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;,"]{1,200}))', re.IGNORECASE)
_DISPOSITION = re.compile(rb"^content-disposition\s*:(.*)$", re.IGNORECASE | re.MULTILINE)
_NAME = re.compile(rb';\s*name\s*=\s*(?:"([^"]*)"|([^\s;]+))', re.IGNORECASE)
_FILENAME = re.compile(rb";\s*filename\*?\s*=", re.IGNORECASE)
# What follows a delimiter (RFC 2046): ``--`` (the last one), or transport padding and CRLF.
_DELIMITER_TAIL = re.compile(rb"--|[ \t]*\r\n")
_NOT_A_DELIMITER = (
    "a line of the form starts with its boundary without being a delimiter (parsers differ on it): "
    "its model cannot be read"
)
_TWO_DISPOSITIONS = "a part of the form has two Content-Disposition headers: its model cannot be read"
MAX_PART_HEADERS = 8 * 1024
MAX_FIELD = 64 * 1024  # a model field longer than this is not read (a model name is short)
MAX_MODEL = 256


def is_form(content_type: str) -> bool:
    """A multipart/form-data request body, by its content type."""
    return content_type.lstrip().lower().startswith("multipart/form-data")


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a multipart/form-data body: its name, whether it is a file, where its content is."""

    name: bytes
    is_file: bool
    start: int  # content: body[start:end]
    end: int


@dataclass(frozen=True, slots=True)
class FormWalk:
    """The parts of a multipart body, in order, and whether its closing delimiter was reached."""

    parts: tuple[FormPart, ...] = ()
    complete: bool = False
    # Why the walk stopped short: no boundary, or a form parsers read differently (then the
    # parts before are given, and nothing after them can be trusted).
    error: str | None = None


def form_parts(body: bytes, content_type: str) -> FormWalk:
    """Walk a multipart/form-data body by its boundary (which, by definition, no content
    contains): each part's headers are read, its content is skipped with one search for the
    next boundary and never copied. Never raises."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return FormWalk(error="multipart body without a boundary: its model cannot be read")
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    separator = b"\r\n" + delimiter
    parts: list[FormPart] = []
    pos = body.find(delimiter)
    if pos >= 0 and not (pos == 0 or body[pos - 2 : pos] == b"\r\n"):
        return FormWalk(error=_NOT_A_DELIMITER)
    complete = False
    while pos >= 0:
        pos += len(delimiter)
        if _DELIMITER_TAIL.match(body, pos) is None:
            # ``--BOUNDARYx``: content to a server's parser, a delimiter to a lax one.
            return FormWalk(tuple(parts), error=_NOT_A_DELIMITER)
        if body.startswith(b"--", pos):
            complete = True  # the closing delimiter
            break
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            break
        head_end = body.find(b"\r\n\r\n", line_end)
        if head_end < 0 or head_end - line_end > MAX_PART_HEADERS:
            break
        start = head_end + 4
        end = body.find(separator, start)
        if end < 0:
            break
        headers = body[line_end + 2 : head_end]
        dispositions = _DISPOSITION.findall(headers)
        if len(dispositions) > 1:  # parsers differ on which one names the part
            return FormWalk(tuple(parts), error=_TWO_DISPOSITIONS)
        disposition = _DISPOSITION.search(headers)
        params = disposition.group(1) if disposition is not None else b""
        name_match = _NAME.search(params)
        name = (name_match.group(1) or name_match.group(2) or b"") if name_match else b""
        parts.append(FormPart(name, _FILENAME.search(params) is not None, start, end))
        pos = end + 2
    return FormWalk(tuple(parts), complete)


def read_form(body: bytes, content_type: str) -> FormFields:
    """The ``model`` field of a multipart/form-data body, and its text fields' size. Never raises.

    Its files are never decoded (see ``form_parts``).
    """
    walk = form_parts(body, content_type)
    models: list[str] = []
    fields: dict[str, tuple[str, ...]] = {}
    text_bytes = 0
    image_files = 0
    for part in walk.parts:
        if part.is_file:
            image_files += part.name in _IMAGE_PARTS
            continue
        size = part.end - part.start
        text_bytes += size
        if part.name == b"model" and size <= MAX_FIELD:
            models.append(body[part.start : part.end].decode("utf-8", "replace").strip())
        name = part.name.decode("latin-1")
        if name in RESERVATION_FIELDS and size <= _MAX_RESERVATION_FIELD:
            value = body[part.start : part.end].decode("utf-8", "replace").strip()
            fields[name] = (*fields.get(name, ()), value)
    if walk.error is not None:
        return FormFields(text_bytes=text_bytes, error=walk.error, fields=fields, image_files=image_files)
    model, error = None, None
    distinct = list(dict.fromkeys(models))
    if models and not walk.complete:  # a server reading on may find another model field (its last wins)
        error = "multipart body cut short or malformed: its model cannot be read"
    elif len(distinct) == 1 and 0 < len(distinct[0]) <= MAX_MODEL and "\ufffd" not in distinct[0]:
        model = distinct[0]
    elif len(distinct) > 1:
        error = f"{len(distinct)} different model fields in the form: its model cannot be read"
    elif models:
        error = "the form's model field is empty, too long or not UTF-8"
    elif not walk.complete:
        error = "multipart body cut short or malformed: no model field found"
    else:
        error = "no model field in the form"
    return FormFields(
        model=model,
        text_bytes=text_bytes,
        error=None if model else error,
        fields=fields,
        image_files=image_files,
    )
