"""The models a Realtime or OpenAI Live session is configured with over HTTP (a mint), or in a
``session.update``.

Pure functions over bytes and decoded JSON; no mitmproxy; nothing here raises on what a client
sends. A server mints a session for a browser or a phone, whose media and events then go to the
provider over WebRTC or SIP, never through the proxy: the mint is where the models are chosen, so
where they are checked. The shapes (OpenAI's API reference and its SDK, openai 2.x; Azure OpenAI's
how-to pages for WebRTC and SIP):

- ``POST /v1/realtime/client_secrets`` (GA): ``{"expires_after": {...}, "session": SESSION}``,
  SESSION ``{"type": "realtime", "model": M, "audio": {"input": {"transcription": {"model": T}}}}``
  or ``{"type": "transcription", "audio": {"input": {"transcription": {"model": T}}}}``;
- ``POST /v1/realtime/calls`` (WebRTC with a standard key): multipart/form-data, fields ``sdp`` and
  ``session`` (SESSION as JSON); with an ephemeral key the body is bare SDP (``application/sdp``):
  its model was fixed when the key was minted;
- ``POST /v1/realtime/calls/{call_id}/accept`` (SIP): SESSION itself;
- ``POST /v1/realtime/sessions`` (beta): ``{"model": M, "input_audio_transcription": {"model": T}}``,
  ``/v1/realtime/transcription_sessions`` (beta): ``{"input_audio_transcription": {"model": T}}``;
- Azure OpenAI: ``/openai/v1/realtime/client_secrets``, ``/openai/v1/realtime/calls`` and its
  ``/accept``, and the preview API's ``/openai/realtimeapi/sessions`` (beta shape); a model there
  is a deployment's name;
- OpenAI Live (openai 3.x, ``client.live.create``): ``POST /v1/live/sessions`` (WebRTC)
  ``{"session": LIVE, "transport": {"type": "webrtc", "sdp": ...}}``, and ``client.live.sessions.accept``:
  ``POST /v1/live/sessions/{session_id}/accept`` (SIP) ``{"session": LIVE}``, LIVE ``{"model": M,
  "delegation": {"type": "responses", "responses": {"model": R, ...}}}`` (the Responses model the
  session delegates tasks to, billed by tokens; ``"type": "decisions"``: ``decisions.model``;
  ``"type": "client"`` or none: no backend model). A GET of ``/v1/live/sessions`` is the primary
  WebSocket (``openai_live``), not a mint; ``/attach``, ``/hangup``... are not mints;
- OpenAI Live forks (``client.live.sessions.fork``): ``POST /v1/live/sessions/{session_id}/fork``
  (WebRTC) ``{"transport": {...}, "session": FORK}``, FORK overrides of a stored session that
  inherits its model (``session.model`` is not to be sent, and is checked if it is):
  ``{"delegation": {"type": "responses", "responses": {"model": R}}}``, either optional;
- Realtime translation (``client.realtime.translations.client_secrets.create``):
  ``POST /v1/realtime/translations/client_secrets`` ``{"expires_after": ..., "session": {"model": M,
  "audio": {"input": {"transcription": {"model": T}}, "output": {"language": ...}}}}``; on Azure
  (Microsoft Foundry's REST reference) ``/openai/v1/realtime/translations/client_secrets``.

Inside a Realtime WebSocket, a client ``session.update`` names the transcription model as SESSION
does (GA) or as ``session.input_audio_transcription.model`` (beta), and a beta
``transcription_session.update`` as the latter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from addon.providers.openai_media import form_parts
from addon.providers.values import bare_path, has_escape, loads, rewritten_value

CLIENT_SECRET = "client_secret"
SESSION = "session"  # beta
TRANSCRIPTION_SESSION = "transcription_session"  # beta
CALL = "call"  # a WebRTC offer
ACCEPT = "accept"  # a SIP call accepted
LIVE = "live"  # an OpenAI Live WebRTC session
LIVE_ACCEPT = "live_accept"  # an OpenAI Live SIP call accepted
LIVE_FORK = "live_fork"  # a stored OpenAI Live session forked onto a new WebRTC connection
LIVE_KINDS = frozenset({LIVE, LIVE_ACCEPT, LIVE_FORK})
TRANSLATION_SECRET = "translation_client_secret"  # a Realtime translation session's client secret
# The kind at path + /{id}/<suffix>: a SIP call accepted, a Live session forked.
_SUFFIXED = {("accept", CALL): ACCEPT, ("accept", LIVE): LIVE_ACCEPT, ("fork", LIVE): LIVE_FORK}

Where = tuple[str, ...]  # the keys from a JSON object's root to a model's value

_MODEL: Where = ("model",)
_GA_TRANSCRIPTION: Where = ("audio", "input", "transcription", "model")
_BETA_TRANSCRIPTION: Where = ("input_audio_transcription", "model")
_DELEGATES = ("responses", "decisions")  # Live delegation types naming a backend model (not client)
MAX_MODEL = 256
MAX_SESSION_PART = 1024 * 1024  # a WebRTC offer's session field read at most (instructions, tools)
_SLASHES = re.compile(r"/{2,}")
# The cheap test of a client message (C speed): base64 audio has no quotes, nor backslashes.
_UPDATE = b'session.update"'
_NAMES_MODEL = b'"model"'


@dataclass(frozen=True, slots=True)
class Mints:
    """Where a provider mints Realtime sessions: path -> kind, and its Azure deployments."""

    paths: Mapping[str, str]
    deployments: Mapping[str, str] = field(default_factory=dict)  # deployment -> the model it serves

    def kind(self, path: str) -> str | None:
        """The kind of mint a request path (query allowed) is, or None."""
        if "realtime" not in path and "live" not in path:  # every POST is asked: most are not mints
            return None
        path = _SLASHES.sub("/", bare_path(path))
        found = self.paths.get(path)
        if found is not None:
            return found
        rest, _, suffix = path.rpartition("/")
        head, _, name = rest.rpartition("/")
        if not name:
            return None
        return _SUFFIXED.get((suffix, self.paths.get(head, "")))

    def row_path(self, path: str) -> str:
        """The path a mint's row records (no query, slashes merged)."""
        return _SLASHES.sub("/", bare_path(path))

    def written_as(self, model: str) -> str:
        """The name a request gives ``model``: the Azure deployment serving it, if one does."""
        return written_as(self.deployments, model)


def written_as(deployments: Mapping[str, str], model: str) -> str:
    """The name a request gives ``model``: the Azure deployment (of ``deployments``) serving it, if
    one does, else the model's own name."""
    return next((name for name, served in deployments.items() if served == model), model)


OPENAI = Mints(
    {
        "/v1/realtime/client_secrets": CLIENT_SECRET,
        "/v1/realtime/calls": CALL,
        "/v1/realtime/sessions": SESSION,
        "/v1/realtime/transcription_sessions": TRANSCRIPTION_SESSION,
        "/v1/live/sessions": LIVE,
        "/v1/realtime/translations/client_secrets": TRANSLATION_SECRET,
    }
)
AZURE = Mints(
    {
        "/openai/v1/realtime/client_secrets": CLIENT_SECRET,
        "/openai/v1/realtime/translations/client_secrets": TRANSLATION_SECRET,
        "/openai/v1/realtime/calls": CALL,
        "/openai/realtimeapi/sessions": SESSION,
    }
)


@dataclass(frozen=True, slots=True)
class NamedModel:
    """A model a request names: where, as written (an Azure deployment), and the model it is."""

    where: Where
    name: str
    model: str

    @property
    def param(self) -> str:
        """Its place as OpenAI's errors name a parameter, e.g. ``session.model``."""
        return ".".join(self.where)


@dataclass(frozen=True, slots=True)
class NamedModels:
    """The models a request names, its session's model first, and why some cannot be read."""

    models: tuple[NamedModel, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """A client ``session.update`` or ``transcription_session.update``: the transcription models it
    names (an update that names none leaves the model as it is), its ``event_id``, the event."""

    models: NamedModels
    event_id: str | None
    body: dict[str, Any]


_ABSENT = object()
_UNREADABLE = object()


def value_at(obj: Any, where: Where) -> Any:
    """The value at ``where``: ``_ABSENT`` when a key on the way is missing or null,
    ``_UNREADABLE`` when something on the way is not an object."""
    for key in where:
        if obj is None:
            return _ABSENT
        if not isinstance(obj, dict):
            return _UNREADABLE
        obj = obj.get(key)
    return _ABSENT if obj is None else obj


def read_models(
    obj: Any, places: list[tuple[Where, bool]], deployments: Mapping[str, str], what: str
) -> NamedModels:
    """The models at ``places`` ((where, required)) of ``obj``; a required one absent, or any one
    that is not a name, is an error (the models read are still given). Never raises."""
    found: list[NamedModel] = []
    problems: list[str] = []
    for where, required in places:
        value = value_at(obj, where)
        if value is _ABSENT:
            if required:
                problems.append(f"{what} names no {'.'.join(where)}")
            continue
        name = value.strip() if isinstance(value, str) else ""
        if not name or len(name) > MAX_MODEL:
            problems.append(f"{what}'s {'.'.join(where)} is not a model name")
            continue
        found.append(NamedModel(where, value, deployments.get(name, name)))
    return NamedModels(tuple(found), "; ".join(problems) or None)


def _ga_places(session: Any, prefix: Where) -> list[tuple[Where, bool]]:
    """A GA session's models: a transcription session's is its transcription model."""
    kind = session.get("type") if isinstance(session, dict) else None
    transcription = (prefix + _GA_TRANSCRIPTION, kind == "transcription")
    if kind == "transcription":
        return [transcription]
    return [(prefix + _MODEL, True), transcription]


def live_places(session: Any, prefix: Where, *, update: bool = False) -> list[tuple[Where, bool]]:
    """An OpenAI Live session's models: its own (none in an ``update``, which cannot change it) and
    its delegation's backend model, required at startup (a ``session.update`` may leave it)."""
    places = [] if update else [(prefix + _MODEL, True)]
    delegation = value_at(session, ("delegation",))
    kind = delegation.get("type") if isinstance(delegation, dict) else None
    if kind in _DELEGATES:
        places.append(((*prefix, "delegation", kind, "model"), not update))
    return places


def read_mint(kind: str, body: Any, deployments: Mapping[str, str] | None = None) -> NamedModels:
    """The models a JSON mint of ``kind`` names (``body``: its decoded JSON). Never raises."""
    deployments = deployments or {}
    if not isinstance(body, dict):
        return NamedModels(error="the request body is not a JSON object")
    if kind in (CLIENT_SECRET, CALL):  # a call sent as JSON: read as a client secret's
        return read_models(body, _ga_places(body.get("session"), ("session",)), deployments, "the request")
    if kind == ACCEPT:
        return read_models(body, _ga_places(body, ()), deployments, "the request")
    if kind == SESSION:
        places = [(_MODEL, True), (_BETA_TRANSCRIPTION, False)]
        return read_models(body, places, deployments, "the request")
    if kind == TRANSCRIPTION_SESSION:
        return read_models(body, [(_BETA_TRANSCRIPTION, True)], deployments, "the request")
    if kind == LIVE_FORK:  # overrides only: the model is inherited, the delegation's may be kept
        session = body.get("session")
        places = [(("session", *_MODEL), False), *live_places(session, ("session",), update=True)]
        return read_models(body, places, deployments, "the request")
    if kind in LIVE_KINDS:  # a WebRTC session and a SIP accept alike: {"session": LIVE, ...}
        places = live_places(body.get("session"), ("session",))
        return read_models(body, places, deployments, "the request")
    if kind == TRANSLATION_SECRET:  # its model, and the model transcribing its source audio
        places = [(("session", *_MODEL), True), (("session", *_GA_TRANSCRIPTION), False)]
        return read_models(body, places, deployments, "the request")
    return NamedModels(error=f"unknown kind of mint {kind}")


def read_call_form(
    body: bytes, content_type: str, deployments: Mapping[str, str] | None = None
) -> NamedModels:
    """The models a multipart WebRTC offer names in its ``session`` field (its SDP is skipped, never
    decoded). Never raises."""
    walk = form_parts(body, content_type)
    if walk.error is not None:
        return NamedModels(error=walk.error)
    sessions = [part for part in walk.parts if part.name == b"session"]
    if len(sessions) > 1:
        return NamedModels(error="the offer has several session fields: its model cannot be read")
    if not sessions:
        cut = "" if walk.complete else " (the form is cut short or malformed)"
        return NamedModels(error=f"the offer has no session field, so it names no model{cut}")
    if not walk.complete:  # a server reading on may find another session field (its last wins)
        return NamedModels(error="the offer's form is cut short or malformed: its model cannot be read")
    part = sessions[0]
    if part.end - part.start > MAX_SESSION_PART:
        return NamedModels(error="the offer's session field is too large to read")
    session = loads(body[part.start : part.end])
    if not isinstance(session, dict):
        return NamedModels(error="the offer's session field is not a JSON object")
    return read_models(session, _ga_places(session, ()), deployments or {}, "the offer's session")


def with_models(body: dict[str, Any], changes: Mapping[Where, str]) -> dict[str, Any]:
    """``body`` with the value at each ``where`` replaced: every other member kept. ValueError
    when a place is not in it."""
    for where, value in changes.items():
        body = _replaced(body, where, value)
    return body


def _replaced(obj: Any, where: Where, value: str) -> Any:
    if not where:
        return value
    if not isinstance(obj, dict) or where[0] not in obj:
        raise ValueError(f"the request has no {where[0]} to rewrite")
    return {**obj, where[0]: _replaced(obj[where[0]], where[1:], value)}


# --- inside a Realtime WebSocket -----------------------------------------------------------------


def may_update_session(data: bytes) -> bool:
    """Cheap test: may this client message be a session update naming a model? One with a ``\\u``
    escape may be, however its bytes read (``"session.upd\\u0061te"``, ``"mod\\u0065l"``)."""
    return (_UPDATE in data and _NAMES_MODEL in data) or has_escape(data)


def read_session_update(data: bytes, deployments: Mapping[str, str] | None = None) -> SessionUpdate | None:
    """The transcription models a client ``session.update`` / ``transcription_session.update``
    names, else None; on Azure each is a deployment (``deployments``: the model it serves). A model
    that is not a name is left to the server to refuse. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("type") not in ("session.update", "transcription_session.update"):
        return None
    places = [(("session", *_BETA_TRANSCRIPTION), False)]
    if obj["type"] == "session.update":
        places.insert(0, (("session", *_GA_TRANSCRIPTION), False))
    event_id = obj.get("event_id")
    found = read_models(obj, places, deployments or {}, "the update")
    return SessionUpdate(found, event_id if isinstance(event_id, str) else None, obj)


def update_with_models(data: bytes, update: SessionUpdate, changes: Mapping[Where, str]) -> bytes:
    """The update ``data`` with the models at ``changes`` replaced (see ``message_with_models``)."""
    return message_with_models(data, update.body, changes)


def message_with_models(data: bytes, body: Any, changes: Mapping[Where, str]) -> bytes:
    """The WebSocket message ``data`` (``body``: it decoded) with the models at ``changes``
    replaced: only each value changes where that can be done exactly, else the event is written out
    again as ASCII JSON (see ``values.rewritten_value``: mitmproxy sends a changed message in
    4,000-byte pieces). ValueError when a place holds no model."""
    obj: Any = body
    for where, new in changes.items():
        old = value_at(obj, where)
        if not isinstance(old, str):
            raise ValueError(f"the message has no {'.'.join(where)} to rewrite")
        obj = _replaced(obj, where, new)
        data = rewritten_value(data, where[-1], old, new, obj)
    return data
