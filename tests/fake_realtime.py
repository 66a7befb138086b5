"""A fake OpenAI Realtime API over WSS on 127.0.0.1, and the events it speaks (for unit tests too).

It speaks enough of the GA protocol for the meter: ``session.created`` on connect (the model, and
the transcription model when configured), ``session.updated`` for a ``session.update``; for a
``response.create``: ``response.created``, audio deltas with large base64 payloads, and
``response.done`` with usage; for an ``input_audio_buffer.commit``: ``input_audio_buffer.committed``
and ``conversation.item.input_audio_transcription.completed`` with usage.

Tests steer a session with handshake headers (they pass through the proxy):

- ``X-Fake-Status``: answer the handshake with this HTTP status instead of upgrading.
- ``X-Fake-Transcription``: the transcription model ``session.created`` names.
- ``X-Fake-Usage`` / ``X-Fake-Transcription-Usage``: the usage objects to report (JSON).
- ``X-Fake-Deltas``: audio deltas per response (default 3, each ``DELTA_BYTES`` of base64).
- ``X-Fake-Hold: 1``: a response stops after its deltas, without ``response.done``.
- ``X-Test-Tag``: a label to find the session again.

Every handshake is recorded (``FakeRealtime.handshakes``), and for each session the events the
client sent and the exact bytes of every message sent to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fake_websocket import FakeWebSocketServer, dumps, lower_headers
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

# What the real API reports for an alias: a dated snapshot.
SNAPSHOTS = {"gpt-realtime": "gpt-realtime-2025-08-28", "gpt-realtime-mini": "gpt-realtime-mini-2025-10-06"}
DELTA_BYTES = 48_000  # base64 characters per audio delta (1.5 s of 24 kHz PCM16 is ~96 KB)

# A GA response.usage: 1,000 input (700 text + 300 audio) of which 400 cached (300 text + 100
# audio); 500 output (100 text + 400 audio).
RESPONSE_USAGE: dict[str, Any] = {
    "total_tokens": 1500,
    "input_tokens": 1000,
    "output_tokens": 500,
    "input_token_details": {
        "text_tokens": 700,
        "audio_tokens": 300,
        "image_tokens": 0,
        "cached_tokens": 400,
        "cached_tokens_details": {"text_tokens": 300, "audio_tokens": 100, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 400},
}
# The same counts in the beta shape (no image counts).
BETA_RESPONSE_USAGE: dict[str, Any] = {
    "total_tokens": 1500,
    "input_tokens": 1000,
    "output_tokens": 500,
    "input_token_details": {
        "cached_tokens": 400,
        "text_tokens": 700,
        "audio_tokens": 300,
        "cached_tokens_details": {"text_tokens": 300, "audio_tokens": 100},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 400},
}
TRANSCRIPTION_USAGE: dict[str, Any] = {
    "type": "tokens",
    "total_tokens": 170,
    "input_tokens": 150,
    "input_token_details": {"text_tokens": 30, "audio_tokens": 120},
    "output_tokens": 20,
}
DURATION_USAGE: dict[str, Any] = {"type": "duration", "seconds": 90}


# ---------------------------------------------------------------- events


def session_event(
    kind: str,
    model: str | None,
    transcription: str | None,
    *,
    beta: bool = False,
    instructions: str = "Be brief.",
) -> dict[str, Any]:
    """``session.created`` / ``session.updated`` (GA shape, or beta's)."""
    if beta:
        session: dict[str, Any] = {
            "id": "sess_001",
            "object": "realtime.session",
            "model": model,
            "modalities": ["text", "audio"],
            "input_audio_transcription": {"model": transcription} if transcription else None,
        }
    else:
        session = {
            "type": "realtime",
            "object": "realtime.session",
            "id": "sess_001",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": instructions,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": transcription, "language": None} if transcription else None,
                    "turn_detection": {"type": "server_vad", "threshold": 0.5},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
        }
    return {"type": kind, "event_id": "event_sess", "session": session}


def response_object(response_id: str, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    """A ``realtime.response`` object, as ``response.created`` and ``response.done`` carry it."""
    details = None
    if status == "cancelled":
        details = {"type": "cancelled", "reason": "turn_detected"}
    elif status == "failed":
        details = {"type": "failed", "error": {"type": "server_error", "code": "boom", "message": "it broke"}}
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": details,
        "output": [
            {
                "id": f"item_{response_id}",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "Hello there, how can I help?"}],
            }
        ],
        "conversation_id": "conv_001",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "usage": usage,
        "metadata": None,
    }


def response_created(response_id: str) -> dict[str, Any]:
    return {
        "type": "response.created",
        "event_id": f"event_c_{response_id}",
        "response": response_object(response_id, "in_progress", None),
    }


def response_done(
    response_id: str, usage: dict[str, Any] | None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "response.done",
        "event_id": f"event_d_{response_id}",
        "response": response_object(response_id, status, usage),
    }


def audio_delta(response_id: str, n: int, size: int = DELTA_BYTES, *, beta: bool = False) -> dict[str, Any]:
    """An audio delta with ``size`` characters of base64."""
    raw = hashlib.sha256(f"{response_id}/{n}".encode()).digest() * (size // 24 + 1)
    return {
        "type": "response.audio.delta" if beta else "response.output_audio.delta",
        "event_id": f"event_a_{response_id}_{n}",
        "response_id": response_id,
        "item_id": f"item_{response_id}",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(raw).decode()[:size],
    }


def transcription_completed(item_id: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": f"event_t_{item_id}",
        "item_id": item_id,
        "content_index": 0,
        "transcript": "What is the weather like?",
        "usage": usage,
    }


# ---------------------------------------------------------------- the server


@dataclass
class FakeSession:
    """One accepted WebSocket: what the client sent, and every message sent to it (exact bytes)."""

    path: str
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def tag(self) -> str | None:
        return self.headers.get("x-test-tag")

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def received_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.received]


class FakeRealtime(FakeWebSocketServer):
    """The fake Realtime server (tests/fake_websocket.py runs it)."""

    def __init__(self, directory: Path) -> None:
        self.handshakes: list[tuple[str, dict[str, str]]] = []
        hosts = ["127.0.0.1", "localhost", "api.openai.com"]
        super().__init__(directory, "fake-realtime", hosts, "fake Realtime server")

    def handshakes_for(self, tag: str) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return [h for h in self.handshakes if h[1].get("x-test-tag") == tag]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = lower_headers(request.headers)
        with self._lock:
            self.handshakes.append((request.path, headers))
        status = headers.get("x-fake-status")
        if status is None:
            return None
        body = dumps({"error": {"message": "fake refusal", "type": "invalid_request_error", "code": None}})
        return connection.respond(HTTPStatus(int(status)), body.decode())

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = lower_headers(ws.request.headers)
        session = FakeSession(ws.request.path, headers)
        with self._lock:
            self.sessions.append(session)
        model = parse_qs(urlsplit(ws.request.path).query).get("model", [None])[0]
        model = SNAPSHOTS.get(model or "", model)
        transcription = headers.get("x-fake-transcription")
        usage = json.loads(headers.get("x-fake-usage", "null")) or RESPONSE_USAGE
        t_usage = json.loads(headers.get("x-fake-transcription-usage", "null")) or TRANSCRIPTION_USAGE
        deltas = int(headers.get("x-fake-deltas", "3"))
        hold = headers.get("x-fake-hold") == "1"
        count = 0
        instructions = "Be brief."

        async def send(event: dict[str, Any]) -> None:
            data = dumps(event)
            session.sent.append(data)
            await ws.send(data.decode())

        try:
            await send(session_event("session.created", model, transcription))
            async for message in ws:
                event = json.loads(message)
                session.received.append(event)
                kind = event.get("type")
                if kind == "session.update":
                    asked = event.get("session", {}).get("audio", {}).get("input", {}).get("transcription")
                    if isinstance(asked, dict):
                        transcription = asked.get("model")
                    instructions = event.get("session", {}).get("instructions", instructions)
                    await send(
                        session_event("session.updated", model, transcription, instructions=instructions)
                    )
                elif kind == "response.create":
                    count += 1
                    rid = f"resp_{count:03d}"
                    await send(response_created(rid))
                    for n in range(deltas):
                        await send(audio_delta(rid, n))
                    if not hold:
                        await send(response_done(rid, usage))
                elif kind == "input_audio_buffer.commit":
                    count += 1
                    item = f"item_in_{count:03d}"
                    await send({"type": "input_audio_buffer.committed", "event_id": "e", "item_id": item})
                    await send(transcription_completed(item, t_usage))
        except Exception:  # the proxy hung up (a capped session): what was received stays recorded
            pass
        finally:
            session.ended.set()


def running_fake(directory: Path) -> FakeRealtime:
    """A started fake, for ``with``: closed after."""
    return FakeRealtime(directory)
