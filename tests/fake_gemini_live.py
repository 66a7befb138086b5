"""A fake Gemini Live API (BidiGenerateContent) over WSS on 127.0.0.1, and the messages it speaks.

It speaks enough of the protocol for the meter, as the Developer API and Vertex AI do: the first
client message must be ``{"setup": {"model": ...}}``, answered ``{"setupComplete": {}}`` (a model
named ``*-missing`` is refused as Google refuses one: close 1008 with the reason Google gives).
A ``clientContent`` with ``turnComplete``, or a ``realtimeInput`` with ``audioStreamEnd`` (either
spelling: google-genai sends ``client_content`` and ``realtime_input``), starts
a turn: an output transcription, ``X-Fake-Chunks`` audio chunks (``CHUNK_BYTES`` of base64 each,
default 3), then ``{"serverContent": {"turnComplete": true}, "usageMetadata": ...}``. Every other
``realtimeInput`` (audio) is only recorded.

Server messages go in BINARY frames on the Developer API paths (as Google sends them) and in TEXT
frames on Vertex's, so both kinds are exercised. Vertex's usage says ``candidates*`` where the
Developer API says ``response*``.

Tests steer a session with handshake headers (they pass through the proxy):

- ``X-Fake-Usage``: a JSON list of usageMetadata objects, one per turn (default ``TURN_USAGES``);
- ``X-Fake-Usage-With-Content: 1``: the usage rides on the last audio chunk, and the turn then
  ends with a bare ``turnComplete``;
- ``X-Fake-Hold: 1``: a turn stops after its audio chunks, without usage or ``turnComplete``;
- ``X-Test-Tag``: a label to find the session again.

Every handshake is recorded (``FakeGeminiLive.handshakes``), and for each session the messages the
client sent (parsed) and the exact bytes of every message sent to it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_websocket import FakeWebSocketServer, lower_headers
from websockets.asyncio.server import ServerConnection

CHUNK_BYTES = 48_000  # base64 characters per audio chunk (1 s of 24 kHz PCM16 is 64 KB of base64)
DEV_PATH = "//ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
VERTEX_PATH = "//ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
TRANSCRIPT = "Sure, here is the forecast."

# Two turns as the Developer API reports them: each usageMetadata is one generation's, and its
# promptTokenCount the whole context processed again for it (so it grows turn by turn).
# Turn 1: 541 in (410 text + 131 audio), 156 out (all audio).
# Turn 2: 780 in (500 text + 200 audio + 80 image), 230 out (200 audio + 10 text, + 20 thoughts);
#         120 of the input were cache hits.
TURN_USAGES: list[dict[str, Any]] = [
    {
        "promptTokenCount": 541,
        "responseTokenCount": 156,
        "totalTokenCount": 697,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 410},
            {"modality": "AUDIO", "tokenCount": 131},
        ],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 156}],
    },
    {
        "promptTokenCount": 780,
        "cachedContentTokenCount": 120,
        "responseTokenCount": 210,
        "thoughtsTokenCount": 20,
        "totalTokenCount": 990,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 500},
            {"modality": "AUDIO", "tokenCount": 200},
            {"modality": "IMAGE", "tokenCount": 80},
        ],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
        "responseTokensDetails": [
            {"modality": "AUDIO", "tokenCount": 200},
            {"modality": "TEXT", "tokenCount": 10},
        ],
    },
]
# The reason Google closes a session with (1008) when the setup names a model it does not serve
# live; close reasons are cut at 123 bytes, Google's too.
NOT_FOUND = (
    "{model} is not found for API version v1beta, or is not supported for bidiGenerateContent. "
    "Call ListModels to see the list of available models and their supported methods."
)


# ---------------------------------------------------------------- messages


def dumps(message: dict[str, Any]) -> bytes:
    """A message as the server sends it."""
    return json.dumps(message).encode()


def vertex_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The same counts under Vertex's names (``candidates*`` for ``response*``)."""
    renamed = {
        "responseTokenCount": "candidatesTokenCount",
        "responseTokensDetails": "candidatesTokensDetails",
    }
    return {renamed.get(k, k): copy.deepcopy(v) for k, v in usage.items()}


def setup_message(model: str, *, instruction: str = "Be brief.", vertex: bool = False) -> dict[str, Any]:
    """A setup as google-genai sends it (camelCase keys, a snake_case one leaking through)."""
    return {
        "setup": {
            "model": model,
            "generationConfig": {"responseModalities": ["AUDIO"]},
            "systemInstruction": {"parts": [{"text": instruction}], "role": "user"},
            "outputAudioTranscription": {},
            **({} if vertex else {"contextWindowCompression": {"sliding_window": {}}}),
        }
    }


def setup_complete() -> dict[str, Any]:
    return {"setupComplete": {}}


def transcription(text: str = TRANSCRIPT) -> dict[str, Any]:
    return {"serverContent": {"outputTranscription": {"text": text}}}


def audio_chunk(turn: int, n: int, size: int = CHUNK_BYTES) -> dict[str, Any]:
    """One chunk of the model's audio, with ``size`` characters of base64."""
    raw = hashlib.sha256(f"{turn}/{n}".encode()).digest() * (size // 24 + 1)
    data = base64.b64encode(raw).decode()[:size]
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
    return {"serverContent": {"modelTurn": {"parts": [part]}}}


def turn_complete(usage: dict[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"serverContent": {"turnComplete": True}}
    if usage is not None:
        message["usageMetadata"] = usage
    return message


# ---------------------------------------------------------------- the server


@dataclass
class FakeLiveSession:
    """One accepted WebSocket: what the client sent, and every message sent to it (exact bytes)."""

    path: str
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None  # (code, reason) of a close the client or proxy sent
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def tag(self) -> str | None:
        return self.headers.get("x-test-tag")

    def kinds(self) -> list[str]:
        """The top-level key of each message the client sent (``setup``, ``client_content``...)."""
        return [next(iter(m), "?") for m in self.received]


class FakeGeminiLive(FakeWebSocketServer):
    """The fake Live server (tests/fake_websocket.py runs it)."""

    def __init__(self, directory: Path) -> None:
        hosts = ["127.0.0.1", "localhost", "generativelanguage.googleapis.com"]
        # permessage-deflate stays on (websockets' default, and the SDK's): mitmproxy must hand
        # the addon the messages inflated.
        super().__init__(
            directory, "fake-gemini-live", hosts, "fake Gemini Live server", compression="deflate"
        )

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = lower_headers(ws.request.headers)
        session = FakeLiveSession(ws.request.path, headers)
        with self._lock:
            self.sessions.append(session)
        vertex = "aiplatform" in ws.request.path
        usages = json.loads(headers.get("x-fake-usage", "null")) or TURN_USAGES
        chunks = int(headers.get("x-fake-chunks", "3"))
        with_content = headers.get("x-fake-usage-with-content") == "1"
        hold = headers.get("x-fake-hold") == "1"
        turn = 0

        async def send(message: dict[str, Any]) -> None:
            data = dumps(message)
            session.sent.append(data)
            await ws.send(data.decode() if vertex else data)

        try:
            async for raw in ws:
                message = json.loads(raw)
                session.received.append(message)
                if "setup" in message:
                    model = str(message["setup"].get("model", ""))
                    if model.endswith("-missing"):
                        reason = NOT_FOUND.format(model=model).encode()[:123].decode(errors="ignore")
                        await ws.close(1008, reason)
                        break
                    await send(setup_complete())
                    continue
                content = _field(message, "clientContent") or {}
                realtime = _field(message, "realtimeInput") or {}
                if not (_field(content, "turnComplete") or _field(realtime, "audioStreamEnd")):
                    continue
                usage = usages[turn % len(usages)]
                usage = vertex_usage(usage) if vertex else usage
                turn += 1
                await send(transcription())
                for n in range(chunks):
                    chunk = audio_chunk(turn, n)
                    if with_content and n == chunks - 1 and not hold:
                        chunk["usageMetadata"] = usage
                    await send(chunk)
                if not hold:
                    await send(turn_complete(None if with_content else usage))
        except Exception:  # the proxy hung up: what was received stays recorded
            pass
        finally:
            if ws.close_code is not None:
                session.close = (ws.close_code, ws.close_reason or "")
            session.ended.set()


def _field(message: dict[str, Any], name: str) -> Any:
    """A field in either spelling the server accepts (google-genai sends ``client_content``)."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return message.get(name, message.get(snake))


def running_fake(directory: Path) -> FakeGeminiLive:
    """A started fake, for ``with``: closed after."""
    return FakeGeminiLive(directory)
