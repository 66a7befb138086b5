"""OpenAI Realtime translation (``wss://api.openai.com/v1/realtime/translations?model=...``): the
handshake, the audio a client sends, and the server events the meter reads.

Pure functions over bytes; no mitmproxy; nothing here raises on what a peer sends. A translation
session (the openai SDK's ``client.realtime.translations.connect(model=...)``; the model, such as
``gpt-realtime-translate``, is the handshake's ``model`` query parameter and cannot change later)
streams source audio in and translated audio and transcript deltas out. Its client events
(openai 3.x ``RealtimeTranslationClientEvent``): ``session.update`` (``audio.output.language``,
``audio.input.transcription.model``, noise reduction), ``session.input_audio_buffer.append``
(base64 of 24 kHz mono PCM16, the only format a WebSocket session accepts: 48,000 bytes a
second) and ``session.close``. Its server events: ``session.created`` and ``session.updated``
(the session: ``id``, ``model``), ``session.closed``, ``error`` and the deltas. None of them
carries usage: OpenAI bills the session by its audio duration (per minute), and reports no
count of it on the socket. What the proxy can know is the audio the client appended, which is
what ``appended_audio_bytes`` measures (the meter's rows are estimates from it).

Speed: an append of 200 ms is some 13 KB of base64, five a second: decoded as JSON (10 us; a regex
walk of its audio is slower), its base64 measured, never decoded. Any other client message costs
a substring test or two; a server message, a look at its first bytes (its ``*.delta`` type).
"""

from __future__ import annotations

from dataclasses import dataclass

from addon.providers.openai_realtime import Handshake
from addon.providers.values import has_escape, loads, may_hold
from addon.providers.values import text as _str

PATH = "/v1/realtime/translations"
OPENAI = Handshake(frozenset({PATH}), has_sidebands=False)
BYTES_PER_SECOND = 48_000  # 24 kHz, 16-bit, mono
APPEND = "session.input_audio_buffer.append"
_APPEND_NEEDLE = b'input_audio_buffer.append"'
_NEEDLES = (b'session.created"', b'session.updated"', b'session.closed"')


def appended_audio_bytes(data: bytes) -> int:
    """The bytes of audio a client message appends (a ``session.input_audio_buffer.append``'s
    ``audio``: the length it base64-decodes to, not decoded), else 0; as a JSON parser reads the
    message. Never raises."""
    if _APPEND_NEEDLE not in data and not has_escape(data):  # an escape may spell the type
        return 0
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("type") != APPEND:
        return 0
    audio = obj.get("audio")
    return _base64_size(audio) if isinstance(audio, str) else 0


def _base64_size(encoded: str) -> int:
    """The length of what base64 ``encoded`` decodes to (padding counted out; not validated)."""
    return max(len(encoded) * 3 // 4 - (len(encoded) - len(encoded.rstrip("="))), 0)


def asks_for_work(data: bytes) -> bool:
    """Is this client message an append (the audio a session bills), even one of no audio?"""
    obj = loads(data)
    return isinstance(obj, dict) and obj.get("type") == APPEND


# --- server events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configured:
    """``session.created`` or ``session.updated``: the session's model and id (None: not named)."""

    model: str | None
    session_id: str | None


@dataclass(frozen=True, slots=True)
class Closed:
    """``session.closed``: the session is over (it reports no usage)."""


ServerEvent = Configured | Closed


def might_matter(data: bytes) -> bool:
    """Cheap test (C speed): may this server message be one ``read_server_event`` reads?"""
    return may_hold(data, _NEEDLES)


def read_server_event(data: bytes) -> ServerEvent | None:
    """The event in one server message if it is one the meter reads, else None. Never raises."""
    obj = loads(data)
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind in ("session.created", "session.updated"):
        session = obj.get("session")
        session = session if isinstance(session, dict) else {}
        return Configured(_str(session.get("model")), _str(session.get("id")))
    if kind == "session.closed":
        return Closed()
    return None
