"""OpenAI Responses over WebSocket (``wss://api.openai.com/v1/responses``): the events that bill.

Pure functions over bytes; no mitmproxy. A socket carries many responses, one after another on a
lane and several lanes at once (``stream_id``). Each client ``response.create`` asks for one
response (a call: its ``model`` is checked, and rewritten to downgrade it); the server answers it
with ``response.created`` and, at its end, ``response.completed``, ``.incomplete`` or ``.failed``,
each carrying the whole response with its ``usage`` (read by ``openai_api``, as an HTTP stream's
final event). A request the server rejects before it starts gets an ``error`` event instead.
A ``response.steer`` adds input to a running response: no call of its own. A response's
``image_generation`` tool sends image call events (``response.image_generation_call.*``): its
partial images are counted (billed apart, as the images, by the image model), never decoded.

Speed: deltas are most of the messages. A server message is decoded only if a C-speed look at its
bytes says it may matter: a ``*.delta`` type in its first bytes says it does not; otherwise only
one that holds ``"usage"`` (every response object has it), ``"error"`` or the type of
``response.created`` or of a terminal event. A client message is decoded only if it holds
``"response.create"`` or a ``\\u`` escape (which can spell that type too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from addon.providers import openai_api
from addon.providers.openai_media import with_image_tool_models
from addon.providers.values import SocketPaths, has_escape, loads, may_hold, rewritten_value
from addon.providers.values import text as _str
from addon.usage import Metered

FLAVOR = "responses"  # the same API as POST /v1/responses, billed the same: the rows say so
ROW_PATH = "/v1/responses"
_CREATE = b'"response.create"'
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "response.cancelled"})
_MAX_ERROR = 300
# What a message the meter reads holds: its type (a response object always has "usage" too).
_NEEDLES = (b'"usage"', b'"error"', b'response.created"', *(f'{kind}"'.encode() for kind in sorted(TERMINAL)))


Endpoint = SocketPaths  # where a provider serves Responses over WebSocket


OPENAI = Endpoint(frozenset({ROW_PATH}))


# --- client events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    """A ``response.create``: the model it asks for (None: none readable), its lane, and the
    event as an object (its ``max_output_tokens`` sizes the budget reservation)."""

    model: str | None
    stream_id: str | None
    body: dict[str, Any]


def may_be_create(data: bytes) -> bool:
    """Cheap test: may this client message be a ``response.create``? One with a ``\\u`` escape may
    be, however its bytes read (``"response.cr\\u0065ate"`` is one to any JSON parser)."""
    return _CREATE in data or has_escape(data)


def read_create(data: bytes) -> Create | None:
    """The ``response.create`` in a client message, else None. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("type") != "response.create":
        return None
    model = obj.get("model")
    model = model.strip() if isinstance(model, str) else None
    return Create(model or None, _lane(obj.get("stream_id")), obj)


def with_model(data: bytes, model: str) -> bytes:
    """The ``response.create`` ``data`` asking for ``model`` instead; ValueError when it names none.

    Only the model's value changes when it is found exactly once; otherwise (a writer that
    escapes differently, the same pair elsewhere, non-ASCII text past one 4,000-byte fragment)
    the event is written out again as ASCII JSON (see ``values.rewritten_value``).
    """
    obj = loads(data)
    old = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(old, str) or not old.strip():
        raise ValueError("the response.create names no model to rewrite")
    if not model.strip():
        raise ValueError("empty model name")
    return rewritten_value(data, "model", old, model, {**obj, "model": model})  # type: ignore[dict-item]


def with_tool_models(
    data: bytes, models: Mapping[int, str], svg_models: Mapping[int, str] | None = None
) -> bytes:
    """The ``response.create`` ``data`` with each ``tools[i].model`` set to ``models[i]`` (written
    in where the tool names none) and each ``tools[i].svg.model`` to ``svg_models[i]``; ValueError
    when it is no object with those tools.

    Only that value changes when one named model is rewritten and found exactly once; otherwise
    the event is written out again as ASCII JSON (see ``values.rewritten_value``).
    """
    obj = loads(data)
    if not isinstance(obj, dict):
        raise ValueError("the response.create is not a JSON object")
    wanted = with_image_tool_models(obj, models, svg_models)
    if svg_models and not models and len(svg_models) == 1:
        [(index, model)] = svg_models.items()
        old = obj["tools"][index]["svg"].get("model")
        if isinstance(old, str) and old.strip():
            return rewritten_value(data, "model", old, model, wanted)
    if len(models) == 1 and not svg_models:
        [(index, model)] = models.items()
        old = obj["tools"][index].get("model")
        if isinstance(old, str) and old.strip():
            return rewritten_value(data, "model", old, model, wanted)
    return json.dumps(wanted).encode()


def error_event(error: dict[str, Any], status: int, stream_id: str | None) -> bytes:
    """The ``error`` event a refused ``response.create``'s client gets: the Responses WebSocket
    shape (the SDK's ``ResponseWsError``: ``error``, the HTTP ``status``, the lane's ``stream_id``,
    so a lane's reader raises it), ``error`` as the proxy answers a refused HTTP call."""
    event: dict[str, Any] = {"type": "error", "status": status, "error": error}
    if stream_id is not None:
        event["stream_id"] = stream_id
    return json.dumps(event, separators=(",", ":")).encode()


# --- server events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """``response.created``: a response of lane ``stream_id`` started."""

    response_id: str | None
    stream_id: str | None


@dataclass(frozen=True, slots=True)
class Ended:
    """A terminal event: one response's usage, model, tier and status, read as HTTP's are."""

    response_id: str | None
    stream_id: str | None
    metered: Metered


@dataclass(frozen=True, slots=True)
class Rejected:
    """An ``error`` event about a request (no ``sequence_number``: not from a response's stream):
    the lane's oldest ``response.create`` not started was refused upstream."""

    stream_id: str | None
    error: str
    status: int | None


ServerEvent = Started | Ended | Rejected

_STREAM_ID = re.compile(rb'"stream_id"\s*:\s*"([^"\\]{1,200})"')


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """An image call event (``response.image_generation_call.*``: a partial image, a completion) of
    lane ``stream_id``, for ``openai_api.ImageEvents`` to count."""

    kind: str
    stream_id: str | None


def read_image_event(data: bytes) -> ImageEvent | None:
    """The image call event a server message is (its type in its first bytes, its lane found by its
    key: base64 and JSON strings cannot spell one), else None. Never raises."""
    kind = openai_api.image_event_type(data)
    if kind is None:
        return None
    lane = _STREAM_ID.search(data)
    return ImageEvent(kind, lane.group(1).decode("utf-8", "replace") if lane is not None else None)


def might_matter(data: bytes) -> bool:
    """Cheap test (C speed): may this server message be one ``read_server_event`` reads?"""
    return may_hold(data, _NEEDLES)


def read_server_event(data: bytes) -> ServerEvent | None:
    """The event in one server message if it is one the meter reads, else None. Never raises."""
    obj = loads(data)
    return event_of(obj, data) if isinstance(obj, dict) else None


def event_of(obj: dict[str, Any], raw: bytes) -> ServerEvent | None:
    """The event one decoded Responses event is, if the meter reads it (``raw``: the JSON text it
    came in, for a cost the provider reports). Also read nested in OpenAI Live's ``response.event``.
    Never raises."""
    kind = obj.get("type")
    lane = _lane(obj.get("stream_id"))
    if kind == "error":
        if obj.get("sequence_number") is not None:
            return None  # from a response's stream: its terminal event (or the close) ends it
        status = obj.get("status")
        text = openai_api.error_message(obj.get("error")) or "error event"
        return Rejected(lane, text, status if type(status) is int else None)
    response = obj.get("response")
    if not isinstance(response, dict):
        return None
    if kind == "response.created":
        return Started(_str(response.get("id")), lane)
    if not isinstance(kind, str) or kind not in TERMINAL:
        return None
    metered = openai_api.response_metered(kind, response, raw)
    if metered.usage is None and metered.error is None:
        metered = replace(metered, error=f"no usage in {kind}")
    status = metered.response_status
    if status in ("incomplete", "cancelled") or (kind == "response.incomplete" and status is None):
        details = response.get("incomplete_details")
        reason = _str(details.get("reason")) if isinstance(details, dict) else None
        why = f"response {status or 'incomplete'}" + (f": {reason}" if reason else "")
        metered = _with_error(metered, why)
    return Ended(_str(response.get("id")), lane, metered)


def _with_error(metered: Metered, error: str) -> Metered:
    joined = f"{metered.error}; {error}" if metered.error else error
    return replace(metered, error=joined[:_MAX_ERROR])


def _lane(value: Any) -> str | None:
    """A ``stream_id`` (a lane's name), or None for the default lane."""
    return value if isinstance(value, str) and value else None
