"""Google's Interactions API (``POST /v1beta/interactions``) on the Gemini API host.

The request names a ``model`` or an ``agent`` (Deep Research, Antigravity...) in its JSON body;
``stream``, ``background``, ``store`` and ``previous_interaction_id`` are body fields too. The
answer is an ``Interaction`` (``id``, ``status``, ``model`` or ``agent``, ``steps``, ``usage``).

``usage`` mirrors generateContent's ``usageMetadata`` under other names, and is normalised the
same way: ``total_input_tokens`` INCLUDES ``total_cached_tokens``; billed output is
``total_output_tokens`` + ``total_thought_tokens``; ``total_tool_use_tokens`` (tool-use prompts)
is input too. ``*_tokens_by_modality`` lists give the audio and image parts, and
``grounding_tool_count`` the Google Search queries (billed per query on Gemini 3, per grounded
prompt before it).

Streams are Server-Sent Events whose JSON carries an ``event_type``: ``interaction.created``,
``interaction.status_update``, ``step.start`` / ``step.delta`` / ``step.stop``,
``interaction.completed`` (the whole interaction's usage: the final event) and ``error``. Each
usage they carry (``step.stop.usage``, ``step.delta.metadata.total_usage``, the status update's)
is the interaction's running total: the last one wins, never added up. Only events that may
carry usage or the interaction are decoded; text deltas are kept raw for an offline estimate.

Background interactions (``"background": true``) are answered ``in_progress`` without usage;
the usage comes with a later ``GET /v1beta/interactions/{id}`` (``?stream=true`` too). The
parser reports the id and status (``Metered.response_id`` / ``response_status``) of a body
still running, so the meter bills the retrieval that first sees it finished.
"""

from __future__ import annotations

import json
import re
from typing import Any

from addon.providers.gemini_api import by_modality, error_message, normalise_tier
from addon.providers.openai_api import TextCollector
from addon.providers.values import loads
from addon.providers.values import text as _str
from addon.providers.values import token_count as _int
from addon.sse import SSEDecoder, SSEEvent
from addon.usage import Metered, Usage

FLAVOR = "interactions"
# Statuses of an interaction still running (a background one): its usage comes later.
RUNNING = frozenset({"queued", "in_progress"})
# ``/v1beta/interactions`` (any API version); ``/{version}/interactions/{id}`` is one interaction.
_COLLECTION = re.compile(r"^/v1(?:alpha|beta)?\d*/interactions/?$")
_ONE = re.compile(r"^/v1(?:alpha|beta)?\d*/interactions/(?P<id>[^/:]+)/?$")
_COUNT_KEYS = (
    "total_input_tokens",
    "total_output_tokens",
    "total_thought_tokens",
    "total_reasoning_tokens",  # the name of the thought count in early versions of the API
    "total_cached_tokens",
    "total_tool_use_tokens",
    "total_tokens",
)
# Events whose JSON may carry usage, the interaction's id/status/model, or an error.
_DECODED = frozenset(
    {
        "interaction.created",
        "interaction.status_update",
        "interaction.completed",
        "interaction.complete",  # early versions of the API
        "interaction.start",
        "step.stop",
        "error",
    }
)
_FINAL = frozenset({"interaction.completed", "interaction.complete", "error"})
_EVENT_TYPE = re.compile(rb'"event_type"\s*:\s*"([^"]{1,64})"')
# Models billed per grounded prompt rather than per search query (Gemini before 3).
_PER_PROMPT_GROUNDING = re.compile(r"^(?:models/)?gemini-(?:1|2)[.-]")


def _path_part(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0]


def is_interactions_path(path: str) -> bool:
    """``/{version}/interactions`` or ``/{version}/interactions/{id}`` (query string ignored)."""
    part = _path_part(path)
    return _COLLECTION.match(part) is not None or _ONE.match(part) is not None


def flavor_for_path(path: str) -> str | None:
    """``"interactions"`` for the collection (``POST`` creates one); None for anything else."""
    return FLAVOR if _COLLECTION.match(_path_part(path)) else None


def interaction_id(path: str) -> str | None:
    """The id in ``/{version}/interactions/{id}``, or None."""
    m = _ONE.match(_path_part(path))
    return m["id"] if m else None


def request_model(path: str, body: dict[str, Any] | None) -> str | None:
    """The body's ``model``, else its ``agent`` (an agent stands where a model would)."""
    if not body:
        return None
    for name in ("model", "agent"):
        value = body.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def with_model(path: str, body: dict[str, Any] | None, model: str) -> tuple[str, dict[str, Any] | None]:
    """The body asking for ``model`` instead. Raises ``ValueError`` for an agent's request:
    an agent (its ``agent_config``, its own loop) cannot be swapped for a model."""
    if body is None:
        raise ValueError("no JSON body to rewrite")
    if body.get("agent") is not None or body.get("agent_config") is not None:
        raise ValueError("an Interactions agent cannot be swapped for a model")
    model = model.strip().removeprefix("models/")
    if not model:
        raise ValueError("empty model name")
    return path, {**body, "model": model}


def stream_framing(path: str, content_type: str) -> str | None:
    """``"sse"`` for an event stream (a create with ``stream``, a ``GET ...?stream=true``)."""
    return "sse" if "text/event-stream" in content_type.lower() else None


def extract_usage(usage: Any, model: str | None = None) -> Usage | None:
    """Normalise an Interactions ``usage`` object, or None if it holds no count.

    ``model`` (the interaction's) decides how Google Search grounding is counted: each query
    on Gemini 3 and later, at most one per interaction (a grounded prompt) before it.
    """
    if not isinstance(usage, dict) or not any(k in usage for k in _COUNT_KEYS):
        return None
    thoughts = _int(usage.get("total_thought_tokens")) or _int(usage.get("total_reasoning_tokens"))
    prompt = by_modality(
        usage.get("input_tokens_by_modality"), usage.get("tool_use_tokens_by_modality"), count="tokens"
    )
    answer = by_modality(usage.get("output_tokens_by_modality"), count="tokens")
    cached = by_modality(usage.get("cached_tokens_by_modality"), count="tokens")
    searches = _searches(usage.get("grounding_tool_count"))
    if searches and model is not None and _PER_PROMPT_GROUNDING.match(model):
        searches = 1
    return Usage(
        input_tokens=_int(usage.get("total_input_tokens")) + _int(usage.get("total_tool_use_tokens")),
        cache_read_tokens=_int(usage.get("total_cached_tokens")),
        output_tokens=_int(usage.get("total_output_tokens")) + thoughts,
        reasoning_tokens=thoughts,
        web_searches=searches,
        input_audio_tokens=prompt.get("AUDIO", 0),
        output_audio_tokens=answer.get("AUDIO", 0),
        input_image_tokens=prompt.get("IMAGE", 0),
        output_image_tokens=answer.get("IMAGE", 0),
        cache_audio_read_tokens=cached.get("AUDIO", 0),
    )


def _searches(counts: Any) -> int:
    """Google Search queries in a ``grounding_tool_count`` list (Maps and retrieval are not counted)."""
    if not isinstance(counts, list):
        return 0
    return sum(
        _int(entry.get("count"))
        for entry in counts
        if isinstance(entry, dict) and entry.get("type") == "google_search"
    )


def _model_of(interaction: dict[str, Any]) -> str | None:
    return _str(interaction.get("model")) or _str(interaction.get("agent"))


def _interaction_error(interaction: dict[str, Any]) -> str | None:
    """The error of a failed interaction: its ``error``, its ``errors`` list, else its status."""
    found = error_message(interaction.get("error"))
    errors = interaction.get("errors")
    if found is None and isinstance(errors, list) and errors:
        found = error_message(errors[0])
    status = interaction.get("status")
    if found is None and status in ("failed", "cancelled", "budget_exceeded"):
        found = f"interaction {status}"
    return found


def parse_response(flavor: str, body: bytes) -> Metered:
    """Usage, model, id and status of a whole body (an Interaction, an error, or a stream read
    whole). Never raises."""
    head = body.lstrip()[:6]
    if not head:
        return Metered(error="empty response body")
    if head.startswith((b"data:", b":", b"event:", b"id:")):
        parser = StreamParser(flavor)
        sse = SSEDecoder()
        for event in sse.feed(body) + sse.close():
            parser.feed(event)
        return parser.result()
    obj = loads(body)
    if obj is None:
        return Metered(error="response body is not JSON")
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    if "error" in obj and "status" not in obj:
        return Metered(error=error_message(obj.get("error")) or "error without a message")
    model = _model_of(obj)
    status = _str(obj.get("status"))
    usage = extract_usage(obj.get("usage"), model)
    error = _interaction_error(obj)
    running = status in RUNNING  # any usage is a running total: billed once it is seen finished
    if usage is None and error is None and not running:
        error = "no usage in response"
    text = None if usage is not None else "".join(_interaction_texts(obj)) or None
    return Metered(
        usage=usage,
        model=model,
        error=error,
        service_tier=normalise_tier(obj.get("service_tier")),
        response_id=_str(obj.get("id")) if running else None,
        response_status=status,
        context_id=_str(obj.get("id")),
        output_text=text,
    )


class StreamParser:
    """Feed the SSE events of one streamed interaction; ``result()`` at any time."""

    __slots__ = (
        "_bad",
        "_done",
        "_error",
        "_id",
        "_model",
        "_status",
        "_text",
        "_tier",
        "_usage",
        "flavor",
    )

    def __init__(self, flavor: str = FLAVOR) -> None:
        self.flavor = flavor
        self._usage: Any = None  # the last running total of usage seen (a dict)
        self._model: str | None = None
        self._id: str | None = None
        self._status: str | None = None
        self._tier: str | None = None
        self._error: str | None = None
        self._done = False
        self._bad = 0
        self._text = TextCollector(_delta_texts)

    @property
    def done(self) -> bool:
        """``interaction.completed`` (or an ``error`` event, or ``[DONE]``) was seen."""
        return self._done

    def feed(self, event: SSEEvent) -> None:
        """Take one SSE event (comments and empty events are ignored)."""
        data = event.data
        if not data or data.isspace():
            return
        if data.strip() == b"[DONE]":
            self._done = True
            return
        kind = event.event
        if kind is None:
            found = _EVENT_TYPE.search(data, 0, 200) or _EVENT_TYPE.search(data)
            kind = found.group(1).decode("ascii", "replace") if found else None
        if kind == "step.delta":
            if b'"total_usage"' in data:  # usage in the delta's metadata: decode it
                obj = loads(data)
                meta = obj.get("metadata") if isinstance(obj, dict) else None
                if isinstance(meta, dict) and isinstance(meta.get("total_usage"), dict):
                    self._usage = meta["total_usage"]
            self._text.add(data)
            return
        if kind not in _DECODED and b'"usage"' not in data and b'"error"' not in data:
            return
        obj = loads(data)
        if not isinstance(obj, dict):
            self._bad += 1
            return
        self._read(kind, obj)

    def _read(self, kind: str | None, obj: dict[str, Any]) -> None:
        interaction = obj.get("interaction")
        if isinstance(interaction, dict):
            self._id = _str(interaction.get("id")) or self._id
            self._status = _str(interaction.get("status")) or self._status
            self._model = _model_of(interaction) or self._model
            self._tier = normalise_tier(interaction.get("service_tier")) or self._tier
            if isinstance(interaction.get("usage"), dict):
                self._usage = interaction["usage"]
            error = _interaction_error(interaction)
            if error is not None:
                self._error = error
        else:
            if kind == "interaction.status_update":
                self._id = _str(obj.get("interaction_id")) or self._id
                self._status = _str(obj.get("status")) or self._status
            if isinstance(obj.get("usage"), dict):  # step.stop, status_update: the running total
                self._usage = obj["usage"]
        error = error_message(obj.get("error"))
        if error is not None:
            self._error = error
        if kind in _FINAL:
            self._done = True

    def result(self) -> Metered:
        """The last usage seen (None if none), model, id and status, an error if any."""
        usage = extract_usage(self._usage, self._model)
        error = self._error
        if usage is None and error is None and not (self._status in RUNNING and not self._done):
            error = "no usage in stream"
            if self._bad:
                error += f" ({self._bad} event(s) not JSON)"
        return Metered(
            usage=usage,
            model=self._model,
            error=error,
            service_tier=self._tier,
            # Still running when the stream ended (cut short, or a background stream left): the
            # usage so far is a running total; the interaction is billed when it is seen finished.
            response_id=self._id if self._status in RUNNING and not self._done else None,
            response_status=self._status,
            context_id=self._id,
            output_text=self._text.text() if usage is None else None,
        )


def _delta_texts(data: bytes) -> list[str]:
    """The text of one ``step.delta`` event (text, thought summaries, function-call arguments)."""
    obj = loads(data)
    delta = obj.get("delta") if isinstance(obj, dict) else None
    if not isinstance(delta, dict):
        return []
    out: list[str] = []
    for name in ("text", "partial_arguments", "arguments"):
        value = delta.get(name)
        if isinstance(value, str) and value:
            out.append(value)
        elif isinstance(value, dict):
            out.append(json.dumps(value, ensure_ascii=False))
    content = delta.get("content")
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        out.append(content["text"])
    return out


def _interaction_texts(obj: dict[str, Any]) -> list[str]:
    """Texts of a whole interaction's model output: ``steps`` (or early versions' ``outputs``)."""
    out: list[str] = []
    steps = obj.get("steps")
    if not isinstance(steps, list):
        steps = obj.get("outputs")
    for step in steps if isinstance(steps, list) else ():
        if not isinstance(step, dict) or step.get("type") in ("user_input",):
            continue
        if isinstance(text := step.get("text"), str):
            out.append(text)
        if step.get("type") == "function_call" and isinstance(step.get("arguments"), dict):
            out.append(json.dumps(step["arguments"], ensure_ascii=False))
        content = step.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and isinstance(text := part.get("text"), str):
                out.append(text)
    return out
