"""A fake Gemini API (generativelanguage.googleapis.com) over HTTPS on 127.0.0.1, for end-to-end tests.

``generateContent`` answers one JSON body; ``streamGenerateContent`` streams three chunks, as
Server-Sent Events with ``?alt=sse`` and as one JSON array without it, each chunk carrying
``usageMetadata`` (the last one final), in the API's own shapes.

The Interactions API (``/v1beta/interactions``) answers an ``Interaction`` (``"stream": true``:
Server-Sent Events ``interaction.created``, ``step.start``, ``step.delta``..., ``step.stop``,
``interaction.completed`` with the usage, then ``[DONE]``); ``"background": true`` answers
``in_progress`` without usage, and ``GET /v1beta/interactions/{id}`` answers it in progress the
first time, finished from then on.
A model named ``*-missing`` gets a 404 in the API's error shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fakeprovider import RecordingHandler, TLSServer, make_cert

USAGE = {
    "promptTokenCount": 100,
    "candidatesTokenCount": 50,
    "thoughtsTokenCount": 10,
    "cachedContentTokenCount": 20,
    "totalTokenCount": 160,
}
# The Interactions API's usage for the same call: total_input_tokens includes the cached ones,
# total_output_tokens excludes the thoughts.
INTERACTION_USAGE = {
    "total_input_tokens": 100,
    "total_cached_tokens": 20,
    "total_output_tokens": 50,
    "total_thought_tokens": 10,
    "total_tool_use_tokens": 0,
    "total_tokens": 160,
    "input_tokens_by_modality": [{"modality": "text", "tokens": 100}],
    "cached_tokens_by_modality": [{"modality": "text", "tokens": 20}],
    "output_tokens_by_modality": [{"modality": "text", "tokens": 50}],
}
_INTERACTIONS = re.compile(r"^/(v1|v1beta)/interactions(?:/(?P<id>[^/?]+))?(?:\?.*)?$")
_PATH = re.compile(
    r"^/(v1|v1beta)/models/(?P<model>[^:/?]+):(?P<method>generateContent|streamGenerateContent)"
)


def _chunk(model: str, text: str, usage: dict[str, int], final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-1"}


def interaction(
    interaction_id: str, model: str, status: str = "completed", text: str = "Hello!"
) -> dict[str, Any]:
    """An ``Interaction`` as the API answers it (finished: with steps and usage)."""
    found: dict[str, Any] = {
        "id": interaction_id,
        "object": "interaction",
        "model": model,
        "status": status,
        "created": "2026-11-02T10:00:00Z",
        "updated": "2026-11-02T10:00:01Z",
    }
    if status == "completed":
        found["steps"] = [
            {"type": "thought", "signature": "c2lnbmF0dXJl"},
            {"type": "model_output", "content": [{"type": "text", "text": text}]},
        ]
        found["usage"] = INTERACTION_USAGE
    return found


def interaction_events(interaction_id: str, model: str) -> list[dict[str, Any]]:
    """The SSE events of a streamed interaction, in order (the last one carries the usage)."""
    running = {"id": interaction_id, "object": "interaction", "model": model, "status": "in_progress"}
    done = {**running, "status": "completed", "usage": INTERACTION_USAGE}
    events: list[dict[str, Any]] = [
        {"event_type": "interaction.created", "interaction": running},
        {
            "event_type": "interaction.status_update",
            "interaction_id": interaction_id,
            "status": "in_progress",
        },
        {"event_type": "step.start", "index": 0, "step": {"type": "thought"}},
        {"event_type": "step.delta", "index": 0, "delta": {"type": "thought_signature", "signature": "c2ln"}},
        {"event_type": "step.stop", "index": 0},
        {"event_type": "step.start", "index": 1, "step": {"type": "model_output"}},
        *(
            {"event_type": "step.delta", "index": 1, "delta": {"type": "text", "text": piece}}
            for piece in ("Hel", "lo", "!")
        ),
        {"event_type": "step.stop", "index": 1},
        {"event_type": "interaction.completed", "interaction": done},
    ]
    for n, event in enumerate(events):
        event["event_id"] = f"evt-{n}"
    return events


class FakeGemini:
    """The server; ``requests`` records (path, headers, body) of each call."""

    def __init__(self, directory: Path) -> None:
        self.cert_path, key_path = make_cert(directory, "gemini", ["generativelanguage.googleapis.com"])
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.background: dict[str, str] = {}  # interaction id -> model, of background interactions
        self.polled: set[str] = set()  # background interactions answered in progress once
        fake = self

        class Handler(RecordingHandler):
            def do_POST(self) -> None:
                body = self.read_json()
                if _INTERACTIONS.match(self.path):
                    self._create_interaction(body)
                    return
                m = _PATH.match(self.path)
                if m is None:
                    self.send_error(404)
                    return
                model = m["model"]
                if m["method"] == "generateContent":
                    self.send_whole(
                        200, "application/json", json.dumps(_chunk(model, "Hello!", USAGE, True)).encode()
                    )
                    return
                partial = {"promptTokenCount": 100, "cachedContentTokenCount": 20, "totalTokenCount": 100}
                chunks = [
                    _chunk(model, "Hel", partial, False),
                    _chunk(model, "lo", {**partial, "candidatesTokenCount": 20}, False),
                    _chunk(model, "!", USAGE, True),
                ]
                sse = "alt=sse" in self.path
                pieces = (
                    [f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks]
                    if sse
                    else [
                        b"[" + json.dumps(chunks[0]).encode(),
                        *(b",\r\n" + json.dumps(c).encode() for c in chunks[1:]),
                        b"]",
                    ]
                )
                self.send_chunked("text/event-stream" if sse else "application/json", pieces)

            def do_GET(self) -> None:
                self.fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, {}))
                m = _INTERACTIONS.match(self.path)
                model = fake.background.get(m["id"] or "") if m else None
                if m is None or model is None:
                    self.send_whole(404, "application/json", _not_found(f"interaction {self.path}"))
                    return
                if "stream=true" in self.path:
                    self._send_events(interaction_events(m["id"], model))
                    return
                status = "completed" if m["id"] in fake.polled else "in_progress"
                fake.polled.add(m["id"])
                answer = interaction(m["id"], model, status=status)
                self.send_whole(200, "application/json", json.dumps(answer).encode())

            def _create_interaction(self, body: dict[str, Any]) -> None:
                model = body.get("model") or body.get("agent")
                if not isinstance(model, str) or model.endswith("-missing"):
                    self.send_whole(404, "application/json", _not_found(f"model {model}"))
                    return
                interaction_id = f"v1_fake-{len(fake.requests)}"
                if body.get("background") is True:
                    fake.background[interaction_id] = model
                    running = interaction(interaction_id, model, status="in_progress")
                    self.send_whole(200, "application/json", json.dumps(running).encode())
                elif body.get("stream") is True:
                    self._send_events(interaction_events(interaction_id, model))
                else:
                    answer = interaction(interaction_id, model)
                    self.send_whole(200, "application/json", json.dumps(answer).encode())

            def _send_events(self, events: list[dict[str, Any]]) -> None:
                pieces = [f"event: {e['event_type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
                self.send_chunked("text/event-stream", [*pieces, b"data: [DONE]\n\n"])

        self._server = TLSServer(Handler, self, self.cert_path, key_path)
        self.port = self._server.port

    def close(self) -> None:
        self._server.close()


def _not_found(what: str) -> bytes:
    """A Google API error body (the shape every Gemini API endpoint answers errors in)."""
    error = {"code": 404, "message": f"{what} is not found.", "status": "NOT_FOUND"}
    return json.dumps({"error": error}).encode()
