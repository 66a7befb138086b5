"""OpenAI Realtime over WebSocket: the handshake's model, and the server events that bill.

Pure functions over bytes and strings; no mitmproxy. A session is one WebSocket; each
``response.done`` event carries the usage of one response (billed on its own row), and each
``conversation.item.input_audio_transcription.completed`` the usage of one transcription of
the input audio (billed with the transcription model of the session's configuration).

Speed: audio travels as base64 in JSON messages of tens of KB, many a second. A message is
decoded only if a C-speed look at its bytes says it may be one the meter reads: a ``*.delta``
event is known by its type in the first bytes, and every event that can bill contains the bytes
``"usage"`` (base64 never contains a quote), ``session.`` or ``transcription.completed"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote_plus

from addon.providers.openai_media import transcription_usage
from addon.providers.values import loads
from addon.providers.values import text as _str
from addon.providers.values import token_count as _int
from addon.usage import Usage

FLAVOR = "realtime"
# How far into a message its type is looked for (the type comes first, or after a short event_id).
_HEAD = 256
# A ``*.delta`` event's type: unescaped quotes, so never text inside a string (a transcript).
_DELTA_TYPE = re.compile(rb'"type"\s*:\s*"[\w.]*\.delta"')
# Client events that make the server do billed work: a response, or input audio that server-side
# turn detection answers (and transcribes) by itself.
WORK_EVENTS = frozenset({"response.create", "input_audio_buffer.append", "input_audio_buffer.commit"})
_MAX_ERROR = 300
# Browsers cannot set Authorization on a WebSocket: OpenAI takes the key as a subprotocol.
_KEY_SUBPROTOCOL = "openai-insecure-api-key."


# --- the handshake -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    """Where a provider serves Realtime and how its handshake's query names the model.

    OpenAI: ``GET /v1/realtime?model=gpt-realtime``. Azure OpenAI: ``/openai/realtime?api-version=
    ..&deployment=NAME`` and ``/openai/v1/realtime?model=NAME``, where the name is a deployment
    (``deployments`` maps it to the model it serves, as policies.yaml ``azure_deployments`` says).
    """

    paths: frozenset[str]
    model_params: tuple[str, ...] = ("model",)
    deployments: Mapping[str, str] = field(default_factory=dict)
    # Whether a handshake without a model may be a sideband (``?call_id=``): not on an API
    # that has none (Realtime translation), where one naming no model names none.
    has_sidebands: bool = True

    def matches(self, path: str) -> bool:
        """Is ``path`` (without its query) a Realtime handshake's?"""
        return path.rstrip("/") in self.paths

    def model(self, query: str) -> str | None:
        """The model the query asks for; None when it names none, or several different ones (in
        any of its parameters: Azure's preview API reads ``deployment``, its v1 API ``model``)."""
        values = [value for _, value in _all_values(query, self.model_params)]
        if not values or not all(values):
            return None
        models = {self.deployments.get(value, value) for value in values}
        return models.pop() if len(models) == 1 else None

    @staticmethod
    def is_sideband(query: str) -> bool:
        """A server's sideband connection to a WebRTC or SIP call (``?call_id=``, no model): the
        model was chosen when the call was set up, outside the proxy."""
        return _param_values(query, ("call_id",)) is not None and _param_values(query, ("model",)) is None

    @staticmethod
    def is_transcription(query: str) -> bool:
        """A transcription session (``?intent=transcription``, no model): it names its transcription
        model in its first ``session.update``, where the proxy checks it."""
        intent = _param_values(query, ("intent",))
        return (
            intent is not None
            and set(intent[1]) == {"transcription"}
            and _param_values(query, ("model",)) is None
        )

    def with_model(self, query: str, model: str) -> str:
        """``query`` asking for ``model`` instead: every occurrence of the model's parameter gets
        the new value, every other byte stays. ValueError when it cannot be said (no parameter,
        or no Azure deployment serves ``model``)."""
        names = {name for name, _ in _all_values(query, self.model_params)}
        if not names:
            raise ValueError("the handshake names no model to rewrite")
        value = model
        if self.deployments:
            target = next((d for d, served in self.deployments.items() if served == model), None)
            if target is not None:
                value = target
            elif "deployment" in names:
                raise ValueError(f"no Azure deployment serves {model} (policies.yaml azure_deployments)")
        encoded = quote(value, safe="")
        parts = query.split("&")
        for i, part in enumerate(parts):
            raw_name = part.partition("=")[0]
            if unquote_plus(raw_name) in names:
                parts[i] = f"{raw_name}={encoded}"
        return "&".join(parts)


def _param_values(query: str, names: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """(the first of ``names`` the query holds, all its values), or None."""
    if not query:
        return None
    pairs = [part.partition("=") for part in query.split("&") if part]
    for name in names:
        values = [unquote_plus(value) for raw, _, value in pairs if unquote_plus(raw) == name]
        if values:
            return name, values
    return None


def _all_values(query: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (name, value) of the parameters ``names`` in the query, in order."""
    if not query:
        return []
    pairs = [part.partition("=") for part in query.split("&") if part]
    return [(name, unquote_plus(value)) for raw, _, value in pairs if (name := unquote_plus(raw)) in names]


def key_in_subprotocols(header: str | None) -> str | None:
    """The API key a browser client sends as a ``Sec-WebSocket-Protocol`` entry, or None."""
    if not header or _KEY_SUBPROTOCOL not in header:
        return None
    for entry in header.split(","):
        entry = entry.strip()
        if entry.startswith(_KEY_SUBPROTOCOL):
            return entry[len(_KEY_SUBPROTOCOL) :] or None
    return None


# --- server events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """``session.created`` / ``session.updated`` (each carries the whole session): its model and
    the model transcribing its input audio (None: input audio is not transcribed)."""

    model: str | None
    transcription_model: str | None


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """``response.created``: a response the server will bill once it is done."""

    response_id: str | None


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """``response.done``: one response's usage (cancelled, incomplete and failed ones too)."""

    response_id: str | None
    status: str | None
    usage: Usage | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionDone:
    """``conversation.item.input_audio_transcription.completed``: billed in tokens or in seconds
    (``usage.audio_seconds``)."""

    item_id: str | None
    usage: Usage | None
    error: str | None = None


ServerEvent = SessionConfig | ResponseStarted | ResponseDone | TranscriptionDone


def might_bill(data: bytes) -> bool:
    """Cheap test (C speed): may this server message be one ``read_server_event`` reads?

    A ``*.delta`` event (audio, text, transcript: most of a session's bytes) is told by its type
    in the first bytes, without looking at the rest; not when the type of an event the reader reads
    stands there too (a ``.delta`` type in an object nested in a transcription's).
    """
    if (
        _DELTA_TYPE.search(data, 0, _HEAD) is not None
        and data.find(b'"response.done"', 0, _HEAD) < 0
        and data.find(b'transcription.completed"', 0, _HEAD) < 0
        and data.find(b'"session.', 0, _HEAD) < 0
        and data.find(b'"transcription_session.', 0, _HEAD) < 0
    ):
        return False
    # A transcription without usage (older beta servers) still gets its row, priced as unknown.
    return b'"usage"' in data or b"session." in data or b'transcription.completed"' in data


def is_error_event(data: bytes) -> bool:
    """Is this server message an ``error`` event? Decoded only if ``"error"`` is in its first bytes
    (the type comes first). Never raises."""
    if b'"error"' not in data[:_HEAD]:
        return False
    obj = loads(data)
    return isinstance(obj, dict) and obj.get("type") == "error"


def read_server_event(data: bytes) -> ServerEvent | None:
    """The event in one server message if it is one the meter reads, else None. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind == "response.done":
        return _response_done(obj.get("response"))
    if kind == "response.created":
        response = obj.get("response")
        return ResponseStarted(_str(response.get("id")) if isinstance(response, dict) else None)
    if kind == "conversation.item.input_audio_transcription.completed":
        usage = transcription_usage(obj.get("usage"))
        error = None if usage is not None else "no usage in transcription"
        return TranscriptionDone(_str(obj.get("item_id")), usage, error)
    if kind in (
        "session.created",
        "session.updated",
        "transcription_session.created",
        "transcription_session.updated",
    ):
        return _session_config(obj.get("session"))
    return None


def _response_done(response: Any) -> ResponseDone | None:
    if not isinstance(response, dict):
        return None
    status = _str(response.get("status"))
    error = None
    details = response.get("status_details")
    if status in ("failed", "cancelled", "incomplete"):
        reason = None
        if isinstance(details, dict):
            reason = _error_text(details.get("error")) or _str(details.get("reason"))
        error = f"response {status}" + (f": {reason}" if reason else "")
    usage = response_usage(response.get("usage"))
    if usage is None and error is None:
        error = "no usage in response.done"
    return ResponseDone(_str(response.get("id")), status, usage, error[:_MAX_ERROR] if error else None)


def response_usage(usage: Any) -> Usage | None:
    """A ``response.usage`` (GA and beta shapes) as ``Usage``.

    ``input_tokens`` is all input (text, audio, image; cached included), ``cached_tokens`` a
    subset of it; the audio and image counts are subsets too, and ``cached_tokens_details``
    splits the cached ones. There is no column for cached image tokens: when image input meets
    cache reads, the image tokens are counted (and priced) as text, since genai-prices cannot
    split cache reads by modality without them (it would price the whole response as text).
    """
    if not isinstance(usage, dict) or not ("input_tokens" in usage or "output_tokens" in usage):
        return None
    details_in = _dict(usage.get("input_token_details"))
    details_out = _dict(usage.get("output_token_details"))
    cached_details = _dict(details_in.get("cached_tokens_details"))
    cached = _int(details_in.get("cached_tokens"))
    images = _int(details_in.get("image_tokens"))
    if images and cached:
        images = 0
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        cache_read_tokens=cached,
        output_tokens=_int(usage.get("output_tokens")),
        input_audio_tokens=_int(details_in.get("audio_tokens")),
        output_audio_tokens=_int(details_out.get("audio_tokens")),
        input_image_tokens=images,
        cache_audio_read_tokens=_int(cached_details.get("audio_tokens")),
    )


def _session_config(session: Any) -> SessionConfig | None:
    if not isinstance(session, dict):
        return None
    audio = _dict(session.get("audio"))
    transcription = _dict(audio.get("input")).get("transcription")  # GA
    if transcription is None:
        transcription = session.get("input_audio_transcription")  # beta
    model = _dict(transcription).get("model")
    return SessionConfig(_str(session.get("model")), _str(model))


# --- client events -------------------------------------------------------------------------------


def asks_for_work(data: bytes) -> bool:
    """Does this client message ask the server for billed work (``WORK_EVENTS``)?

    Decoded whole: called only once the session's budget is spent, never per audio frame.
    """
    obj = loads(data)
    kind = obj.get("type") if isinstance(obj, dict) else None
    return isinstance(kind, str) and kind in WORK_EVENTS


def budget_error_event(message: str, event_id: str) -> bytes:
    """The ``error`` event a capped session's client gets instead of its request's answer."""
    return error_event("budget_exceeded", message, event_id)


def error_event(
    code: str, message: str, event_id: str, *, param: str | None = None, client_event_id: str | None = None
) -> bytes:
    """An ``error`` event as the Realtime API sends one: ``error.event_id`` names the client event
    that caused it, ``param`` the parameter at fault."""
    event = {
        "type": "error",
        "event_id": event_id,
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def _error_text(err: Any) -> str | None:
    if isinstance(err, dict):
        message, code = _str(err.get("message")), _str(err.get("code")) or _str(err.get("type"))
        text = f"{code}: {message}" if code and message else message or code
        return text[:_MAX_ERROR] if text else None
    return _str(err)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
