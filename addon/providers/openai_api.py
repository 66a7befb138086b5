"""OpenAI API responses -> normalised usage: chat completions, Responses API, embeddings.

Pure functions over bytes; no mitmproxy. Stream parsing is cheap per chunk: JSON is
decoded only for events that can carry usage, a model name or an error.
"""

from __future__ import annotations

import json
from typing import Any

from addon.sse import SSEEvent
from addon.usage import Metered, Usage

FLAVORS: tuple[str, ...] = ("chat", "responses", "embeddings")

# Matched on the END of the path, so prefixed routes work too ("/openai/v1/chat/completions",
# Azure's "/openai/deployments/{name}/chat/completions", Gemini's "/v1beta/openai/chat/completions").
_PATH_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("/chat/completions", "chat"),
    ("/responses", "responses"),
    ("/embeddings", "embeddings"),
)
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_START = frozenset({"response.created", "response.in_progress", "response.queued"})
_MODEL_TRIES = 3  # chat chunks JSON-decoded at most this many times just to learn the model
_MAX_ERROR = 300


def flavor_for_path(path: str) -> str | None:
    """The API flavor of a request path (query string allowed), or None if not metered."""
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    for suffix, flavor in _PATH_SUFFIXES:
        if path.endswith(suffix):
            return flavor
    return None


def extract_usage(usage: Any) -> Usage | None:
    """Normalise an OpenAI-style ``usage`` object (chat/embeddings or Responses shape).

    The one place that knows usage field names; provider dialects grow here.
    """
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # chat, embeddings
        details_in = _dict(usage.get("prompt_tokens_details"))
        details_out = _dict(usage.get("completion_tokens_details"))
        return Usage(
            input_tokens=_int(usage.get("prompt_tokens")),
            cache_read_tokens=_int(details_in.get("cached_tokens")),
            cache_write_tokens=_int(details_in.get("cache_write_tokens")),
            output_tokens=_int(usage.get("completion_tokens")),
            reasoning_tokens=_int(details_out.get("reasoning_tokens")),
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
        )
    return None


def parse_response(flavor: str, body: bytes) -> Metered:
    """Usage, model and error of a complete, content-decoded JSON response body. Never raises."""
    if not body.strip():
        return Metered(error="empty response body")
    obj = _loads(body)
    if obj is None:
        return Metered(error="response body is not JSON")
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    usage = extract_usage(obj.get("usage"))
    error = error_message(obj.get("error"))
    if error is None and obj.get("status") == "failed":
        error = "response failed"
    if usage is None and error is None:
        error = "no usage in response"
    return Metered(usage=usage, model=_str(obj.get("model")), error=error)


def is_usage_only_chunk(event: SSEEvent) -> bool:
    """True for the extra chat chunk sent for ``stream_options.include_usage``.

    That is a JSON chunk with a non-null ``usage`` and an empty (or absent) ``choices``.
    Ordinary chunks are rejected by a substring test, without JSON decoding.
    """
    if not has_usage(event.data):
        return False
    obj = _loads(event.data)
    return isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and obj.get("choices", []) == []


def has_usage(data: bytes) -> bool:
    """Cheap test: does this JSON text hold a ``"usage"`` key whose value is not null?"""
    i = data.find(b'"usage"')
    while i >= 0:
        i += 7
        rest = data[i : i + 64].lstrip()
        if rest[:1] == b":" and not rest[1:].lstrip().startswith(b"null"):
            return True
        i = data.find(b'"usage"', i)
    return False


class StreamParser:
    """Feed the SSE events of one streamed response; ``result()`` at any time."""

    __slots__ = ("_bad", "_done", "_error", "_model", "_model_tries", "_usage", "flavor")

    def __init__(self, flavor: str) -> None:
        self.flavor = flavor
        self._usage: Usage | None = None
        self._model: str | None = None
        self._error: str | None = None
        self._done = False
        self._bad = 0  # events that looked relevant but were not JSON objects
        self._model_tries = 0

    @property
    def done(self) -> bool:
        """The stream said it is finished (``[DONE]`` or a final Responses event)."""
        return self._done

    def feed(self, event: SSEEvent) -> None:
        """Take one event (comments and empty events are ignored)."""
        if not event.data:
            return
        if self.flavor == "responses":
            self._feed_responses(event)
        else:
            self._feed_chat(event.data)

    def result(self) -> Metered:
        """Usage seen so far (None if none), the reported model, and an error if any."""
        error = self._error
        if self._usage is None and error is None:
            if self._done and self.flavor == "chat":
                error = "stream ended without usage (stream_options.include_usage not set?)"
            elif self._bad:
                error = f"no usage in stream ({self._bad} event(s) not JSON)"
            else:
                error = "no usage in stream"
        return Metered(usage=self._usage, model=self._model, error=error)

    def _feed_chat(self, data: bytes) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        want_model = self._model is None and self._model_tries < _MODEL_TRIES
        if not (want_model or has_usage(data) or b'"error"' in data):
            return
        self._model_tries += want_model
        obj = _loads(data)
        if not isinstance(obj, dict):
            self._bad += 1
            return
        self._take(obj)
        error = error_message(obj.get("error"))
        if error is not None:
            self._error = error

    def _feed_responses(self, event: SSEEvent) -> None:
        name = event.event
        data = event.data
        if not (
            name in _RESPONSES_FINAL
            or name == "error"
            or (name in _RESPONSES_START and self._model is None)
            or ((name is None or name == "message") and (has_usage(data) or b'"error"' in data))
        ):
            return
        obj = _loads(data)
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
        self._take(response)
        if kind in _RESPONSES_FINAL:
            self._done = True
        if kind == "response.failed" or response.get("status") == "failed":
            self._error = error_message(response.get("error")) or "response failed"

    def _take(self, obj: dict[str, Any]) -> None:
        """Remember the model and usage of a decoded chunk / response object (last wins)."""
        model = _str(obj.get("model"))
        if model is not None:
            self._model = model
        usage = extract_usage(obj.get("usage"))
        if usage is not None:
            self._usage = usage


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


def _loads(data: bytes) -> Any:
    """``json.loads`` that returns None instead of raising."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    """A token count: ints as they are, floats truncated, anything else (null, bool) 0."""
    if type(value) is int:
        return value
    if type(value) is float and value == value and abs(value) != float("inf"):
        return int(value)
    return 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
