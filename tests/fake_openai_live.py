"""A fake OpenAI Live API (``wss://api.openai.com/v1/live/sessions``) over WSS on 127.0.0.1, and
the events it speaks (for the unit and hook tests too).

It speaks enough of the protocol for the meter, as the openai SDK's types describe it: the first
client event must be ``session.start`` (its ``session.model`` names the model), answered with
``session.started`` (the resolved session: its id and model). Every ``REPORT_EVERY`` client
``session.input_audio.append`` events, it sends an output audio delta, a transcript delta and a
``session.usage.updated`` whose ``usage.seconds`` is the session's CUMULATIVE billed duration,
taken in turn from ``X-Fake-Seconds`` (a JSON list; default ``REPORTED_SECONDS``, which repeats a
total once). A client ``session.close`` is answered with ``session.closed`` (reason
``close_requested``, the final cumulative usage, ``X-Fake-Final-Seconds``, default
``FINAL_SECONDS``), then the server closes the socket (1000).

Tests steer a session with handshake headers (they pass through the proxy):

- ``X-Fake-Seconds``: the cumulative totals its usage reports carry, in order (JSON list);
- ``X-Fake-Final-Seconds``: the total ``session.closed`` reports;
- ``X-Fake-Delegate: 1``: with its first usage report, the server also runs one delegated Responses
  call and reports it as the Live API does, nested in ``response.event`` events
  (``response.created``, then ``response.completed`` with ``DELEGATED_USAGE``);
- ``X-Fake-Hold: 1``: a ``session.close`` is never answered;
- ``X-Fake-Split: usage``: after its first usage report, the server sends the first half of a
  40 KB output audio delta (one frame written raw, as a network delivers it in pieces) and the
  rest only when the next client event comes; ``X-Fake-Split: close``: a ``session.close`` is
  answered with the first half of such a delta and nothing more (the server stalls mid-message);
- ``X-Test-Tag``: a label to find the session again.

A fork, ``/v1/live/sessions/{id}/fork`` (the SDK's ``client.live.forks.connect()``), runs as the
primary does, but its ``session.start`` carries overrides only: its ``session.started`` names the
stored session's model (inherited: ``X-Fake-Stored-Model``, default ``MODEL``) and a new session
id, ``live_fork_of_{id}``.

A sideband, ``/v1/live/sessions/{id}/attach`` (the SDK's ``client.live.sideband.connect()``),
stands for a server attached to a WebRTC or SIP session whose media never reach this server: a
client ``session.update`` is answered with ``session.updated`` (the resolved session, its model
``MODEL`` and the delegation as updated); the first time, the session's usage reports follow, one
per total in ``X-Fake-Seconds`` (the media running elsewhere); a ``session.close`` is answered with
``session.closed`` (``X-Fake-Final-Seconds``) and the close (1000).

Every handshake is recorded, and for each session the client's events (parsed) and the exact bytes
of every message sent to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_websocket import FakeWebSocketServer, dumps, lower_headers
from websockets.asyncio.server import ServerConnection

PATH = "/v1/live/sessions"
ATTACH = re.compile(r"^/v1/live/sessions/([^/?]+)/attach(?:\?.*)?$")
FORK = re.compile(r"^/v1/live/sessions/([^/?]+)/fork(?:\?.*)?$")
MODEL = "gpt-live-1"
REPORT_EVERY = 2  # client audio appends per usage report
# Cumulative billed seconds, one total per report: the second report says the same total again.
REPORTED_SECONDS: list[float] = [3, 3, 8]
FINAL_SECONDS = 11.0
TRANSCRIPT = "It is sunny in Zanzibar today."
DELEGATE_MODEL = "gpt-5.5"
# A delegated Responses call's usage: 900 in (100 cached), 250 out (50 reasoning).
DELEGATED_USAGE: dict[str, Any] = {
    "input_tokens": 900,
    "input_tokens_details": {"cached_tokens": 100},
    "output_tokens": 250,
    "output_tokens_details": {"reasoning_tokens": 50},
    "total_tokens": 1150,
}


# ---------------------------------------------------------------- events


def session_start(
    model: str = MODEL,
    *,
    instructions: str = "Be brief.",
    event_id: str | None = "event_start",
    delegate_to: str | None = None,
) -> dict[str, Any]:
    """A ``session.start`` as the SDK sends it (the model inside ``session``)."""
    session: dict[str, Any] = {
        "model": model,
        "instructions": instructions,
        "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
    }
    if delegate_to is not None:
        session["delegation"] = {"type": "responses", "responses": {"model": delegate_to}}
    event: dict[str, Any] = {"type": "session.start", "session": session}
    if event_id is not None:
        event["event_id"] = event_id
    return event


def fork_start(delegate_to: str | None = None, event_id: str | None = "event_fork") -> dict[str, Any]:
    """A fork's ``session.start`` as the SDK sends it: overrides only (no model: it is inherited)."""
    session: dict[str, Any] = {}
    if delegate_to is not None:
        session["delegation"] = {"type": "responses", "responses": {"model": delegate_to}}
    event: dict[str, Any] = {"type": "session.start", "session": session}
    if event_id is not None:
        event["event_id"] = event_id
    return event


def session_resource(model: str = MODEL, session_id: str = "live_fake123") -> dict[str, Any]:
    """The resolved session a ``session.started`` or ``session.closed`` carries."""
    return {
        "id": session_id,
        "model": model,
        "status": "active",
        "expires_at": 1_900_000_000,
        "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
    }


def session_started(
    model: str = MODEL, client_event_id: str | None = "event_start", session_id: str = "live_fake123"
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "session.started",
        "event_id": "event_s1",
        "session": session_resource(model, session_id),
    }
    if client_event_id is not None:
        event["client_event_id"] = client_event_id
    return event


def session_updated(
    model: str = MODEL,
    session_id: str = "live_fake123",
    client_event_id: str | None = None,
    delegation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``session.updated``: an update accepted, with the resolved session."""
    session = session_resource(model, session_id)
    if delegation is not None:
        session["delegation"] = delegation
    event: dict[str, Any] = {"type": "session.updated", "event_id": "event_su1", "session": session}
    if client_event_id is not None:
        event["client_event_id"] = client_event_id
    return event


def delegation_update(model: str, event_id: str = "event_upd") -> dict[str, Any]:
    """A client ``session.update`` changing the delegation's Responses model."""
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {"delegation": {"type": "responses", "responses": {"model": model}}},
    }


def usage_updated(seconds: float, n: int = 1) -> dict[str, Any]:
    """A ``session.usage.updated``: the session's cumulative billed seconds so far."""
    return {
        "type": "session.usage.updated",
        "event_id": f"event_u{n}",
        "usage": {"seconds": seconds},
        "context_window": {"usage_ratio": 0.01 * n},
    }


def session_closed(
    seconds: float, reason: str = "close_requested", model: str = MODEL, session_id: str = "live_fake123"
) -> dict[str, Any]:
    """The terminal ``session.closed``: the close reason and the final cumulative usage."""
    return {
        "type": "session.closed",
        "event_id": "event_closed",
        "reason": reason,
        "session": session_resource(model, session_id),
        "usage": {"seconds": seconds},
    }


def audio_append(n: int = 0, size: int = 4000) -> dict[str, Any]:
    """A client ``session.input_audio.append`` with ``size`` characters of base64."""
    raw = hashlib.sha256(f"in/{n}".encode()).digest() * (size // 24 + 1)
    return {"type": "session.input_audio.append", "audio": base64.b64encode(raw).decode()[:size]}


def output_audio(n: int = 0, size: int = 4000) -> dict[str, Any]:
    """A server ``session.output_audio.delta`` with ``size`` characters of base64."""
    raw = hashlib.sha256(f"out/{n}".encode()).digest() * (size // 24 + 1)
    return {
        "type": "session.output_audio.delta",
        "event_id": f"event_a{n}",
        "delta": base64.b64encode(raw).decode()[:size],
    }


def transcript_delta(text: str = TRANSCRIPT) -> dict[str, Any]:
    return {"type": "session.output_transcript.delta", "event_id": "event_t1", "delta": text}


def error_event(code: str, message: str, *, param: str | None = None) -> dict[str, Any]:
    """An ``error`` event as the Live API reports an invalid client command."""
    return {
        "type": "error",
        "event_id": "event_err",
        "error": {"type": "invalid_request_error", "code": code, "message": message, "param": param},
    }


def delegated(
    kind: str, status: str, usage: dict[str, Any] | None, model: str = DELEGATE_MODEL
) -> dict[str, Any]:
    """A ``response.event``: a delegated Responses call's streaming event, nested as Live nests it
    (the response snapshot without its input, instructions, tools or output)."""
    response = {
        "id": "resp_delegated1",
        "object": "response",
        "status": status,
        "model": model,
        "output": [],
        "usage": usage,
        "service_tier": "default",
    }
    return {
        "type": "response.event",
        "event_id": f"event_{kind}",
        "delegation_id": "deleg_1",
        "event": {"type": kind, "sequence_number": 1, "response": response},
    }


# ---------------------------------------------------------------- the server


@dataclass
class FakeLiveSession:
    """One accepted WebSocket: what the client sent, and every message sent to it (exact bytes)."""

    path: str
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None  # (code, reason) of the close frame the server got
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def tag(self) -> str | None:
        return self.headers.get("x-test-tag")

    def kinds(self) -> list[str]:
        """The ``type`` of each event the client sent."""
        return [str(m.get("type")) for m in self.received]


class FakeOpenAILive(FakeWebSocketServer):
    """The fake Live server (tests/fake_websocket.py runs it)."""

    def __init__(self, directory: Path) -> None:
        hosts = ["127.0.0.1", "localhost", "api.openai.com"]
        super().__init__(directory, "fake-openai-live", hosts, "fake OpenAI Live server")

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = lower_headers(ws.request.headers)
        session = FakeLiveSession(ws.request.path, headers)
        with self._lock:
            self.sessions.append(session)
        totals = json.loads(headers.get("x-fake-seconds", "null")) or REPORTED_SECONDS
        final = float(headers.get("x-fake-final-seconds", FINAL_SECONDS))
        delegate = headers.get("x-fake-delegate") == "1"
        hold = headers.get("x-fake-hold") == "1"
        split = headers.get("x-fake-split")
        rest: bytes | None = None  # the second half of a message sent in part
        appends = reports = 0
        model = MODEL

        async def send(event: dict[str, Any]) -> None:
            data = dumps(event)
            session.sent.append(data)
            await ws.send(data.decode())

        def send_half(event: dict[str, Any]) -> bytes:
            """Write the first half of ``event``'s frame (a text frame, unmasked, uncompressed) past
            websockets; the rest, to write later."""
            data = dumps(event)
            session.sent.append(data)
            assert 125 < len(data) < 65536
            frame = b"\x81\x7e" + len(data).to_bytes(2, "big") + data
            ws.transport.write(frame[: len(frame) // 2])
            return frame[len(frame) // 2 :]

        attached = ATTACH.match(ws.request.path)
        forked = FORK.match(ws.request.path)
        session_id = f"live_fork_of_{forked.group(1)}" if forked is not None else "live_fake123"
        stored_model = headers.get("x-fake-stored-model", MODEL)  # what a fork inherits
        try:
            async for raw in ws:
                event = json.loads(raw)
                session.received.append(event)
                kind = event.get("type")
                if attached is not None:  # a sideband of a session whose media run elsewhere
                    session_id = attached.group(1)
                    if kind == "session.update":
                        delegation = (event.get("session") or {}).get("delegation")
                        await send(session_updated(MODEL, session_id, event.get("event_id"), delegation))
                        for total in totals if reports == 0 else []:
                            reports += 1
                            await send(usage_updated(total, reports))
                    elif kind == "session.close":
                        await send(session_closed(final, session_id=session_id))
                        await ws.close(1000)
                        break
                    continue
                if rest is not None:
                    ws.transport.write(rest)
                    rest = None
                if kind == "session.start":  # a fork's names no model: it inherits the stored one's
                    model = str(event.get("session", {}).get("model") or (stored_model if forked else MODEL))
                    await send(session_started(model, event.get("event_id"), session_id))
                elif kind == "session.input_audio.append":
                    appends += 1
                    if appends % REPORT_EVERY:
                        continue
                    await send(output_audio(appends))
                    await send(transcript_delta())
                    if delegate and reports == 0:
                        await send(delegated("response.created", "in_progress", None))
                        await send(delegated("response.completed", "completed", DELEGATED_USAGE))
                    await send(usage_updated(totals[min(reports, len(totals) - 1)], reports + 1))
                    reports += 1
                    if split == "usage" and reports == 1:
                        rest = send_half(output_audio(1000 + appends, 40000))
                elif kind == "session.close" and split == "close":
                    send_half(output_audio(2000 + appends, 40000))  # and nothing more
                elif kind == "session.close" and not hold:
                    await send(session_closed(final, model=model, session_id=session_id))
                    await ws.close(1000)
                    break
        except Exception:  # the proxy or the client hung up: what was received stays recorded
            pass
        finally:
            if ws.close_code is not None:
                session.close = (ws.close_code, ws.close_reason or "")
            session.ended.set()
