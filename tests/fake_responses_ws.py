"""A fake OpenAI Responses API over WebSocket (WSS on 127.0.0.1), and its events (for unit tests too).

For each ``response.create`` it sends ``response.created``, text deltas and ``response.completed``
with usage, the events of a lane (``stream_id``) echoing it; lanes run at once, a lane's responses
one after another. A create whose model starts with ``bad-`` gets a request ``error`` event instead.
A ``response.steer`` is acknowledged with ``response.steer.accepted``.

Tests steer a session with handshake headers (they pass through the proxy):

- ``X-Fake-Usage``: the usage object to report (JSON).
- ``X-Fake-Deltas``: text deltas per response (default 3).
- ``X-Fake-Hold: 1``: a response stops after its deltas, without its terminal event.
- ``X-Test-Tag``: a label to find the session again.

Every handshake is recorded, and for each session the exact bytes of each message the client sent
and of each message sent to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_websocket import FakeWebSocketServer, dumps, lower_headers
from websockets.asyncio.server import ServerConnection

# What the real API reports for an alias: a dated snapshot.
SNAPSHOTS = {"gpt-5": "gpt-5-2025-08-07", "gpt-5-mini": "gpt-5-mini-2025-08-07"}
OUTPUT_TEXT = "Hello from the fake Responses socket."

# 1,200 input of which 200 cached; 300 output of which 100 reasoning.
RESPONSE_USAGE: dict[str, Any] = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 1500,
}


def _lane(event: dict[str, Any], stream_id: str | None) -> dict[str, Any]:
    return {**event, "stream_id": stream_id} if stream_id is not None else event


def response_object(
    response_id: str,
    status: str,
    model: str,
    usage: dict[str, Any] | None,
    *,
    output: list[dict[str, Any]] | None = None,
    service_tier: str = "default",
) -> dict[str, Any]:
    """A Responses ``response`` object, as ``response.created`` and the terminal events carry it."""
    done = status != "in_progress"
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1764321600,
        "status": status,
        "background": False,
        "error": {"code": "server_error", "message": "it broke"} if status == "failed" else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": (output if output is not None else [_message(response_id)]) if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "service_tier": service_tier,
        "store": False,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage if done else None,
        "metadata": {},
    }


def _message(response_id: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{response_id}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": OUTPUT_TEXT, "annotations": []}],
    }


def web_search_call(n: int) -> dict[str, Any]:
    return {"type": "web_search_call", "id": f"ws_{n}", "status": "completed", "action": {"type": "search"}}


def response_created(
    response_id: str, model: str, stream_id: str | None = None, seq: int = 0
) -> dict[str, Any]:
    event = {
        "type": "response.created",
        "sequence_number": seq,
        "response": response_object(response_id, "in_progress", model, None),
    }
    return _lane(event, stream_id)


def text_delta(
    response_id: str, n: int, stream_id: str | None = None, text: str = "Hello "
) -> dict[str, Any]:
    event = {
        "type": "response.output_text.delta",
        "sequence_number": n + 1,
        "item_id": f"msg_{response_id}",
        "output_index": 0,
        "content_index": 0,
        "delta": text,
        "logprobs": [],
    }
    return _lane(event, stream_id)


def response_terminal(
    response_id: str,
    model: str,
    usage: dict[str, Any] | None,
    stream_id: str | None = None,
    status: str = "completed",
    **kwargs: Any,
) -> dict[str, Any]:
    kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
        status, "response.failed"
    )
    event = {
        "type": kind,
        "sequence_number": 99,
        "response": response_object(response_id, status, model, usage, **kwargs),
    }
    return _lane(event, stream_id)


def request_error(message: str, stream_id: str | None = None, status: int = 400) -> dict[str, Any]:
    event = {
        "type": "error",
        "status": status,
        "error": {
            "type": "invalid_request_error",
            "code": "model_not_found",
            "message": message,
            "param": "model",
        },
    }
    return _lane(event, stream_id)


def create_event(model: str | None, stream_id: str | None = None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.create"}
    if model is not None:
        event["model"] = model
    event.update(fields)
    if "input" not in event:
        event["input"] = "Say hello."
    return _lane(event, stream_id)


# ---------------------------------------------------------------- the server


@dataclass
class FakeSession:
    """One accepted WebSocket: the exact bytes of what the client sent, and of what it was sent."""

    path: str
    headers: dict[str, str]
    received: list[bytes] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def tag(self) -> str | None:
        return self.headers.get("x-test-tag")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data in self.received]


class FakeResponsesWS(FakeWebSocketServer):
    """The fake Responses WebSocket server (tests/fake_websocket.py runs it)."""

    def __init__(self, directory: Path) -> None:
        self.handshakes: list[tuple[str, dict[str, str]]] = []
        hosts = ["127.0.0.1", "localhost", "api.openai.com"]
        super().__init__(directory, "fake-responses-ws", hosts, "fake Responses WebSocket server")

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = lower_headers(ws.request.headers)
        session = FakeSession(ws.request.path, headers)
        with self._lock:
            self.handshakes.append((ws.request.path, headers))
            self.sessions.append(session)
        usage = json.loads(headers.get("x-fake-usage", "null")) or RESPONSE_USAGE
        deltas = int(headers.get("x-fake-deltas", "3"))
        hold = headers.get("x-fake-hold") == "1"
        lanes: dict[str | None, asyncio.Lock] = {}
        tasks: set[asyncio.Task[None]] = set()
        count = 0

        async def send(event: dict[str, Any]) -> None:
            data = dumps(event)
            session.sent.append(data)
            await ws.send(data.decode())

        async def respond(rid: str, model: str, lane: str | None) -> None:
            async with lanes.setdefault(lane, asyncio.Lock()):
                reported = SNAPSHOTS.get(model, model)
                await send(response_created(rid, reported, lane))
                for n in range(deltas):
                    await asyncio.sleep(0.005)  # lanes interleave
                    await send(text_delta(rid, n, lane))
                if not hold:
                    await send(response_terminal(rid, reported, usage, lane))

        try:
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                session.received.append(data)
                event = json.loads(data)
                kind = event.get("type")
                lane = event.get("stream_id")
                if kind == "response.create":
                    model = str(event.get("model"))
                    if model.startswith("bad-"):
                        await send(request_error(f"The model {model} does not exist.", lane))
                        continue
                    count += 1
                    task = asyncio.create_task(respond(f"resp_{count:03d}", model, lane))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "response.steer":
                    accepted = {"id": "steer_1", "previous_response_id": event.get("previous_response_id")}
                    await send({"type": "response.steer.accepted", "sequence_number": 0, "steer": accepted})
        except Exception:  # the client or the proxy hung up: what was received stays recorded
            pass
        finally:
            for task in list(tasks):
                task.cancel()
            session.ended.set()
