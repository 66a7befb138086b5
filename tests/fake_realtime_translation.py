"""A fake OpenAI Realtime translation API (``wss://api.openai.com/v1/realtime/translations``) over WSS
on 127.0.0.1, and the events it speaks (for the unit and hook tests too).

It speaks the protocol as the openai SDK's types describe it (``RealtimeTranslationClientEvent``,
``RealtimeTranslationServerEvent``): the model is the handshake's ``model`` query parameter; the
first server event is ``session.created`` (the session: its id and that model). A client
``session.update`` is answered with ``session.updated`` (the transcription model and language it
set); every ``REPLY_EVERY`` client ``session.input_audio_buffer.append`` events, it sends a
translated audio delta and a transcript delta; a ``session.close`` is answered with
``session.closed``, then the server closes the socket (1000). No event carries usage (none does in
the real API). A handshake without a model is answered 400, as a required parameter missing is.

``X-Test-Tag`` in the handshake is a label to find the session again. Every session's handshake
path, the client's events (parsed) and the exact bytes of every message sent to it are recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fake_websocket import FakeWebSocketServer, dumps, lower_headers
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PATH = "/v1/realtime/translations"
MODEL = "gpt-realtime-translate"
REPLY_EVERY = 5  # client appends per translated delta
TRANSCRIPT = "Hace sol en Zanzibar hoy, tokometer-secret-7c2e."
SECOND = 48_000  # bytes of 24 kHz mono PCM16 audio a second


# ---------------------------------------------------------------- events


def translation_session(
    model: str = MODEL, session_id: str = "sess_fake_tr1", transcription: str | None = None
) -> dict[str, Any]:
    """The translation session a ``session.created`` or ``session.updated`` carries."""
    return {
        "id": session_id,
        "type": "translation",
        "model": model,
        "expires_at": 1_900_000_000,
        "audio": {
            "input": {
                "noise_reduction": None,
                "transcription": None if transcription is None else {"model": transcription},
            },
            "output": {"language": "es"},
        },
    }


def session_created(model: str = MODEL) -> dict[str, Any]:
    return {"type": "session.created", "event_id": "event_c1", "session": translation_session(model)}


def session_updated(model: str = MODEL, transcription: str | None = None) -> dict[str, Any]:
    session = translation_session(model, transcription=transcription)
    return {"type": "session.updated", "event_id": "event_u1", "session": session}


def session_closed() -> dict[str, Any]:
    return {"type": "session.closed", "event_id": "event_closed"}


def translation_update(
    language: str = "es", transcription: str | None = None, event_id: str = "event_upd"
) -> dict[str, Any]:
    """A client ``session.update``: the target language, and maybe a source transcription model."""
    audio: dict[str, Any] = {"output": {"language": language}}
    if transcription is not None:
        audio["input"] = {"transcription": {"model": transcription}}
    return {"type": "session.update", "event_id": event_id, "session": {"audio": audio}}


def audio_append(n: int = 0, size: int = SECOND // 5) -> dict[str, Any]:
    """A client append of ``size`` bytes of audio (default 200 ms), base64-encoded."""
    raw = (hashlib.sha256(f"in/{n}".encode()).digest() * (size // 32 + 1))[:size]
    return {"type": "session.input_audio_buffer.append", "audio": base64.b64encode(raw).decode()}


def output_audio(n: int = 0, size: int = SECOND // 5) -> dict[str, Any]:
    raw = (hashlib.sha256(f"out/{n}".encode()).digest() * (size // 32 + 1))[:size]
    return {
        "type": "session.output_audio.delta",
        "event_id": f"event_a{n}",
        "delta": base64.b64encode(raw).decode(),
        "elapsed_ms": 200 * n,
        "format": "pcm16",
        "sample_rate": 24000,
        "channels": 1,
    }


def output_transcript(text: str = TRANSCRIPT, n: int = 0) -> dict[str, Any]:
    return {"type": "session.output_transcript.delta", "event_id": f"event_t{n}", "delta": text}


# ---------------------------------------------------------------- the server


@dataclass
class FakeTranslationSession:
    """One accepted WebSocket: what the client sent, and every message sent to it (exact bytes)."""

    path: str
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def tag(self) -> str | None:
        return self.headers.get("x-test-tag")

    @property
    def model(self) -> str | None:
        found = parse_qs(urlsplit(self.path).query).get("model")
        return found[0] if found else None

    def kinds(self) -> list[str]:
        return [str(m.get("type")) for m in self.received]

    def appended_bytes(self) -> int:
        """The audio the client appended, decoded."""
        appends = [m for m in self.received if m.get("type") == "session.input_audio_buffer.append"]
        return sum(len(base64.b64decode(m["audio"])) for m in appends)


class FakeRealtimeTranslation(FakeWebSocketServer):
    """The fake translation server (tests/fake_websocket.py runs it)."""

    def __init__(self, directory: Path) -> None:
        hosts = ["127.0.0.1", "localhost", "api.openai.com"]
        super().__init__(directory, "fake-realtime-translation", hosts, "fake Realtime translation server")
        self.refused: list[tuple[str, dict[str, str]]] = []  # handshakes answered 400: path, headers

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if parse_qs(urlsplit(request.path).query).get("model"):
            return None
        with self._lock:
            self.refused.append((request.path, lower_headers(request.headers)))
        body = json.dumps({"error": {"type": "invalid_request_error", "code": "missing_model"}}).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(400, "Bad Request", headers, body)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        session = FakeTranslationSession(ws.request.path, lower_headers(ws.request.headers))
        with self._lock:
            self.sessions.append(session)
        model = session.model or MODEL
        appends = 0

        async def send(event: dict[str, Any]) -> None:
            data = dumps(event)
            session.sent.append(data)
            await ws.send(data.decode())

        try:
            await send(session_created(model))
            async for raw in ws:
                event = json.loads(raw)
                session.received.append(event)
                kind = event.get("type")
                if kind == "session.update":
                    audio = (event.get("session") or {}).get("audio") or {}
                    transcription = ((audio.get("input") or {}).get("transcription") or {}).get("model")
                    await send(session_updated(model, transcription))
                elif kind == "session.input_audio_buffer.append":
                    appends += 1
                    if appends % REPLY_EVERY == 0:
                        await send(output_audio(appends))
                        await send(output_transcript(n=appends))
                elif kind == "session.close":
                    await send(session_closed())
                    await ws.close(1000)
                    break
        except Exception:  # the proxy or the client hung up: what was received stays recorded
            pass
        finally:
            if ws.close_code is not None:
                session.close = (ws.close_code, ws.close_reason or "")
            session.ended.set()
