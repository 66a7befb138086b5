"""OpenAI Live (GPT-Live, ``wss://api.openai.com/v1/live/sessions``): its start, and the events that bill.

Pure functions over bytes; no mitmproxy. A session is one primary WebSocket (the openai SDK's
``client.live.connect()``): its first client event is ``session.start``, which names the model in
``session.model`` (never in the URL), answered with ``session.started`` (the resolved session).
It may also name the model the session delegates tasks to (``session.delegation``: ``{"type":
"responses", "responses": {"model": ...}}``, or ``decisions`` with ``decisions.model``), which a
later client ``session.update`` may change (``session.delegation.responses.model``: "the Responses
backend model to use for subsequent delegated requests"; the session's own model is immutable).
A session is billed by its duration, per second (genai-prices' ``audio_hours`` price of the model):
``session.usage.updated`` reports ``usage.seconds``, the session's CUMULATIVE billed seconds so far
(not an increment: never summed), and the terminal ``session.closed`` the final total with the
close ``reason``. The Responses calls a session delegates to (``delegation.type: responses``) are
billed apart, by tokens at their model's prices; their usage comes nested in ``response.event``
events, as a Responses stream reports it (``response.completed`` and the other terminal events).

A sideband, ``/v1/live/sessions/{id}/attach`` (the SDK's ``client.live.sideband.connect()``), is a
server's WebSocket to a session running on another transport (the primary WebSocket, WebRTC, SIP):
it never sends ``session.start``, but may send ``session.update`` (the delegation's model),
``response.create``, ``decision.create``, ``session.close``...; it receives the session's events,
``session.usage.updated`` and ``session.closed`` included (the SDK's ``ConnectClientEvent`` and
``ConnectServerEvent``).

A fork, ``/v1/live/sessions/{id}/fork``, continues a stored session (its model, voice, instructions
and conversation) as a new session. Over WebSocket (the SDK's ``client.live.forks.connect()``) it
runs as a primary does, but its ``session.start`` carries only overrides (``ForkSessionConfig``):
no model ("the model is inherited"; ``session.started`` names it), maybe the Responses delegation's
model (``delegation.responses.model``; the delegation's type cannot change), ``store``, the audio
format. Over HTTP (``POST .../fork``, ``client.live.sessions.fork()``, a WebRTC offer) its JSON body
is ``{"transport": {"type": "webrtc", "sdp": ...}, "session": {"delegation": ..., ...}}``, answered
with the new session's id (``openai_realtime_mints`` reads it as a set-up).

Speed: audio travels as base64 in JSON events of KBs, many a second, both ways. A server message is
decoded only if a C-speed look says it may matter: a ``*.delta`` type in its first bytes says it
does not; otherwise only one holding the type of a start, a usage report, the close or a terminal
Responses event. A client message is decoded only as the session's first (its start), if it holds
``session.update"`` and ``"model"`` (where policies are enforced), or, once a budget is spent, to
let a ``session.close`` through.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from addon.providers import openai_realtime_mints, openai_responses_ws
from addon.providers.openai_realtime_mints import MAX_MODEL, NamedModels, live_places, read_models
from addon.providers.values import SocketPaths, bare_path, has_escape, loads, may_hold, rewritten_value
from addon.providers.values import text as _str
from addon.usage import Metered

FLAVOR = "live"  # a Live session's seconds (Gemini Live's rows say "live" too, under provider google)
DELEGATED_FLAVOR = openai_responses_ws.FLAVOR  # a delegated Responses call: the Responses API's prices
ROW_PATH = "/v1/live/sessions"
CLOSE_EVENT = b'{"type":"session.close"}'  # what the proxy sends upstream to end a capped session
_START = b'"session.start"'
_CLOSE = b'"session.close"'
_NEEDLES = (
    b'session.started"',
    b'session.updated"',
    b'session.usage.updated"',
    b'session.closed"',
    *(f'{kind}"'.encode() for kind in sorted(openai_responses_ws.TERMINAL)),
)


Endpoint = SocketPaths  # where a provider serves Live's primary WebSocket


OPENAI = Endpoint(frozenset({ROW_PATH}))
_ATTACH = re.compile(r"/v1/live/sessions/([^/]+)/attach/?")
MAX_SESSION_ID = 256  # characters: a longer id is no session's (its sideband passes unfollowed)


def sideband_session(path: str) -> str | None:
    """The session id a sideband's path names (``/v1/live/sessions/{id}/attach``, without its query,
    doubled slashes merged; percent-decoded, as the server reads it), else None. Never raises."""
    found = _ATTACH.fullmatch(path)
    if found is None:
        return None
    return _session_id(unquote(found.group(1)))


_FORK = re.compile(r"/v1/live/sessions/([^/]+)/fork/?")


def fork_session(path: str) -> str | None:
    """The stored session a fork's path names (``/v1/live/sessions/{id}/fork``, without its query,
    doubled slashes merged; percent-decoded), else None. Never raises."""
    found = _FORK.fullmatch(path)
    if found is None:
        return None
    return _session_id(unquote(found.group(1)))


_ACCEPT = re.compile(r"/v1/live/sessions/([^/]+)/accept/?")


@dataclass(frozen=True, slots=True)
class SetUp:
    """A Live session set up over HTTP (WebRTC, SIP) and answered 2xx: its id, and the model the
    answer names (None: none; the SDK's answer names none, the set-up's request does)."""

    session_id: str
    model: str | None = None


def _session_id(value: object) -> str | None:
    """A session id as a path or an answer gives it: 1 to MAX_SESSION_ID characters, no slash."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_ID or "/" in value:
        return None
    return value


def read_setup_answer(path: str, data: bytes) -> SetUp | None:
    """The session a Live set-up's 2xx answer opened: a SIP accept's is its path's
    (``/v1/live/sessions/{id}/accept``, answered with no body); a WebRTC one's
    (``POST /v1/live/sessions``, or a fork's ``POST /v1/live/sessions/{id}/fork``: a new session) is
    its answer's ``session.id`` (the SDK's ``LiveCreateResponse`` and ``SessionForkResponse``:
    ``{"session": {"id": ...}, "transport": {"type": "webrtc", "sdp": ...}}``). A ``session.model``
    in the answer is read too. None: no session named. Never raises."""
    path = bare_path(path)
    accepted = _ACCEPT.fullmatch(path)
    if accepted is None and path != ROW_PATH and _FORK.fullmatch(path) is None:
        return None
    obj = loads(data) if data else None
    session = obj.get("session") if isinstance(obj, dict) else None
    session = session if isinstance(session, dict) else {}
    found = _session_id(unquote(accepted.group(1)) if accepted is not None else session.get("id"))
    if found is None:
        return None
    model = _str(session.get("model"))
    return SetUp(found, model if model is not None and len(model) <= MAX_MODEL else None)


# --- client events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A ``session.start``: the model it names (None: none readable), its ``event_id``, the
    delegation's model (``delegation.models``, where and what; its ``error``: one that cannot be
    read) and the event itself (``body``, for a rewrite)."""

    model: str | None
    event_id: str | None = None
    delegation: NamedModels = field(default_factory=NamedModels)
    delegation_param: str | None = None  # where the delegation names its model, e.g. for an error
    body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """A client ``session.update`` naming a delegation model (``models``), its ``event_id``, the
    event (``body``)."""

    models: NamedModels
    event_id: str | None
    body: dict[str, Any]


def may_start(data: bytes) -> bool:
    """Cheap test: may this client message be a ``session.start``? One with a ``\\u`` escape may
    be, however its bytes read (``"session.st\\u0061rt"`` is one to any JSON parser)."""
    return _START in data or has_escape(data)


def read_session_start(data: bytes, *, fork: bool = False) -> SessionStart | None:
    """The ``session.start`` in a client message, else None. A fork's (``fork``) carries overrides
    only: its delegation may leave the model as stored, as an update may. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("type") != "session.start":
        return None
    session = obj.get("session")
    model = session.get("model") if isinstance(session, dict) else None
    model = model.strip() if isinstance(model, str) else None
    places = live_places(session, ("session",), update=fork)
    places = places if fork else places[1:]
    delegation = read_models(obj, places, {}, "the session.start")
    param = ".".join(places[0][0]) if places else None
    return SessionStart(model or None, _str(obj.get("event_id")), delegation, param, obj)


def with_models(data: bytes, changes: dict[openai_realtime_mints.Where, str]) -> bytes:
    """The client event ``data`` with the models at ``changes`` replaced (only the values where that
    can be done exactly, else ASCII JSON: ``openai_realtime_mints.message_with_models``). ValueError
    when one is not there."""
    obj = loads(data)
    if not isinstance(obj, dict):
        raise ValueError("the message is not a JSON object")
    return openai_realtime_mints.message_with_models(data, obj, changes)


def may_update(data: bytes) -> bool:
    """Cheap test (C speed): may this client message be a ``session.update`` naming a model?"""
    return openai_realtime_mints.may_update_session(data)


def read_session_update(data: bytes) -> SessionUpdate | None:
    """The ``session.update`` in a client message if it names a delegation model (or one that is
    not a name, ``models.error``), else None. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("type") != "session.update":
        return None
    places = live_places(obj.get("session"), ("session",), update=True)
    found = read_models(obj, places, {}, "the session.update")
    if not found.models and found.error is None:
        return None
    return SessionUpdate(found, _str(obj.get("event_id")), obj)


def with_model(data: bytes, model: str) -> bytes:
    """The ``session.start`` ``data`` asking for ``model`` instead; ValueError when it names none.

    Only the model's value changes when ``"model": <value>`` is found exactly once; otherwise (the
    delegation naming the same model, a writer that escapes differently, non-ASCII text past one
    4,000-byte fragment) the event is written out again as ASCII JSON (``values.rewritten_value``).
    """
    obj = loads(data)
    session = obj.get("session") if isinstance(obj, dict) and obj.get("type") == "session.start" else None
    old = session.get("model") if isinstance(session, dict) else None
    if not isinstance(old, str) or not old.strip():
        raise ValueError("the session.start names no model to rewrite")
    if not model.strip():
        raise ValueError("empty model name")
    wanted = {**obj, "session": {**session, "model": model}}  # type: ignore[dict-item]
    return rewritten_value(data, "model", old, model, wanted)


def is_session_close(data: bytes) -> bool:
    """Is this client message a ``session.close`` (which ends the session, so ends its billing)?

    Decoded whole: called only once a budget is spent, never per audio frame.
    """
    if _CLOSE not in data:
        return False
    obj = loads(data)
    return isinstance(obj, dict) and obj.get("type") == "session.close"


def error_event(
    code: str, message: str, event_id: str, *, param: str | None = None, client_event_id: str | None = None
) -> bytes:
    """An ``error`` event as the Live API reports an invalid client command (the SDK's
    ``ErrorEvent``): ``client_event_id`` names the command at fault, ``param`` the parameter."""
    error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
    if param is not None:
        error["param"] = param
    event: dict[str, Any] = {"type": "error", "event_id": event_id}
    if client_event_id is not None:
        error["client_event_id"] = event["client_event_id"] = client_event_id
    event["error"] = error
    return json.dumps(event, separators=(",", ":")).encode()


# --- server events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """``session.started`` (``updated``: ``session.updated``, an update accepted): the resolved
    model, and the session's id."""

    model: str | None
    session_id: str | None
    updated: bool = False
    delegation_model: str | None = None  # its delegation's backend model (a fork inherits it)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """``session.usage.updated`` (or, ``final``, ``session.closed`` with its ``reason``): the
    session's cumulative billed seconds so far (None: not readable)."""

    seconds: float | None
    final: bool = False
    reason: str | None = None
    model: str | None = None  # the final one's resolved session's model


@dataclass(frozen=True, slots=True)
class Delegated:
    """A delegated Responses call ended (a terminal event nested in ``response.event``): its usage,
    model, tier and status, read as a Responses stream's final event is."""

    response_id: str | None
    metered: Metered


ServerEvent = Started | UsageReport | Delegated


def might_matter(data: bytes) -> bool:
    """Cheap test (C speed): may this server message be one ``read_server_event`` reads?"""
    return may_hold(data, _NEEDLES)


def read_server_event(data: bytes) -> ServerEvent | None:
    """The event in one server message if it is one the meter reads, else None. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    session = obj.get("session")
    session = session if isinstance(session, dict) else {}
    if kind in ("session.started", "session.updated"):
        delegation = None
        for where, _ in openai_realtime_mints.live_places(session, (), update=True):
            found = openai_realtime_mints.value_at(session, where)
            delegation = _str(found) if isinstance(found, str) else None
        return Started(
            _str(session.get("model")), _str(session.get("id")), kind == "session.updated", delegation
        )
    if kind == "session.usage.updated":
        seconds = _seconds(obj.get("usage"))
        return UsageReport(seconds) if seconds is not None else None
    if kind == "session.closed":
        seconds = _seconds(obj.get("usage"))
        return UsageReport(
            seconds, final=True, reason=_str(obj.get("reason")), model=_str(session.get("model"))
        )
    if kind == "response.event":
        nested = obj.get("event")
        found = openai_responses_ws.event_of(nested, data) if isinstance(nested, dict) else None
        if isinstance(found, openai_responses_ws.Ended):
            return Delegated(found.response_id, found.metered)
    return None


def _seconds(usage: Any) -> float | None:
    """``usage.seconds``: a finite, non-negative number of seconds, else None."""
    value = usage.get("seconds") if isinstance(usage, dict) else None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)
